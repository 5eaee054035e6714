"""pytest fixture for the Kubernetes stand-in.

Import it into ``tests/conftest.py``::

    from tests.kube.fixtures import kube_standin  # noqa: F401

Each test gets a fresh cluster (start-up takes milliseconds once the schemas
are loaded), so tests cannot leak objects or processes into each other.

PYTEST_DONT_REWRITE: this module has no asserts, and it may be imported by a
conftest before a test module lists it in ``pytest_plugins``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .standin import KubeStandIn


@pytest.fixture
def kube_standin(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeStandIn]:
    """A running stand-in cluster; ``KUBECONFIG`` points at it for the test's duration.

    Yields a :class:`~tests.kube.standin.KubeStandIn` (``.kubeconfig``, ``.url``,
    ``.api_client()``, fault-injection methods). All pod processes are killed
    when the test ends.
    """
    standin = KubeStandIn(root=tmp_path_factory.mktemp("kube-standin"))
    with standin:
        monkeypatch.setenv("KUBECONFIG", str(standin.kubeconfig))
        yield standin
