"""Turning a pod spec into local processes: volumes, environment, path and port remapping.

There is no container runtime, so a container's filesystem view is emulated:

* Each pod gets a root directory; every volume is materialised under
  ``<pod root>/volumes/<volume>`` (ConfigMap/Secret files, emptyDir,
  downwardAPI, projected service-account token), a PVC maps to the persistent
  ``<kubelet root>/pvc/<namespace>/<claim>`` so data survives across pods, and
  hostPath volumes are the host path itself.
* Mount paths are *remapped*: every occurrence of a container's ``mountPath``
  (as a whole path prefix) in command, args, env values and workingDir is
  replaced by the local directory.
* Container ports are *remapped*: every pod-wide ``containerPort`` gets a free
  local port, and the port number (as a whole number) is replaced in command,
  args and env values. Probes and the API server proxy use the local port.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .store import Obj, Store

PYTHON_NAMES = re.compile(r"^python(3(\.\d+)?)?$")


#: Owner of the directories the kubelet makes (emptyDirs, subPaths) when the stand-in runs
#: as root: not the container's user, as on a node, where root owns them.
KUBELET_UID = 65534


def foreign(path: Path) -> None:
    """Make `path` what a node's kubelet makes: mode 0777, owned by another user than the
    container's, so a container (capabilities dropped, see podrunner) may write in it but
    not chmod it."""
    path.chmod(0o777)
    if os.geteuid() == 0:
        os.chown(path, KUBELET_UID, KUBELET_UID)


class NotReadyError(Exception):
    """A referenced object is missing; the kubelet retries (reason is the waiting reason)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _field_value(pod: Obj, path: str) -> str:
    meta, status, spec = pod["metadata"], pod.get("status") or {}, pod.get("spec") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"), "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"), "status.podIPs": status.get("podIP"),
        "status.hostIPs": status.get("hostIP"),
    }
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    return str(simple.get(path) or "")


