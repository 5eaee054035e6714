"""The Kubernetes stand-in: API server + controllers + process kubelet in one object.

Usage in tests goes through the ``kube_standin`` fixture
(:mod:`tests.kube.fixtures`); for manual use::

    python -m tests.kube.standin --port 0 --kubeconfig /tmp/standin.kubeconfig

prints the address and writes a kubeconfig that
``kubernetes.config.load_kube_config(config_file=...)`` and kubectl accept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, final

import yaml

from . import tls
from .api import Api
from .auth import Auth
from .controllers import ControllerManager
from .kubelet import Kubelet
from .node import NODE_NAME, NodeConfig, node_object
from .reaper import reaper
from .resources import BY_PLURAL
from .server import Faults, Injection, RequestRecord, StandInHTTPServer, StandInHTTPSServer
from .store import Store

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

BOOT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
ADMIN_TOKEN = "standin-token"  # the kubeconfig user's bearer token: cluster admin


@final
class KubeStandIn:
    """A running stand-in cluster; also the object the pytest fixture yields.

    Attributes for tests: ``url`` (plain HTTP, the kubeconfig's), ``tls_url``
    (HTTPS, what pods get), ``ca_pem`` / ``ca_file`` (the cluster CA),
    ``kubeconfig``, ``root``, ``unpullable_images`` (set of image refs that
    fail to pull), ``unschedulable`` (bool), ``node_capacity`` (dict of
    quantities), ``extra_env`` (env added to every container process),
    ``requests`` (log of API requests received).
    """

    def __init__(self, root: Path | None = None, host: str = "127.0.0.1", port: int = 0,
                 job_backoff_seconds: float = 0.2) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="kube-standin-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.pki = tls.generate(self.root / "pki")
        self.ca_pem = self.pki.ca_pem
        self.ca_file = self.pki.ca_file
        self.store = Store()
        self.api = Api(self.store, root_ca_pem=self.ca_pem)
        self.auth = Auth(self.store, ADMIN_TOKEN)
        self.node = NodeConfig()
        self.kubelet = Kubelet(self.api, self.node, self.root / "kubelet", token_for=self.auth.token_for)
        self.controllers = ControllerManager(self.api, job_backoff_seconds)
        self.faults = Faults()
        self._server = StandInHTTPServer((host, port), self.api, self.kubelet, self.faults, self.auth)
        self.port = int(self._server.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._tls_server = StandInHTTPSServer((host, 0), self.api, self.kubelet, self.faults, self.auth,
                                              self.pki.server_context())
        self.tls_port = int(self._tls_server.server_address[1])
        self.tls_url = f"https://{host}:{self.tls_port}"
        self.node.apiserver_port = self.tls_port  # KUBERNETES_SERVICE_PORT in pods: in-cluster clients use TLS
        self.kubeconfig = self.root / "kubeconfig"
        self._serve_threads = [
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name=name)
            for server, name in ((self._server, "standin-http"), (self._tls_server, "standin-https"))]
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> KubeStandIn:
        """Bootstrap system objects, write the kubeconfig and start serving."""
        for ns in BOOT_NAMESPACES:
            self.api.internal_create(BY_PLURAL["namespaces"], {"apiVersion": "v1", "kind": "Namespace",
                                                               "metadata": {"name": ns}})
        self.api.internal_create(BY_PLURAL["nodes"], node_object(self.node))
        self.api.internal_create(BY_PLURAL["services"], {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default",
                                                                "labels": {"component": "apiserver"}},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443,
                                                             "targetPort": self.tls_port}]}})
        self.write_kubeconfig(self.kubeconfig)
        reaper()  # started now, not while the first container already runs unregistered
        self.controllers.start()
        self.kubelet.start()
        for thread in self._serve_threads:
            thread.start()
        self._started = True
        return self

    def stop(self) -> None:
        """Stop serving, stop controllers, kill every pod process; remove a temporary root."""
        if not self._started:
            return
        self._started = False
        self._server.shutdown()
        self._tls_server.shutdown()
        self.store.close()
        self.controllers.stop()
        self.kubelet.stop()
        self._server.server_close()
        self._tls_server.server_close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> KubeStandIn:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ client access
    def kubeconfig_dict(self) -> dict[str, Any]:
        """The kubeconfig content (plain HTTP; the bearer token is the cluster admin's)."""
        return {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {"token": ADMIN_TOKEN}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin",
                                                         "namespace": "default"}}],
            "current-context": "standin",
        }

    def write_kubeconfig(self, path: Path | str) -> Path:
        """Write the kubeconfig to ``path`` and return it."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(self.kubeconfig_dict(), sort_keys=False))
        return target

    def api_client(self, token: str | None = None) -> ApiClient:
        """A new official-client ``ApiClient``: from :attr:`kubeconfig`, or, given a ``token``
        (e.g. :meth:`service_account_token`), over TLS to :attr:`tls_url` verified with the CA
        (as an in-cluster client would be)."""
        from kubernetes import client, config

        if token is None:
            return config.new_client_from_config(config_file=str(self.kubeconfig))
        configuration = client.Configuration(host=self.tls_url)
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(configuration)

    def service_account_token(self, namespace: str, name: str) -> str:
        """The bearer token a pod running as ServiceAccount ``namespace/name`` gets in its
        projected ``serviceAccountToken`` volume (valid while that ServiceAccount exists)."""
        return self.auth.token_for(namespace, name)

    # ------------------------------------------------------------------ node knobs
    @property
    def unpullable_images(self) -> set[str]:
        """Image refs whose pull fails (ErrImagePull / ImagePullBackOff until removed)."""
        return self.node.unpullable_images

    @property
    def unschedulable(self) -> bool:
        """When True, new pods stay Pending with PodScheduled=False reason Unschedulable."""
        return self.node.unschedulable

    @unschedulable.setter
    def unschedulable(self, value: bool) -> None:
        self.node.unschedulable = value
        self.kubelet.wake()

    @property
    def node_capacity(self) -> dict[str, str]:
        """Allocatable cpu / memory / pods of the node (requests above it are unschedulable)."""
        return self.node.capacity

    @node_capacity.setter
    def node_capacity(self, value: dict[str, str]) -> None:
        self.node.capacity = dict(value)

        def update(node: dict[str, Any]) -> None:
            node["status"]["capacity"] = dict(value)
            node["status"]["allocatable"] = dict(value)
        self.api.internal_status(BY_PLURAL["nodes"], "", NODE_NAME, update)

    @property
    def extra_env(self) -> dict[str, str]:
        """Environment added to every container process (e.g. PYTHONPATH for the code under test)."""
        return self.node.extra_env

    @property
    def requests(self) -> list[RequestRecord]:
        """Every API request received so far (method, verb, resource, namespace, name, code, dry_run, user)."""
        return self.faults.requests

    # ------------------------------------------------------------------ fault injection
    def inject_api_errors(self, verb: str | None = None, resource: str | None = None, status: int = 500,
                          count: int = 1, namespace: str | None = None, name: str | None = None,
                          message: str | None = None) -> Injection:
        """Make the next ``count`` requests matching (verb, resource[, namespace, name]) fail with ``status``.

        ``verb`` is a Kubernetes verb (get, list, watch, create, update, patch, delete,
        deletecollection; ``replace`` is accepted for update); ``resource`` a plural,
        optionally with a subresource (``deployments``, ``deployments/status``,
        ``pods/log``). None matches anything.
        """
        verb = {"replace": "update", "read": "get"}.get(verb or "", verb)
        injection = Injection(verb, resource, status, count, namespace, name, message)
        with self.faults.lock:
            self.faults.injections.append(injection)
        return injection

    def clear_api_errors(self) -> None:
        """Drop all pending injected errors."""
        with self.faults.lock:
            self.faults.injections.clear()

    def kill_pod(self, namespace: str, name: str, sig: int = signal.SIGKILL) -> bool:
        """Kill a pod's running containers mid-run (exit 137 for SIGKILL); False if none was running."""
        if self.store.peek("pods", namespace, name) is None:
            raise LookupError(f"pod {namespace}/{name} does not exist")
        return self.kubelet.kill_pod(namespace, name, sig)

    def trigger_cronjob(self, namespace: str, name: str,
                        scheduled_time: dt.datetime | None = None) -> dict[str, Any] | None:
        """Act as the CronJob controller at ``scheduled_time`` (default: latest schedule <= now).

        Returns the created Job, or None when a real controller would not create one.
        """
        return self.controllers.cronjobs.trigger(namespace, name, scheduled_time)

    def pod_root(self, namespace: str, name: str) -> Path | None:
        """Local directory a pod's volumes, logs and working dir live in (None if never started)."""
        pod = self.store.peek("pods", namespace, name)
        return self.kubelet.pod_root(pod) if pod is not None else None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tests.kube.standin``."""
    parser = argparse.ArgumentParser(description="Run the Kubernetes stand-in for manual use.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--kubeconfig", default="standin.kubeconfig", help="where to write the kubeconfig")
    parser.add_argument("--root", default=None, help="state directory (default: a temporary one)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    standin = KubeStandIn(Path(args.root) if args.root else None, args.host, args.port)
    with standin:
        path = standin.write_kubeconfig(args.kubeconfig)
        print(f"Kubernetes stand-in listening on {standin.url}", flush=True)
        print(f"kubeconfig written to {path.resolve()}", flush=True)
        print(f"TLS endpoint (in-pod clients) {standin.tls_url}, CA {standin.ca_file}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
