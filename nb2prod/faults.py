"""Named pause points for fault tests: kill a real process at an exact moment.

Crash safety is only believable when a test kills a real `nb2prod` process at
the dangerous moment, and that moment must be reached deterministically, not
by sleeping.  Code marks its critical moments with `point("name")`; a test
sets `NB2PROD_TEST_PAUSE_AT=name` and `NB2PROD_TEST_PAUSE_FILE=PATH`, waits
for PATH to appear (it holds the pid) and then kills the process, or creates
`PATH.go` to let it continue.  Unset (always, outside tests) a point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_AT = "NB2PROD_TEST_PAUSE_AT"
PAUSE_FILE = "NB2PROD_TEST_PAUSE_FILE"


def point(name: str) -> None:
    """Pause here if a test asked for this point; otherwise return at once."""
    wanted = os.environ.get(PAUSE_AT)
    if not wanted or name not in wanted.split(","):
        return
    marker = Path(os.environ[PAUSE_FILE])
    go = marker.with_name(marker.name + ".go")
    partial = marker.with_name(marker.name + ".part")
    partial.write_text(f"{os.getpid()} {name}\n")
    partial.rename(marker)  # appears complete, never half-written
    while not go.exists():
        time.sleep(0.01)
