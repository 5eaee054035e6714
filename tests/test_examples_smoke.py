"""Every bundled example passes `nb2prod run NOTEBOOK --smoke`: what a newcomer tries first.

Each notebook is copied to a temp dir and run through the real CLI: split on the fly,
batch stages with papermill, gunicorn on a free port, one POST of the sample request, stop.
The sample is the notebook's literal `predict({...})` call where it has one (iris), else the
first rows the model was fitted on, recorded by the fitting stage (wine, diabetes).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.test_run_e2e import EXAMPLES, free_port, nb2prod, port_open

NOTEBOOKS = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".ipynb", ".py"))
#: "POST /predict {...} -> 200 {...}"
SMOKE_LINE = re.compile(r"^POST (?P<route>\S+) (?P<body>.+) -> (?P<status>\d{3}) (?P<answer>.*)$",
                        re.MULTILINE)


def test_the_examples_are_all_covered() -> None:
    assert {"iris.ipynb", "wine_parallel.ipynb", "diabetes.py"} <= set(NOTEBOOKS)


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_example_passes_smoke(notebook: str, tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / notebook, tmp_path)
    port = free_port()
    done = nb2prod("run", notebook, "--smoke", "--port", str(port), cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    smoke = SMOKE_LINE.search(done.stdout)
    assert smoke and smoke["status"] == "200", output
    body = json.loads(smoke["body"])
    rows = body["instances"]  # every example's predict reads payload["instances"]
    assert len(rows) == 2 and all(isinstance(v, float) for row in rows for v in row), body
    answer = json.loads(smoke["answer"])
    assert len(answer["predictions"]) == 2, answer
    # The curl hint carries the same body, quoted for the shell.
    assert f"-d '{smoke['body']}'" in done.stdout, done.stdout
    assert not port_open(port), "the smoke run left its server listening"
