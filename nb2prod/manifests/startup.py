"""The shell script every container runs: fresh work dir, code copied in, pip, exec."""

from __future__ import annotations

import shlex

from nb2prod.manifests.options import Options
from nb2prod.manifests.paths import CODE_DIR, DEPS_DIR, RUNTIME_MOUNT, TMP_DIR, WORK_DIR

#: Marker of a finished pip install in the deps emptyDir (a restarted container skips it).
INSTALLED_MARKER = f"{DEPS_DIR}/.nb2prod-installed"
#: Where the pip log goes; its first network error is what the container reports.
PIP_LOG = f"{TMP_DIR}/nb2prod-pip.log"
#: Causes worth naming when pip fails (what pip prints when the index is unreachable).
PIP_NETWORK_ERRORS = ("Failed to establish a new connection: [^')\"]*", "ProxyError\\([^)]*",
                      "Cannot connect to proxy", "Temporary failure in name resolution",
                      "Name or service not known", "Network is unreachable", "Read timed out",
                      "CERTIFICATE_VERIFY_FAILED", "Connection refused")

PIP_FAILED = ("nb2prod: pip could not install the requirements ($why): without --image the "
              "container pip-installs them from PyPI at start; where pods cannot reach PyPI, "
              "deploy with --image IMAGE that has them (README: building an image)")


def startup_script(final: str, opts: Options, *, install: list[str] | None = None,
                   requirements: bool = True) -> str:
    """What the container runs: copy the code to a writable dir, install, exec `final`.

    The ConfigMap mounts are read-only (and full of `..data` symlinks), so the stage
    runs from a copy of its code with the pipeline's `nb2prod_runtime/` beside it.
    A container restarted inside its pod (liveness kill, OOM, node
    reboot) finds the emptyDirs as its last run left them, copies included, which are
    read-only (0444, like their ConfigMap files): it empties the work dir first (its
    own files, in directories it may make writable), and a
    finished pip install is not repeated.  Without --image the base image has none of
    the stage's dependencies: pip installs requirements.txt into an emptyDir on
    PYTHONPATH (the root filesystem is read-only and the user is not root); when that
    fails, the last line names pip's first network error and the way out (--image).
    """
    lines = ["set -eu",
             # (not the mount point itself: root owns that, and uid 1000 may not chmod it)
             f"find {WORK_DIR} -mindepth 1 -type d -exec chmod u+w {{}} +",
             f"find {WORK_DIR} -mindepth 1 -delete",
             f"cp -rL {CODE_DIR}/* {RUNTIME_MOUNT}/* {WORK_DIR}/", f"cd {WORK_DIR}"]
    if not opts.prebuilt and (requirements or install):
        args = ["python", "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check",
                "--no-warn-script-location", "--quiet", "--target", DEPS_DIR]
        if requirements:
            args += ["-r", "requirements.txt"]
        args += install or []
        causes = shlex.quote("|".join(PIP_NETWORK_ERRORS))
        lines += [
            f"if [ ! -f {INSTALLED_MARKER} ]; then",
            f"  {' '.join(shlex.quote(a) for a in args)} >{PIP_LOG} 2>&1 || {{",
            f"    cat {PIP_LOG}",
            f"    why=$(grep -m1 -oE {causes} {PIP_LOG} || tail -n1 {PIP_LOG})",
            f'    echo "{PIP_FAILED}" >&2',
            "    exit 1",
            "  }",
            f"  touch {INSTALLED_MARKER}",
            "fi"]
    lines.append(f"exec {final}")
    return "\n".join(lines) + "\n"


def extra_installs(opts: Options) -> list[str]:
    return [opts.boto3_requirement] if opts.store.lower().startswith("s3://") else []
