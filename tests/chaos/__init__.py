"""Fault injection for redbatch: real processes, real signals, a real redis-server.

``python -m tests.chaos.harness --help`` runs the harness from the repository root;
``test_chaos.py`` runs short versions of it under pytest.
"""
