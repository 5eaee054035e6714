"""nb2prod: turn a tagged Jupyter notebook into a production ML pipeline."""

__version__ = "0.1.0"


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where JupyterLab finds the prebuilt extension (`jupyter labextension develop`)."""
    return [{"src": "labextension", "dest": "nb2prod"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The REST handlers live in `nb2prod.jupyter`."""
    return [{"module": "nb2prod.jupyter"}]
