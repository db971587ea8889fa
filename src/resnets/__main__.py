"""``python -m resnets``: the same command as ``resnets``."""

import sys

from .cli import main

sys.exit(main())
