"""`python -m sockherd` is the `sockherd` command."""

import sys

from .cli import main

sys.exit(main())
