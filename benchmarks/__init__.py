"""redbatch's benchmark suite: ``python -m benchmarks`` (``--quick``, ``--only NAME``).

Every figure is measured for redbatch on Redis and on SQLite and for the hand-written
baselines it replaces, in the same run, against a private ``redis-server`` bound to
127.0.0.1 that is killed when the run ends. See ``benchmarks/README.md``.
"""
