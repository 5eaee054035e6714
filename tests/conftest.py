"""Shared pytest set-up.

Fixtures that need servers (moto's S3, the Kubernetes stand-in) live in their
own modules and are imported by the tests that use them.  This file only
guards the suite itself: a run that collects nothing must fail, never pass
silently, so CI cannot go green on a broken import or a wrong path.
"""

from __future__ import annotations

import signal

import pytest

MINIMUM_TESTS = 50


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse a whole-suite run that collected suspiciously few tests."""
    args = session.config.args
    whole_suite = not session.config.option.keyword and all(
        a.rstrip("/") in ("tests", ".", "") or a.endswith("/tests") for a in args
    )
    if whole_suite and len(session.items) < MINIMUM_TESTS:
        raise pytest.UsageError(
            f"only {len(session.items)} tests collected for the whole suite "
            f"(expected at least {MINIMUM_TESTS}): a test module failed to import?")


def _sigterm_is_ctrl_c(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """CI runners and `timeout` stop a suite with SIGTERM, whose default kills pytest
    before any fixture tears down: the servers, stand-in pods and kernels tests started
    would be left running.  Taking the Ctrl-C path instead runs every teardown."""
    signal.signal(signal.SIGTERM, _sigterm_is_ctrl_c)
