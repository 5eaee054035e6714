"""jupyter_server extension: nb2prod's REST API for the JupyterLab frontend.

Enabled on install by ``jupyter-config/server-config/nb2prod.json`` (shipped
in the wheel as ``etc/jupyter/jupyter_server_config.d/nb2prod.json``), or by
hand with ``jupyter server extension enable nb2prod.jupyter``.  Importing this
package stays cheap: the splitter and the Kubernetes client are imported on
first request, not when the server starts.
"""

from __future__ import annotations

from typing import Any

from nb2prod.jupyter.handlers import setup_handlers


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Tell jupyter_server which module to load (this one)."""
    return [{"module": "nb2prod.jupyter"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the /nb2prod/* handlers on the server's web application."""
    setup_handlers(serverapp.web_app)
    serverapp.log.info("nb2prod: /nb2prod/* handlers registered (check, split, deploy, roles, "
                       "pipeline, run, runs, file)")


# jupyter_server < 2 / notebook-era name, harmless to keep for older launchers.
load_jupyter_server_extension = _load_jupyter_server_extension

__all__ = ["setup_handlers"]
