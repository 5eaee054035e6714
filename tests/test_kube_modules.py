"""The Kubernetes runner as modules (nb2prod/runners/kubernetes/): small, and light to import.

Behaviour is tested against the stand-in in test_deploy.py, test_schedule.py and
test_files_deploy.py; this checks the shape the split promised (issue 18).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nb2prod.runners import kubernetes

PACKAGE = Path(kubernetes.__file__).parent


def test_no_kubernetes_runner_module_is_over_600_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert len(sizes) > 5 and max(sizes.values()) <= 600, sizes


def test_every_module_has_a_docstring_that_says_why() -> None:
    import ast

    missing = [p.name for p in PACKAGE.glob("*.py")
               if len(ast.get_docstring(ast.parse(p.read_text())) or "") < 80]
    assert missing == []


def test_importing_the_runners_does_not_import_the_kubernetes_client() -> None:
    modules = ["nb2prod.runners.kubernetes", "nb2prod.runners.schedule",
               "nb2prod.runners.claim"] + [f"nb2prod.runners.kubernetes.{p.stem}"
                                           for p in sorted(PACKAGE.glob("*.py"))
                                           if p.stem != "__init__"]
    code = (f"import importlib, sys\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
            "print('kubernetes' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
