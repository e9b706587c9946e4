"""A module for ``redbatch serve --worker examples/decision_service.py``: the decision
processes of ``examples/decisions.py`` on the store ``REDBATCH_URL`` names, served over HTTP
and run by the server's in-process worker.

``DECISION_STAGE_SECONDS`` (default 0.5) is how long each of a process's four stages takes,
``DECISION_LEASE`` (default 30) how soon a new server takes over the process of one that died.
"""

from __future__ import annotations

import os

import redbatch
from decisions import decisions  # redbatch serve puts this file's folder on sys.path

store = redbatch.connect()
jobs = decisions(
    store,
    stage_seconds=float(os.environ.get("DECISION_STAGE_SECONDS", "0.5")),
    lease=float(os.environ.get("DECISION_LEASE", "30")),
)
