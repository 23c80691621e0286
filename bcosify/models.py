"""Deprecated name of :mod:`bcosify.support` (the verified architectures and the support matrix).

``import bcosify.models`` keeps working with a ``FutureWarning``; import ``bcosify.support``.
"""

import warnings

from bcosify.support import *  # noqa: F403
from bcosify.support import __all__  # noqa: F401

warnings.warn(
    "bcosify.models is now bcosify.support (it holds the verified architectures and the support "
    "matrix); import bcosify.support instead",
    FutureWarning,
    stacklevel=2,
)
