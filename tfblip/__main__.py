"""`python -m tfblip`: the tfblip command."""

import sys

from tfblip.cli import main

sys.exit(main())
