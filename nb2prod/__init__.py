"""nb2prod: turn a tagged Jupyter notebook into a production ML pipeline."""

__version__ = "0.1.0"
