"""``python -m AsymSegTrainer``: see :mod:`AsymSegTrainer.cli`."""

import sys

from .cli import main

sys.exit(main())
