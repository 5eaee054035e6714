"""`python -m nb2prod_runtime run-stage | promote | record` (in-cluster; see `stage.main`)."""

import sys

from .stage import main

sys.exit(main())
