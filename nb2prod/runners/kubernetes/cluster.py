"""Connecting to the cluster: API clients, the kubeconfig's contexts, API errors.

Every other module of this package talks to the API server through `Kube`
(raw JSON responses, retried by `nb2prod.k8s_retry`), so the typed client's
(de)serialisation quirks and the kubeconfig rules live in one place.  The
`kubernetes` package is imported inside the functions that need it: the CLI
imports this package only for cluster commands, and even then the client
loads on first use.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from nb2prod import k8s_retry
from nb2prod.errors import PipelineFailure, Problem, UserError
from nb2prod.manifests import Obj


@contextlib.contextmanager
def api_errors(what: str = "Kubernetes API") -> Iterator[None]:
    """Turn an API or connection error that survived the retries into one line (exit 1)."""
    try:
        yield
    except (UserError, PipelineFailure):
        raise
    except Exception as exc:
        from kubernetes.client.exceptions import ApiException

        if isinstance(exc, ApiException) or k8s_retry.is_transient(exc) or \
                isinstance(exc, OSError):
            raise PipelineFailure(f"{what}: {k8s_retry.message_of(exc)}") from None
        raise


class Kube:
    """API clients for one cluster: kubeconfig (with `context`) or the in-cluster account."""

    def __init__(self, context: str | None = None) -> None:
        from kubernetes import client, config

        # The client reads KUBECONFIG once, at import; read it now so a changed
        # environment (tests, a long-lived Jupyter server) is honoured.
        path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        try:
            api_client = config.new_client_from_config(config_file=path, context=context)
        except (config.ConfigException, FileNotFoundError, TypeError) as exc:
            if context:
                raise UserError(Problem(f"--context {context}: {str(exc).splitlines()[0]}")
                                ) from None
            try:
                cfg = client.Configuration()
                config.load_incluster_config(client_configuration=cfg)
                api_client = client.ApiClient(cfg)
            except config.ConfigException:
                raise UserError(Problem(
                    "no Kubernetes configuration found: set KUBECONFIG or create ~/.kube/config "
                    "(or run inside a cluster)")) from None
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.net = client.NetworkingV1Api(api_client)

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host).rstrip("/")

    # Kinds nb2prod creates: (api attribute, snake-case resource name in the client's methods)
    KINDS: ClassVar[dict[str, tuple[str, str]]] = {
        "ServiceAccount": ("core", "service_account"),
        "ConfigMap": ("core", "config_map"),
        "Service": ("core", "service"),
        "Pod": ("core", "pod"),
        "Role": ("rbac", "role"),
        "RoleBinding": ("rbac", "role_binding"),
        "Job": ("batch", "job"),
        "CronJob": ("batch", "cron_job"),
        "Deployment": ("apps", "deployment"),
        "ReplicaSet": ("apps", "replica_set"),
        "Ingress": ("net", "ingress"),
        "NetworkPolicy": ("net", "network_policy"),
        "PersistentVolumeClaim": ("core", "persistent_volume_claim"),
    }

    def method(self, verb: str, kind: str) -> Callable[..., Any]:
        api, snake = self.KINDS[kind]
        return getattr(getattr(self, api), f"{verb}_namespaced_{snake}")

    def json(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call an API method (with retries) and return the response body as plain JSON."""
        resp = k8s_retry.call(fn, *args, _preload_content=False, _request_timeout=(10, 60),
                              **kwargs)
        return json.loads(resp.data or b"null")

    def read(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.json(self.method("read", kind), name, namespace)
        except Exception as exc:
            if k8s_retry.status_of(exc) == 404:
                return None
            raise

    def create(self, obj: Obj) -> Obj | None:
        """Create; None if an object of that name exists already."""
        meta = obj["metadata"]
        resp = k8s_retry.create(self.method("create", obj["kind"]), meta["namespace"], obj,
                                _preload_content=False, _request_timeout=(10, 60))
        return None if resp is None else json.loads(resp.data)

    def replace(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        return self.json(self.method("replace", obj["kind"]), meta["name"], meta["namespace"],
                         obj)

    def delete(self, kind: str, namespace: str, name: str, propagation: str = "Background"
               ) -> None:
        # Raw response: depending on the kind and version the server answers with the
        # object or a Status, which the typed client would fail to deserialize.
        k8s_retry.delete(self.method("delete", kind), name, namespace,
                         propagation_policy=propagation, _preload_content=False,
                         _request_timeout=(10, 60))

    def list(self, kind: str, namespace: str, selector: str) -> list[Obj]:
        data = self.json(self.method("list", kind), namespace, label_selector=selector)
        return list(data.get("items") or [])


def kubeconfig_contexts() -> dict[str, Any]:
    """The contexts of the kubeconfig (KUBECONFIG or ~/.kube/config) and the current one.

    For the JupyterLab deploy form's context list; a missing or unreadable
    kubeconfig is an answer (`error`), not a failure.
    """
    from kubernetes import config

    path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        contexts, current = config.list_kube_config_contexts(config_file=path)
    except (config.ConfigException, OSError, TypeError, ValueError) as exc:
        return {"contexts": [], "current": None, "error": str(exc).splitlines()[0] if str(exc)
                else f"no kubeconfig at {path}"}
    return {"contexts": [str(c.get("name")) for c in contexts or []],
            "current": (current or {}).get("name"), "error": None}


def cluster_check(context: str | None = None) -> dict[str, str]:
    """One cheap call (GET /version) that says whether this machine reaches the cluster.

    Run before a deploy re-splits or creates anything, so "no cluster" is one
    early line: UserError without a usable kubeconfig, PipelineFailure naming
    the API server when it does not answer.
    """
    from kubernetes import client

    kube = Kube(context)
    with api_errors(f"cannot reach the Kubernetes API at {kube.host}"):
        info = client.VersionApi(kube.api_client).get_code(_request_timeout=(5, 15))
    return {"host": kube.host, "version": str(getattr(info, "git_version", "") or "")}
