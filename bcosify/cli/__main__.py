"""``python -m bcosify.cli``: the ``bcosify`` command, as ``python -m bcosify``."""

import sys

from bcosify.cli import main

sys.exit(main())
