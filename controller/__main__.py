# SPDX-License-Identifier: GPL-2.0-only
"""`python -m sluice`: the same command as the `sluice` script."""

import sys

from .cli import main

sys.exit(main())
