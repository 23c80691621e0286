"""``python -m bcosify``: the ``bcosify`` command (also under ``torchrun -m bcosify``)."""

import sys

from bcosify.cli import main

sys.exit(main())
