"""The floor of a gpuale process on the CPU: what numpy, scipy and numba cost before any
gpuale code runs (issue 29's ``--iters 0`` goal is measured against it).

``/usr/bin/time python bench/import_floor.py`` imports numpy, scipy.special and numba and
calls one cached one-line function: numba's first call loads its registries (~60 modules,
``scipy.linalg`` among them), as gpuale's first compiled call does. Run it once first so
the function's cache exists.
"""

import numba
import numpy as np
import scipy.special  # noqa: F401  (gpuale's p to z)


@numba.njit(cache=True)
def _total(values):
    return values.sum()


_total(np.ones(3))
