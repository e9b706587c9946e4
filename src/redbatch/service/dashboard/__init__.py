"""The dashboard, for people: ``redbatch serve`` answers ``/`` with a page that shows every
batcher the service knows (depths, oldest item age, in flight, retrying, dead, last flush),
the keys holding the oldest items, the dead letters (paged, each with a replay button) and
the job queues' jobs and groups with their progress, kept live by polling HTML fragments.

It is plain server-rendered HTML: Jinja2 templates with autoescaping on for every value
(keys and items are user data: a key ``<script>...`` is shown as text), one small script
of our own (``static/dashboard.js``: no CDN, no framework) and a stylesheet, served with a
Content-Security-Policy that allows no inline script. Every read is a page or an index
read of the store (``Batcher.stats``, ``Batcher.oldest_keys``, a page of
``Batcher.dead_letters``, ``Jobs.list``), never a full load, so the page stays fast with
100,000 open keys and 200,000 dead letters.

Reads are open, like the API's. The replay button calls the API's replay route, which
needs the bearer token when the service has one: the page asks for it once, on the first
401, and keeps it in the tab's ``sessionStorage`` (gone when the tab closes; never in a
cookie, so no other site's page can make the browser send it).
"""

from redbatch.service.dashboard.routes import router

__all__ = ["router"]
