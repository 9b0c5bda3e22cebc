"""`python -m fastsr ...` (and `accelerate launch -m fastsr eval ...`): the `fastsr` command."""

import sys

from fastsr.cli import main

sys.exit(main())
