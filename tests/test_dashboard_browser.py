"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against a live service: items added through the API appear without a reload, a hostile key
is shown as text and runs nothing, a dead letter is replayed with its button (the page asks
for the API token on the 401), and a group's progress bar reaches 100%. It saves a
screenshot in its tmp_path; with ``REDBATCH_UPDATE_SCREENSHOT=1`` it replaces the one the
README shows, docs/img/dashboard.png (a test run leaves the checkout as it was).

``scripts/test.sh`` installs chromium when it is missing; where it cannot be, this skips.
Playwright's own browser download is never used: its host is not reachable here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import redbatch
from redbatch.service import create_app
from redbatch.worker import Worker
from tests.live_service import live_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "dashboard-test-token"
HOSTILE_KEY = "<script>window.__pwned = 1</script><img src=x onerror=window.__pwned=2>"
README_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "dashboard.png"
TIMEOUT_MS = 15_000

sync_api = pytest.importorskip("playwright.sync_api", reason="no playwright: pip install -e '.[test]'")
if not Path(CHROMIUM).exists():
    pytest.skip(
        f"{CHROMIUM} is missing: scripts/test.sh installs it (apt-get install chromium)",
        allow_module_level=True,
    )


class Service:
    """A live service over a memory store: batcher 'chat' (items with "poison" fail while
    ``poisoned`` is set, and go straight to dead letters) and job queue 'docs'."""

    def __init__(self) -> None:
        self.store = redbatch.connect("memory://")
        self.poisoned = threading.Event()
        self.poisoned.set()
        self.delivered: list[Any] = []
        self.chat = redbatch.Batcher(self.store, "chat", max_items=50, max_wait=300, max_attempts=1)
        self.jobs = redbatch.Jobs(self.store, "docs")
        self.chat.handler(self._answer)
        self.jobs.function(self.chunk)

    def _answer(self, batch: redbatch.Batch) -> None:
        if self.poisoned.is_set() and any(isinstance(i, dict) and i.get("poison") for i in batch.items):
            raise ValueError(f"cannot answer {batch.key!r}: <b>poisoned</b> item")
        self.delivered.extend(batch.items)

    @staticmethod
    def chunk(params: Any, ctx: Any) -> int:
        ctx.progress(1.0, "done")
        return int(params["n"]) * 2


@pytest.fixture
def service() -> Iterator[tuple[Service, str]]:
    svc = Service()
    worker = Worker(svc.store, [svc.chat, svc.jobs], concurrency=4, handle_signals=False)
    with live_server(create_app(svc.store, worker=worker, token=TOKEN)) as base:
        yield svc, base
    svc.store.close()


@pytest.fixture
def page() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            tab = context.new_page()
            tab.set_default_timeout(TIMEOUT_MS)
            yield tab
        finally:
            browser.close()


def api(base: str, path: str, body: Any) -> httpx.Response:
    reply = httpx.post(f"{base}{path}", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert reply.status_code < 300, reply.text
    return reply


def test_the_dashboard_in_a_real_browser(service: tuple[Service, str], page: Any, tmp_path: Path) -> None:
    svc, base = service
    expect = sync_api.expect
    page.goto(f"{base}/?batcher=chat")
    row = page.locator('tr[data-batcher="chat"]')
    expect(row.locator('[data-stat="buffered_items"]')).to_have_text("0")

    # Items added through the API appear without a reload; the hostile key is only text.
    items = [{"key": f"conversation-{n}", "item": {"text": f"hello {n}"}} for n in range(6)]
    items.append({"key": HOSTILE_KEY, "item": {"text": "</td><script>window.__pwned = 3</script>"}})
    api(base, "/batchers/chat/items/many", {"items": items})
    expect(row.locator('[data-stat="buffered_items"]')).to_have_text("7")
    expect(row.locator('[data-stat="open_keys"]')).to_have_text("7")
    expect(page.locator("td.key", has_text=HOSTILE_KEY)).to_have_count(1)
    assert page.evaluate("window.__pwned") is None

    # A poisoned batch dies (one attempt); its dead letter shows its error, escaped.
    api(base, "/batchers/chat/items", {"key": "poison-key", "item": {"poison": True, "html": "<i>x</i>"}})
    api(base, "/batchers/chat/flush", {"key": "poison-key"})
    letter = page.locator("tr[data-letter]")
    expect(letter).to_have_count(1)
    expect(letter.locator("td.error-text")).to_contain_text("<b>poisoned</b> item")
    expect(letter.locator("td.items")).to_contain_text('{"poison":true,"html":"<i>x</i>"}')

    # Replay with its button: the first try is refused (no token yet), the page asks for it.
    svc.poisoned.clear()
    letter.locator("button.replay").click()
    expect(page.locator("#token-form")).to_be_visible()
    page.fill("#token-input", TOKEN)
    page.click('#token-form button[type="submit"]')
    expect(page.locator("#message")).to_have_text("replayed 1 items of chat")
    expect(page.locator("tr[data-letter]")).to_have_count(0)
    assert {"poison": True, "html": "<i>x</i>"} in svc.delivered
    assert page.evaluate("sessionStorage.getItem('redbatch-token')") == TOKEN

    # A group's progress bar reaches 100%.
    group = svc.jobs.group([("chunk", {"n": n}) for n in range(8)], id="reports")
    bar = page.locator(f'[data-group="{group}"] progress')
    expect(bar).to_have_attribute("value", "100.0")
    expect(page.locator(f'[data-group="{group}"] .percent')).to_have_text("100%")
    assert page.evaluate("window.__pwned") is None

    # One more dead letter, so the screenshot shows one.
    svc.poisoned.set()
    api(base, "/batchers/chat/items", {"key": "order-1234", "item": {"poison": True, "text": "refund?"}})
    api(base, "/batchers/chat/flush", {"key": "order-1234"})
    expect(page.locator("tr[data-letter]")).to_have_count(1)
    update = os.environ.get("REDBATCH_UPDATE_SCREENSHOT") == "1"
    screenshot = README_SCREENSHOT if update else tmp_path / "dashboard.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
