"""The analysis grid: a brain mask on a voxel lattice, and mm <-> voxel conversion."""

from __future__ import annotations

import dataclasses
import hashlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # nibabel is imported where a NIfTI file is read or written
    import nibabel as nib

__all__ = ["Grid", "default_mask_path", "load_grid", "read_volume"]

#: The MNI152 (FSL 6th generation, asymmetric) 2 mm brain mask NiMARE uses for ALE.
DEFAULT_MASK_NAME = "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz"


def default_mask_path() -> Path:
    """Path of the bundled MNI152 2 mm brain mask (91 x 109 x 91, 228,483 voxels)."""
    return Path(str(resources.files("gpuale") / "data" / DEFAULT_MASK_NAME))


#: The same mask as packed bits with its affine and voxel sizes (tests check it equals the
#: NIfTI file): the default grid loads without importing nibabel, ~0.1 s of every analysis
#: that writes no image (issue 29).
DEFAULT_MASK_BITS = "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.npz"


#: The balanced contrast's grey-matter prior on the bundled mask's grid (see
#: :func:`gpuale.balanced.prior_voxels`).
GM_PRIOR_NAME = "tpl-MNI152NLin2009aSym_res-02_desc-gmprior_mask.nii.gz"


def gm_prior_path() -> Path:
    """Path of the bundled grey-matter prior (MNI ICBM152 2009a symmetric grey-matter
    template resampled to the 2 mm grid, above 0.1; gpuale/data/README.md)."""
    return Path(str(resources.files("gpuale") / "data" / GM_PRIOR_NAME))