class PodEnv:
    """Materialised filesystem and port view of one pod."""

    def __init__(self, store: Store, pod: Obj, root: Path, pvc_root: Path,
                 token_for: Callable[[str, str], str] | None = None) -> None:
        self.store = store
        self.token_for = token_for
        self.pod = pod
        self.root = root
        self.pvc_root = pvc_root
        self.volumes: dict[str, Path] = {}
        self.ports: dict[int, int] = {}
        self.ns = pod["metadata"]["namespace"]

    # ------------------------------------------------------------------ objects
    def _config(self, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        plural = "configmaps" if kind == "configmap" else "secrets"
        obj = self.store.peek(plural, self.ns, name)
        if obj is None:
            if optional:
                return None
            raise NotReadyError("CreateContainerConfigError", f'{kind} "{name}" not found')
        data: dict[str, bytes] = {}
        for key, value in (obj.get("data") or {}).items():
            data[key] = base64.b64decode(value) if plural == "secrets" else str(value).encode()
        for key, value in (obj.get("binaryData") or {}).items():
            data[key] = base64.b64decode(value)
        return data

    # ------------------------------------------------------------------ volumes
    def materialise(self) -> None:
        """Create every volume of the pod; raise NotReadyError if a source is missing."""
        for vol in self.pod["spec"].get("volumes") or []:
            name = vol["name"]
            target = self.root / "volumes" / name
            try:
                self.volumes[name] = self._volume(vol, target)
            except NotReadyError as exc:
                raise NotReadyError("ContainerCreating", f'MountVolume.SetUp failed for volume "{name}" : '
                                    f"{exc.message}") from exc

    def _write_files(self, target: Path, data: dict[str, bytes], items: list[Obj] | None, mode: int) -> None:
        target.mkdir(parents=True, exist_ok=True)
        wanted = [(i["key"], i["path"], i.get("mode", mode)) for i in items] if items else \
            [(k, k, mode) for k in data]
        for key, rel, file_mode in wanted:
            if key not in data:
                raise NotReadyError("CreateContainerConfigError", f"configmap references non-existent key {key}")
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[key])
            path.chmod(file_mode)

    def _volume(self, vol: Obj, target: Path) -> Path:
        if vol.get("persistentVolumeClaim") is not None:
            claim = vol["persistentVolumeClaim"]["claimName"]
            if self.store.peek("persistentvolumeclaims", self.ns, claim) is None:
                raise NotReadyError("ContainerCreating", f'persistentvolumeclaim "{claim}" not found')
            path = self.pvc_root / self.ns / claim
            path.mkdir(parents=True, exist_ok=True)
            return path
        if vol.get("hostPath") is not None:
            path = Path(vol["hostPath"]["path"])
            if vol["hostPath"].get("type") in ("DirectoryOrCreate", None, ""):
                path.mkdir(parents=True, exist_ok=True)
            return path
        for kind, key_name in (("configMap", "name"), ("secret", "secretName")):
            source = vol.get(kind)
            if source is not None:
                data = self._config(kind.lower(), source.get(key_name, ""), bool(source.get("optional")))
                self._write_files(target, data or {}, source.get("items"), source.get("defaultMode", 420))
                return target
        if vol.get("downwardAPI") is not None:
            self._downward(target, vol["downwardAPI"].get("items") or [], vol["downwardAPI"].get("defaultMode", 420))
            return target
        if vol.get("projected") is not None:
            mode = vol["projected"].get("defaultMode", 420)
            target.mkdir(parents=True, exist_ok=True)
            for source in vol["projected"].get("sources") or []:
                if source.get("serviceAccountToken") is not None:
                    path = target / source["serviceAccountToken"].get("path", "token")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.unlink(missing_ok=True)  # a retried mount may find a read-only one
                    path.write_text(self._token())
                    path.chmod(mode)
                elif source.get("downwardAPI") is not None:
                    self._downward(target, source["downwardAPI"].get("items") or [], mode)
                else:
                    for kind in ("configMap", "secret"):
                        if source.get(kind) is not None:
                            ref = source[kind]
                            data = self._config(kind.lower(), ref.get("name", ""), bool(ref.get("optional")))
                            self._write_files(target, data or {}, ref.get("items"), mode)
            return target
        target.mkdir(parents=True, exist_ok=True)  # emptyDir and anything exotic
        if vol.get("emptyDir") is not None:
            foreign(target)
        return target

    def _token(self) -> str:
        """The pod's service-account token (identifies ``system:serviceaccount:<ns>:<name>``)."""
        account = self.pod["spec"].get("serviceAccountName") or "default"
        return self.token_for(self.ns, account) if self.token_for else "standin-service-account-token"

    def _downward(self, target: Path, items: list[Obj], mode: int) -> None:
        data = {i["path"]: _field_value(self.pod, i["fieldRef"]["fieldPath"]).encode()
                for i in items if i.get("fieldRef")}
        self._write_files(target, data, None, mode)

    def termination_file(self, container: Obj, instance: int) -> Path:
        """A new, empty local file standing in for the container instance's terminationMessagePath."""
        path = self.root / "termination" / container["name"] / str(instance)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return path

    def mounts(self, container: Obj, termination_file: Path | None = None) -> list[tuple[str, str]]:
        """(mountPath, local path) pairs of a container, longest mount path first; the
        terminationMessagePath is mounted from ``termination_file`` like a volume."""
        out = []
        if termination_file is not None:
            out.append((container.get("terminationMessagePath") or "/dev/termination-log", str(termination_file)))
        for mount in container.get("volumeMounts") or []:
            local = self.volumes.get(mount["name"])
            if local is None:
                continue
            if mount.get("subPath"):
                local = local / mount["subPath"]
                if not local.exists():
                    local.mkdir(parents=True)
                    foreign(local)
            out.append((mount["mountPath"].rstrip("/") or "/", str(local)))
        return sorted(out, key=lambda m: -len(m[0]))

    # ------------------------------------------------------------------ ports
    def allocate_ports(self) -> None:
        """Give every declared containerPort of the pod a free local port."""
        for c in self.pod["spec"].get("containers") or []:
            for port in c.get("ports") or []:
                self.ports.setdefault(int(port["containerPort"]), free_port())

    # ------------------------------------------------------------------ remapping
    def remap(self, text: str, mounts: list[tuple[str, str]]) -> str:
        """Substitute container ports by local ports, then mount paths by local directories."""
        for container_port, local_port in self.ports.items():
            text = re.sub(rf"(?<!\d){container_port}(?!\d)", str(local_port), text)
        # one pass, longest mount first: a local dir must never be remapped again
        # (an emptyDir at /tmp would otherwise rewrite paths under the pod root)
        table = {m: d for m, d in mounts if m != "/"}
        if table:
            alternatives = "|".join(re.escape(m) for m in sorted(table, key=len, reverse=True))
            pattern = rf"(?:^|(?<=[^\w./-])|(?<=//))({alternatives})(?=/|$|[^\w.-])"
            text = re.sub(pattern, lambda match: table[match.group(1)], text)
        return text

    # ------------------------------------------------------------------ environment
    def environment(self, container: Obj, base: dict[str, str]) -> dict[str, str]:
        """Resolve env/envFrom (configMap/secret/field refs, ``$(VAR)`` expansion) for a container."""
        env = dict(base)
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
                ref = source.get(key)
                if ref is not None:
                    data = self._config(kind, ref.get("name", ""), bool(ref.get("optional"))) or {}
                    for k, v in data.items():
                        if re.fullmatch(r"[-._a-zA-Z][-._a-zA-Z0-9]*", prefix + k):
                            env[prefix + k] = v.decode(errors="replace")
        for item in container.get("env") or []:
            name = item["name"]
            source = item.get("valueFrom")
            if source is None:
                env[name] = expand(item.get("value", ""), env)
            elif source.get("fieldRef"):
                env[name] = _field_value(self.pod, source["fieldRef"]["fieldPath"])
            elif source.get("resourceFieldRef"):
                env[name] = self._resource_field(container, source["resourceFieldRef"])
            else:
                kind, key = ("configmap", "configMapKeyRef") if source.get("configMapKeyRef") else \
                    ("secret", "secretKeyRef")
                ref = source[key]
                values = self._config(kind, ref.get("name", ""), bool(ref.get("optional")))
                if values is None or ref["key"] not in values:
                    if ref.get("optional"):
                        continue
                    label = "ConfigMap" if kind == "configmap" else "Secret"
                    raise NotReadyError("CreateContainerConfigError",
                                        f"couldn't find key {ref['key']} in {label} {self.ns}/{ref.get('name')}")
                env[name] = values[ref["key"]].decode(errors="replace")
        return env

    def _resource_field(self, container: Obj, ref: Obj) -> str:
        from .validation import parse_quantity

        section, _, resource = ref["resource"].partition(".")
        value = ((container.get("resources") or {}).get(section) or {}).get(resource)
        if value is None:
            value = {"cpu": "8", "memory": "16Gi"}.get(resource, "0")
        divisor = parse_quantity(ref.get("divisor", "1") or "1")
        amount = parse_quantity(value) / divisor
        return str(int(-(-amount // 1)))

    def argv(self, container: Obj, env: dict[str, str], mounts: list[tuple[str, str]]) -> list[str]:
        """command + args with ``$(VAR)`` expanded, remapped, and ``python`` mapped to the host Python."""
        argv = [self.remap(expand(a, env), mounts) for a in
                (container.get("command") or []) + (container.get("args") or [])]
        if argv and PYTHON_NAMES.match(os.path.basename(argv[0])):
            argv[0] = sys.executable
        return argv


@dataclass
class _Var:
    env: dict[str, str]

    def __call__(self, m: re.Match[str]) -> str:
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        return self.env.get(m.group(1), m.group(0))


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion; ``$$(VAR)`` escapes; unknown refs stay literal."""
    return re.sub(r"\$?\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", _Var(env), text)

