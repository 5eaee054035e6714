""""Run and serve" from the Pipeline panel, in a real browser.

The iris notebook is run locally by a detached `nb2prod run` (papermill, real
kernel) that keeps its service stage up (a real gunicorn on a real port); the
panel shows the service's URL and the sample curl `nb2prod run` prints (on the
port typed in the panel's Port field, after an invalid and a taken one were
refused in one line each); a
prediction through that URL answers right, so does the sample request; "Stop"
ends the run and its server.  Screenshots: `<tmp>/shots`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_browser import (  # noqa: F401 - `lab` is a fixture, used by name
    Lab,
    _free_port,
    browser_session,
    lab,
)
from tests.test_browser_panel import IRIS, _open, _show_panel
from tests.test_deploy import IRIS_ANSWER, IRIS_REQUEST, OPENER
from tests.test_manifests import set_ini


@pytest.fixture
def stop_runs(tmp_path: Path) -> Iterator[None]:
    """The serving run is stopped by the test; if the test fails first, here."""
    yield
    from nb2prod.jupyter import launches

    for pipeline in (tmp_path / "root").glob("*-pipeline"):
        for _, record in launches.records(pipeline, "run"):
            if launches.is_running(record):
                os.killpg(record["runner"]["pid"], signal.SIGTERM)


def _post(url: str, body: str) -> tuple[int, object]:
    request = urllib.request.Request(url, data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with OPENER.open(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def test_run_and_serve_from_the_panel(lab: Lab, tmp_path: Path,  # noqa: F811
                                      stop_runs: None) -> None:
    from playwright.sync_api import expect

    from nb2prod.split import split_notebook

    shots = tmp_path / "shots"
    shots.mkdir()
    notebook = lab.root / "iris.ipynb"
    shutil.copy(IRIS, notebook)
    split_notebook(notebook, lab.root / "iris-pipeline")
    port = _free_port()  # config.ini edits survive the panel's split
    set_ini(lab.root / "iris-pipeline" / "stage-2-serve" / "config.ini", "service", "PORT",
            str(port))
    with browser_session(shots, lab.log) as session, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        page = session.new_page()
        _open(page, lab, "iris.ipynb")
        panel = _show_panel(page)
        # the Port field: a value that is no port, then a taken port: one line each, no run
        field = panel.locator("input.nb2prod-RunPort")
        expect(field).to_have_value("")  # empty: config.ini's PORT, as `nb2prod run`
        expect(field).to_have_attribute("placeholder", str(port))  # which it shows
        field.fill("70000")
        panel.locator(".nb2prod-RunServe").click()
        error = panel.locator(".nb2prod-RunError")
        expect(error).to_have_text("'port' must be a TCP port, an integer from 1 to 65535 "
                                   '(got "70000")')
        page.screenshot(path=str(shots / "port-invalid.png"))
        field.fill(str(busy))
        panel.locator(".nb2prod-RunServe").click()
        expect(error).to_have_text(
            f"port {busy} on 127.0.0.1 is already in use (service stage 'serve', from the "
            "Port field); stop what uses it or choose another with the Port field")
        assert "Traceback" not in error.inner_text()
        page.screenshot(path=str(shots / "port-taken.png"))
        assert not (lab.root / "iris-pipeline" / ".nb2prod" / "panel").exists()  # no run
        # the field's port, over config.ini's
        port = _free_port()
        field.fill(str(port))
        panel.locator(".nb2prod-RunServe").click()
        expect(error).to_have_count(0)
        serving = panel.locator('.nb2prod-Serving[data-service="serve"]')
        url = f"http://127.0.0.1:{port}/predict"
        expect(serving.locator(".nb2prod-Serving-url")).to_have_text(url)
        curl = serving.locator(".nb2prod-Serving-curl")
        expect(curl).to_contain_text(f"curl -s -X POST {url} ")
        expect(panel.locator(".nb2prod-RunSection")).to_have_attribute(
            "data-status", "succeeded")
        expect(panel.locator(".nb2prod-RunLocally")).to_have_text("Serving…")
        serving.scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "serving.png"))

        # a prediction through the URL shown, and the sample request shown
        assert _post(url, json.dumps(IRIS_REQUEST)) == (200, IRIS_ANSWER)
        args = shlex.split(curl.inner_text())
        code, answer = _post(args[args.index("-X") + 2], args[args.index("-d") + 1])
        assert code == 200 and "predictions" in answer, answer  # type: ignore[operator]

        # Stop: the run ends, its server with it
        panel.locator(".nb2prod-RunStop").click()
        expect(panel.locator(".nb2prod-RunLocally")).to_have_text("Run locally")
        expect(panel.locator(".nb2prod-Serving")).to_have_count(0)
        expect(panel.locator(".nb2prod-RunServingStopped")).to_contain_text(
            "Services stopped by ")  # the batch run stays succeeded
        expect(panel.locator(".nb2prod-RunSection")).to_have_attribute(
            "data-status", "succeeded")
        with pytest.raises(urllib.error.URLError):
            _post(url, json.dumps(IRIS_REQUEST))
        page.screenshot(path=str(shots / "stopped.png"))
    print(f"screenshots: {shots}")