@dataclasses.dataclass(frozen=True, eq=False)
class Grid:
    """A 3-D voxel lattice with a brain mask.

    Parameters
    ----------
    mask : ndarray of bool, shape (X, Y, Z)
        In-mask voxels.
    affine : ndarray of shape (4, 4)
        Voxel -> mm (RAS) transform.
    voxel_sizes : tuple of float
        Voxel edge lengths in mm as stored in the header (float32, as NiMARE reads them).
    source : str
        Where the mask came from.
    """

    mask: np.ndarray
    affine: np.ndarray
    voxel_sizes: tuple[float, float, float]
    source: str = ""

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask)
        if mask.ndim != 3:
            raise ValueError(f"mask {self.source!r} must be 3-D, got shape {mask.shape}")
        mask = mask.astype(bool)
        if not mask.any():
            raise ValueError(f"mask {self.source!r} has no non-zero voxels")
        mask.setflags(write=False)
        object.__setattr__(self, "mask", mask)
        in_mask = np.flatnonzero(mask.ravel()).astype(np.int64)
        in_mask.setflags(write=False)
        object.__setattr__(self, "in_mask_flat", in_mask)

    in_mask_flat: np.ndarray = dataclasses.field(init=False, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.mask.shape)  # type: ignore[return-value]

    @property
    def n_voxels(self) -> int:
        """Number of in-mask voxels."""
        return int(self.in_mask_flat.size)

    def mm_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Voxel indices nearest to mm coordinates.

        Rounds half to even (``numpy.round``), as NiMARE does: on a 2 mm grid every odd
        millimetre coordinate lies exactly half-way between two voxels.
        """
        xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
        ijk = apply_affine(np.linalg.inv(self.affine), xyz)
        return np.round(ijk).astype(np.int64)

    def voxel_to_mm(self, ijk: np.ndarray) -> np.ndarray:
        return apply_affine(self.affine, np.atleast_2d(ijk))

    def to_volume(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Scatter in-mask values (length ``n_voxels``) into a 3-D volume."""
        values = np.asarray(values)
        if values.shape[0] != self.n_voxels:
            raise ValueError(f"expected {self.n_voxels} in-mask values, got {values.shape[0]}")
        out = np.full(self.mask.size, fill, dtype=values.dtype)
        out[self.in_mask_flat] = values
        return out.reshape(self.shape)

    def to_image(
        self, values: np.ndarray, fill: float = 0.0, description: str = ""
    ) -> nib.Nifti1Image:
        """In-mask values as a NIfTI image on this grid (``description`` -> descrip)."""
        import nibabel as nib

        volume = self.to_volume(values, fill)
        if volume.dtype == np.float64:
            volume = volume.astype(np.float32)
        img = nib.Nifti1Image(volume, self.affine)
        img.header.set_zooms(self.voxel_sizes)
        img.set_qform(self.affine, code=4)
        img.set_sform(self.affine, code=4)
        img.header["descrip"] = description[:79].encode("ascii", "replace")
        return img

    def holds(self, shape: tuple[int, ...], affine: np.ndarray) -> bool:
        """Whether a volume of this shape and affine lies on this grid (gpuale never
        resamples a map, so this is the one test of "the same grid")."""
        return same_space(self.shape, self.affine, shape, affine)

    def checksum(self) -> str:
        digest = hashlib.sha256(np.packbits(self.mask).tobytes())
        digest.update(np.asarray(self.affine, dtype=np.float64).tobytes())
        return digest.hexdigest()[:16]


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (rows of 3 coordinates) through a 4 x 4 affine: the products and sums of
    ``nibabel.affines.apply_affine``, in its order, so the same bits."""
    affine = np.asarray(affine)
    return np.asarray(points) @ affine[:3, :3].T + affine[:3, 3][None, :]


#: Largest difference between two affines' entries (mm) still taken as the same grid:
#: NIfTI headers store affines in float32, so copies of one grid differ by rounding.
AFFINE_ATOL_MM = 1e-4


def same_space(shape_a: tuple[int, ...], affine_a: np.ndarray, shape_b: tuple[int, ...],
               affine_b: np.ndarray) -> bool:
    """Whether two volumes have the same shape and (to :data:`AFFINE_ATOL_MM`) affine."""
    return tuple(shape_a) == tuple(shape_b) and bool(
        np.allclose(affine_a, affine_b, atol=AFFINE_ATOL_MM)
    )


def read_volume(path: str | Path, what: str = "image") -> tuple[nib.Nifti1Image, np.ndarray]:
    """A 3-D NIfTI volume (a trailing axis of length 1 is dropped), with clear errors.

    Raises
    ------
    ValueError
        If the file is missing, unreadable as NIfTI, or not 3-D; the message names
        ``what`` the file was meant to be and its path.
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except FileNotFoundError:
        raise ValueError(f"{what} {str(path)!r} does not exist") from None
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise ValueError(f"{what} {str(path)!r} is not a readable NIfTI image: {exc}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{what} {str(path)!r} must be 3-D, got shape {data.shape}")
    return img, data


def load_grid(path: str | Path | None = None) -> Grid:
    """Load a mask NIfTI as the analysis grid (the bundled MNI152 2 mm mask by default).

    Parameters
    ----------
    path : str or Path, optional
        A 3-D NIfTI mask (its non-zero voxels are the analysis mask); by default the
        bundled MNI152 2 mm brain mask.

    Returns
    -------
    Grid

    Raises
    ------
    ValueError
        If the file cannot be read as NIfTI, is not 3-D, or has no non-zero voxels.
    """
    if path is None:
        return _default_grid()
    path = Path(path)
    img, data = read_volume(path, "mask")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"mask {str(path)!r} contains NaN or infinite values")
    zooms = tuple(np.float32(z) for z in img.header.get_zooms()[:3])
    return Grid(mask=data != 0, affine=np.asarray(img.affine), voxel_sizes=zooms, source=str(path))


def _default_grid() -> Grid:
    """The bundled mask, from its packed-bits copy (:data:`DEFAULT_MASK_BITS`)."""
    with np.load(default_mask_path().with_name(DEFAULT_MASK_BITS)) as stored:
        shape = tuple(int(n) for n in stored["shape"])
        mask = np.unpackbits(stored["bits"], count=int(np.prod(shape))).reshape(shape)
        zooms = tuple(np.float32(z) for z in stored["zooms"])
        return Grid(mask=mask.astype(bool), affine=stored["affine"], voxel_sizes=zooms,
                    source=str(default_mask_path()))
