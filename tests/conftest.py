"""Shared pytest fixtures and hooks (each part lives in its own module, imported here)."""

from stack_fixture import *  # noqa: F403  (the `stack` fixture and its skip hook)

import reliability_log  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    """Keep what the reliability tests measured for docs/reliability.md."""
    reliability_log.write()
