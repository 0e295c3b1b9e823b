"""``python -m meshproxy`` = the ``meshproxy`` command."""

import sys

from .cli import main

sys.exit(main())
