"""`python -m nb2prod`."""

import sys

from nb2prod.cli import main

sys.exit(main())
