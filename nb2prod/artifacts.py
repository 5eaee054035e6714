"""The stage runtime as nb2prod's own code uses it (`from nb2prod import artifacts`).

The runtime lives in `nb2prod/runtime/`, one module per concern, and ships once per
pipeline as `nb2prod_runtime/`; this module only re-exports its public API.
"""

from nb2prod.runtime import *
from nb2prod.runtime import __all__  # noqa: F401
