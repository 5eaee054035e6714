"""Where things are inside every nb2prod pod (the mounts `startup_script` copies from)."""

from __future__ import annotations

CODE_DIR = "/nb2prod/code"      # the ConfigMap, read-only
RUNTIME_MOUNT = "/nb2prod/runtime"  # the pipeline's runtime ConfigMap: nb2prod_runtime/
WORK_DIR = "/nb2prod/work"      # writable copy the stage runs in
DEPS_DIR = "/nb2prod/deps"      # pip --target, on PYTHONPATH
STORE_DIR = "/nb2prod/store"    # a pvc:// store's claim
TMP_DIR = "/tmp"
