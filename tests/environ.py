"""The environment of the test process without the variables that steer nb2prod.

Tests that run nb2prod "as a user would" drop every `NB2PROD_*` variable; the
digest memo's location is kept, so no subprocess of the suite writes the user's
~/.cache (tests/conftest.py points it at a session temp dir).
"""

from __future__ import annotations

import os

#: Set by tests/conftest.py for the whole session; kept by `without_nb2prod_settings`.
KEPT = ("NB2PROD_DIGEST_MEMO",)


def without_nb2prod_settings() -> dict[str, str]:
    """os.environ minus `NB2PROD_*` (but `KEPT`)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NB2PROD_") or k in KEPT}
