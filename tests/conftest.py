"""Shared pytest set-up.

Fixtures that need servers (moto's S3, the Kubernetes stand-in) live in their
own modules and are imported by the tests that use them.  This file only
guards the suite itself: a run that collects nothing must fail, never pass
silently, so CI cannot go green on a broken import or a wrong path.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

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


@pytest.fixture(scope="session", autouse=True)
def stage_worker_of_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The stage worker `nb2prod run` starts lives in a runtime dir of this session and
    is stopped at its end, with every process it started, also after a failure or
    SIGTERM (see `pytest_configure`).  The digest memo lives in the session too.  XDG_RUNTIME_DIR points there too, for tests that
    run nb2prod with every NB2PROD_* variable removed."""
    from nb2prod import worker

    base = tmp_path_factory.mktemp("rt")
    saved = {k: os.environ.get(k)
             for k in ("NB2PROD_RUNTIME_DIR", "XDG_RUNTIME_DIR", "NB2PROD_DIGEST_MEMO")}
    os.environ["XDG_RUNTIME_DIR"] = str(base)
    os.environ["NB2PROD_RUNTIME_DIR"] = str(base / "nb2prod")
    # The stage cache's digest memo, of this process and every one it starts (see
    # tests/environ.py): never the user's ~/.cache; XDG_CACHE_HOME stays (matplotlib).
    os.environ["NB2PROD_DIGEST_MEMO"] = str(tmp_path_factory.mktemp("memo") / "file-digests.json")
    try:
        yield
    finally:
        worker.stop_all()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
