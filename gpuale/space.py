"""Stereotactic spaces: names, and the Talairach → MNI coordinate transforms.

ALE runs on an MNI152 grid, so foci reported in Talairach space are moved to MNI first.
The transforms are the affine "icbm2tal" fits of Lancaster et al. (2007), Human Brain
Mapping 28:1194-1205, doi:10.1002/hbm.20345, as distributed by BrainMap
(https://brainmap.org/icbm2tal/, the MATLAB scripts ``icbm_other2tal.m``,
``icbm_spm2tal.m`` and ``icbm_fsl2tal.m``, ric.uthscsa.edu 3/14/07). Each published
matrix maps MNI → Talairach; Talairach → MNI applies its inverse, as BrainMap's
``tal2icbm_*.m`` scripts and NiMARE's :func:`nimare.utils.tal2mni` do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "DEFAULT_TAL_TRANSFORM",
    "ICBM_FSL_TO_TAL",
    "ICBM_OTHER_TO_TAL",
    "ICBM_SPM_TO_TAL",
    "MNI",
    "SPACES",
    "TAL",
    "TAL_TRANSFORMS",
    "mni2tal",
    "normalize_space",
    "tal2mni",
]

MNI = "MNI"
TAL = "TAL"

#: Accepted spellings of a space (lower-case) → canonical name.
SPACES: Mapping[str, str] = MappingProxyType(
    {
        "mni": MNI,
        "mni152": MNI,
        "icbm": MNI,
        "icbm152": MNI,
        "tal": TAL,
        "talairach": TAL,
    }
)

# NiMARE (and the NIDM convention) name target spaces with a resolution suffix, such as
# "mni152_2mm"; its ALE data sets use "ale_2mm" for the MNI template GingerALE ships.
_RESOLUTION_SUFFIX = re.compile(r"^(?P<name>[a-z0-9]+?)(?:[_-]\d+(?:\.\d+)?mm)?$")
_MNI_ONLY_WITH_SUFFIX = frozenset({"ale"})

#: Lancaster et al. 2007, MNI (templates other than SPM's and FSL's) → Talairach;
#: BrainMap ``icbm_other2tal.m``. NiMARE's ``tal2mni`` inverts this one.
ICBM_OTHER_TO_TAL = np.array(
    [
        [0.9357, 0.0029, -0.0072, -1.0423],
        [-0.0065, 0.9396, -0.0726, -1.3940],
        [0.0103, 0.0752, 0.8967, 3.6475],
        [0.0000, 0.0000, 0.0000, 1.0000],
    ]
)

#: Lancaster et al. 2007, MNI as normalised by SPM → Talairach; BrainMap ``icbm_spm2tal.m``.
ICBM_SPM_TO_TAL = np.array(
    [
        [0.9254, 0.0024, -0.0118, -1.0207],
        [-0.0048, 0.9316, -0.0871, -1.7667],
        [0.0152, 0.0883, 0.8924, 4.0926],
        [0.0000, 0.0000, 0.0000, 1.0000],
    ]
)

#: Lancaster et al. 2007, MNI as normalised by FSL → Talairach; BrainMap ``icbm_fsl2tal.m``.
ICBM_FSL_TO_TAL = np.array(
    [
        [0.9464, 0.0034, -0.0026, -1.0680],
        [-0.0083, 0.9479, -0.0580, -1.0239],
        [0.0053, 0.0617, 0.9010, 3.1883],
        [0.0000, 0.0000, 0.0000, 1.0000],
    ]
)

for _matrix in (ICBM_OTHER_TO_TAL, ICBM_SPM_TO_TAL, ICBM_FSL_TO_TAL):
    _matrix.setflags(write=False)

#: ``tal_transform`` method name → the MNI → Talairach matrix it inverts.
TAL_TRANSFORMS: Mapping[str, np.ndarray] = MappingProxyType(
    {
        "lancaster_other": ICBM_OTHER_TO_TAL,
        "lancaster_spm": ICBM_SPM_TO_TAL,
        "lancaster_fsl": ICBM_FSL_TO_TAL,
    }
)

DEFAULT_TAL_TRANSFORM = "lancaster_other"


def normalize_space(name: str) -> str:
    """Canonical name of a stereotactic space.

    Parameters
    ----------
    name : str
        ``"MNI"``, ``"TAL"``, ``"Talairach"`` in any case, or a NiMARE/NIDM target name
        with a resolution suffix (``"mni152_2mm"``, ``"ale_2mm"``, ``"tal_2mm"``).

    Returns
    -------
    str
        ``"MNI"`` or ``"TAL"``.

    Raises
    ------
    ValueError
        If the name is not a known space.
    """
    key = str(name).strip().lower()
    if key in SPACES:
        return SPACES[key]
    match = _RESOLUTION_SUFFIX.match(key)
    if match and key != match["name"]:
        base = match["name"]
        if base in SPACES:
            return SPACES[base]
        if base in _MNI_ONLY_WITH_SUFFIX:
            return MNI
    raise ValueError(f"unknown space {name!r}; expected MNI or TAL (Talairach)")


def _transform_matrix(method: str) -> np.ndarray:
    try:
        return TAL_TRANSFORMS[method]
    except KeyError:
        raise ValueError(
            f"unknown Talairach transform {method!r}; choose one of {sorted(TAL_TRANSFORMS)}"
        ) from None


def _apply_affine(matrix: np.ndarray, xyz: ArrayLike) -> np.ndarray:
    points = np.asarray(xyz, dtype=np.float64)
    if points.shape[-1:] != (3,):
        raise ValueError(f"coordinates must have shape (..., 3), got {points.shape}")
    flat = points.reshape(-1, 3)
    # Homogeneous coordinates, multiplied in the same order as NiMARE and BrainMap
    # (matrix @ column vectors), so the results agree to the last bits.
    homogeneous = np.concatenate([flat.T, np.ones((1, flat.shape[0]))])
    return np.dot(matrix, homogeneous)[:3].T.reshape(points.shape)


def tal2mni(xyz: ArrayLike, method: str = DEFAULT_TAL_TRANSFORM) -> np.ndarray:
    """Convert Talairach coordinates to MNI (Lancaster et al. 2007).

    Parameters
    ----------
    xyz : array_like of shape (n, 3) or (3,)
        Coordinates in Talairach millimetres, one point per row.
    method : {"lancaster_other", "lancaster_spm", "lancaster_fsl"}
        Which Lancaster fit to invert. The default, ``"lancaster_other"``, equals
        :func:`nimare.utils.tal2mni`; ``"lancaster_spm"`` and ``"lancaster_fsl"`` are the
        fits for SPM- and FSL-normalised MNI data (the choices GingerALE offers).

    Returns
    -------
    ndarray
        MNI millimetres, same shape as ``xyz``.
    """
    return _apply_affine(np.linalg.inv(_transform_matrix(method)), xyz)


def mni2tal(xyz: ArrayLike, method: str = DEFAULT_TAL_TRANSFORM) -> np.ndarray:
    """Convert MNI coordinates to Talairach (Lancaster et al. 2007); inverse of `tal2mni`.

    Parameters
    ----------
    xyz : array_like of shape (n, 3) or (3,)
        Coordinates in MNI millimetres, one point per row.
    method : {"lancaster_other", "lancaster_spm", "lancaster_fsl"}
        Which Lancaster fit to apply.

    Returns
    -------
    ndarray
        Talairach millimetres, same shape as ``xyz``.
    """
    return _apply_affine(_transform_matrix(method), xyz)
