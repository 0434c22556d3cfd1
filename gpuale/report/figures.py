"""Report figures: orthogonal slices, glass brains and null distributions (matplotlib).

Figures are drawn on ``matplotlib.figure.Figure`` objects with an explicit Agg canvas,
never through pyplot, so that writing a report neither needs a display nor switches the
backend of a session (a notebook, say) that is already using matplotlib.

Statistical maps (2 mm) and the template (1 mm) are never resampled: every image is drawn
with ``imshow(..., extent=...)`` in MNI mm, so each keeps its own voxels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "Background",
    "FigureError",
    "NullPanel",
    "Volume",
    "glass_brain_figure",
    "load_background",
    "load_volume",
    "null_figure",
    "slice_figure",
    "volume_from_array",
]

#: Views as (name, axis held fixed); the other two axes run right and up, in that order.
VIEWS = (("sagittal", 0), ("coronal", 1), ("axial", 2))
COORD_NAMES = "xyz"
#: Letters at the left and right ends of each view's horizontal axis.
ORIENTATION = {0: ("P", "A"), 1: ("L", "R"), 2: ("L", "R")}
#: Colour stops of positive values (A > B) and of negative values (B > A).
POSITIVE_COLOURS = ("#b3001b", "#ff3b1f", "#ffb000", "#fff25a")
NEGATIVE_COLOURS = ("#0b2e9e", "#1f63ff", "#33b5ff", "#9ff3ff")
SLICE_DPI = 110
GLASS_DPI = 110
NULL_DPI = 110
# Margin (mm) kept around the brain's bounding box when cropping the views.
_CROP_MARGIN_MM = 4.0
_OVERLAY_ZORDER = 3
# Affine off-diagonal terms below this are rounding, not rotation.
_OBLIQUE_TOLERANCE = 1e-4


class FigureError(ValueError):
    """A map that cannot be drawn (oblique affine, not 3-D)."""


@dataclasses.dataclass(frozen=True)
class Volume:
    """A 3-D array with the increasing mm coordinate of each voxel centre along each axis."""

    data: np.ndarray
    axes: tuple[np.ndarray, np.ndarray, np.ndarray]

    def step(self, axis: int) -> float:
        coords = self.axes[axis]
        return float(coords[1] - coords[0]) if coords.size > 1 else 1.0

    def extent(self, axis: int) -> tuple[float, float]:
        """Outer edges (mm) of the voxels along ``axis``."""
        half = self.step(axis) / 2.0
        return float(self.axes[axis][0] - half), float(self.axes[axis][-1] + half)


@dataclasses.dataclass(frozen=True)
class Background:
    """What maps are drawn over: an anatomical image and a brain mask (for outlines)."""

    image: Volume
    mask: Volume
    description: str


def volume_from_array(data: np.ndarray, affine: np.ndarray) -> Volume:
    """A ``Volume`` from voxel data and an axis-aligned affine (flipped to increasing mm)."""
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise FigureError(f"expected a 3-D map, got shape {data.shape}")
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    if np.abs(linear - np.diag(np.diag(linear))).max() > _OBLIQUE_TOLERANCE:
        raise FigureError("the map's affine is oblique; figures need an axis-aligned grid")
    axes = []
    for axis in range(3):
        step, origin = linear[axis, axis], float(affine[axis, 3])
        coords = origin + step * np.arange(data.shape[axis])
        if step < 0:
            data = np.flip(data, axis=axis)
            coords = coords[::-1]
        axes.append(coords)
    return Volume(data=np.ascontiguousarray(data), axes=tuple(axes))


def load_volume(path: Path) -> Volume:
    """A NIfTI file as a ``Volume`` (float32)."""
    import nibabel as nib

    img = nib.load(str(path))
    return volume_from_array(np.asarray(img.dataobj, dtype=np.float32), img.affine)


def load_background(template: Path | None, fallback_mask: Path) -> Background:
    """The 1 mm MNI template (brain mask = its non-zero voxels), or a mask alone."""
    if template is not None:
        image = load_volume(template)
        mask = Volume(data=image.data > 0, axes=image.axes)
        return Background(image=image, mask=mask, description="MNI152 T1 1 mm (FSL)")
    mask = load_volume(fallback_mask)
    mask = Volume(data=mask.data > 0, axes=mask.axes)
    image = Volume(data=mask.data.astype(np.float32), axes=mask.axes)
    return Background(image=image, mask=mask, description="MNI152 2 mm brain mask")


def _new_figure(width: float, height: float, dpi: int, facecolor: str = "white"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, facecolor=facecolor)
    FigureCanvasAgg(fig)
    return fig


def _colormaps():
    from matplotlib.colors import LinearSegmentedColormap

    return (
        LinearSegmentedColormap.from_list("gpuale_positive", POSITIVE_COLOURS),
        LinearSegmentedColormap.from_list("gpuale_negative", NEGATIVE_COLOURS),
    )


@dataclasses.dataclass(frozen=True)
class _Scale:
    """Colour scale of a thresholded map: |value| from its threshold to its maximum."""

    low: float
    high: float
    has_positive: bool
    has_negative: bool

    @classmethod
    def of(cls, data: np.ndarray) -> _Scale:
        magnitude = np.abs(data[np.isfinite(data) & (data != 0)])
        if magnitude.size == 0:
            return cls(0.0, 1.0, False, False)
        low, high = float(magnitude.min()), float(magnitude.max())
        # A map with one value (a capped contrast z) still needs a non-empty range.
        high = high if high > low else low + 1.0
        return cls(low, high, bool((data > 0).any()), bool((data < 0).any()))

    def norm(self):
        from matplotlib.colors import Normalize

        return Normalize(vmin=self.low, vmax=self.high, clip=True)


def _plane_extent(volume: Volume, axis: int) -> tuple[float, float, float, float]:
    horizontal, vertical = (a for a in range(3) if a != axis)
    return (*volume.extent(horizontal), *volume.extent(vertical))


def _plane(volume: Volume, axis: int, coord_mm: float) -> np.ndarray | None:
    """The slice through ``coord_mm`` along ``axis`` (None when outside the volume)."""
    coords = volume.axes[axis]
    index = int(np.argmin(np.abs(coords - coord_mm)))
    if abs(coords[index] - coord_mm) > abs(volume.step(axis)) / 2.0 + 1e-6:
        return None
    return np.take(volume.data, index, axis=axis)


def _draw_signed(ax, plane: np.ndarray, extent, scale: _Scale) -> None:
    """Positive values in red-yellow, negative in blue-cyan; zero stays transparent."""
    positive_cmap, negative_cmap = _colormaps()
    for sign, cmap in ((1.0, positive_cmap), (-1.0, negative_cmap)):
        values = np.ma.masked_where(~(sign * plane > 0), np.abs(plane))
        if values.count():
            # Images default to zorder 0, below the glass brain's filled outline.
            ax.imshow(values.T, origin="lower", extent=extent, cmap=cmap, norm=scale.norm(),
                      interpolation="nearest", zorder=_OVERLAY_ZORDER)


def _crop(ax, mask: Volume, axis: int) -> None:
    horizontal, vertical = (a for a in range(3) if a != axis)
    inside = np.argwhere(mask.data.any(axis=axis))
    if inside.size == 0:
        return
    low, high = inside.min(axis=0), inside.max(axis=0)
    for setter, dim, k in ((ax.set_xlim, horizontal, 0), (ax.set_ylim, vertical, 1)):
        coords = mask.axes[dim]
        setter(coords[low[k]] - _CROP_MARGIN_MM, coords[high[k]] + _CROP_MARGIN_MM)


def _colorbars(
    fig, scale: _Scale, labels: tuple[str, str], left: float, text_colour: str = "black"
) -> None:
    from matplotlib.cm import ScalarMappable

    positive_cmap, negative_cmap = _colormaps()
    shown = [(cmap, label) for cmap, label, on in (
        (positive_cmap, labels[0], scale.has_positive),
        (negative_cmap, labels[1], scale.has_negative),
    ) if on]
    height = 0.7 / max(len(shown), 1)
    for k, (cmap, label) in enumerate(shown):
        # The positive scale on top, the negative one under it.
        bottom = 0.85 - (k + 1) * height
        cax = fig.add_axes((left, bottom + 0.02, 0.015, height - 0.04))
        bar = fig.colorbar(ScalarMappable(norm=scale.norm(), cmap=cmap), cax=cax)
        bar.set_label(label, color=text_colour, fontsize=9)
        cax.tick_params(colors=text_colour, labelsize=8)


def slice_figure(
    background: Background,
    overlay: Volume,
    peak_mm: Sequence[float],
    path: Path,
    *,
    title: str,
    colorbar_labels: tuple[str, str] = ("z", "-z"),
) -> Path:
    """Sagittal, coronal and axial slices through ``peak_mm`` of ``overlay`` on the template.

    Parameters
    ----------
    background : Background
    overlay : Volume
        The thresholded map (zero = not shown); signed maps use two colour scales.
    peak_mm : (x, y, z)
    path : Path
        PNG written.
    title : str
    colorbar_labels : (str, str)
        Labels of the positive and the negative colour scale.
    """
    fig = _new_figure(10.0, 3.6, SLICE_DPI, facecolor="black")
    scale = _Scale.of(overlay.data)
    image = background.image
    vmax = float(np.percentile(image.data[image.data > 0], 99.5)) if image.data.any() else 1.0
    for k, (name, axis) in enumerate(VIEWS):
        ax = fig.add_axes((0.01 + k * 0.305, 0.04, 0.29, 0.82))
        ax.set_facecolor("black")
        ax.set_axis_off()
        plane = _plane(image, axis, peak_mm[axis])
        if plane is not None:
            ax.imshow(plane.T, origin="lower", extent=_plane_extent(image, axis), cmap="gray",
                      vmin=0.0, vmax=vmax, interpolation="nearest")
        plane = _plane(overlay, axis, peak_mm[axis])
        if plane is not None:
            _draw_signed(ax, plane, _plane_extent(overlay, axis), scale)
        _crosshair(ax, peak_mm, axis)
        _crop(ax, background.mask, axis)
        ax.set_aspect("equal")
        ax.set_title(f"{name}  {COORD_NAMES[axis]} = {peak_mm[axis]:g}", color="white",
                     fontsize=13)
        left, right = ORIENTATION[axis]
        ax.text(0.02, 0.02, left, color="white", transform=ax.transAxes, fontsize=12)
        ax.text(0.98, 0.02, right, color="white", transform=ax.transAxes, fontsize=12,
                ha="right")
    fig.suptitle(title, color="white", fontsize=14, x=0.01, ha="left", y=0.985)
    _colorbars(fig, scale, colorbar_labels, left=0.935, text_colour="white")
    fig.savefig(path, facecolor="black")
    return path


def _crosshair(ax, peak_mm: Sequence[float], axis: int) -> None:
    horizontal, vertical = (a for a in range(3) if a != axis)
    style = {"color": "#7fff7f", "linewidth": 0.6, "alpha": 0.7}
    ax.axvline(peak_mm[horizontal], **style)
    ax.axhline(peak_mm[vertical], **style)


def _projection(data: np.ndarray, axis: int) -> np.ndarray:
    """Maximum-intensity projection keeping the sign of the largest |value|."""
    index = np.expand_dims(np.abs(data).argmax(axis=axis), axis)
    return np.take_along_axis(data, index, axis=axis).squeeze(axis)


def glass_brain_figure(
    background: Background,
    overlay: Volume,
    peaks: Sequence[tuple[str, Sequence[float]]],
    path: Path,
    *,
    colorbar_labels: tuple[str, str] = ("z", "-z"),
) -> Path:
    """Maximum-intensity projections of ``overlay`` over the outline of the brain mask.

    ``peaks`` are (label, (x, y, z)) pairs written next to each cluster's peak.
    """
    fig = _new_figure(10.0, 3.4, GLASS_DPI)
    scale = _Scale.of(overlay.data)
    mask = background.mask
    for k, (name, axis) in enumerate(VIEWS):
        ax = fig.add_axes((0.01 + k * 0.305, 0.03, 0.29, 0.85))
        ax.set_axis_off()
        _outline(ax, mask, axis)
        _draw_signed(ax, _projection(overlay.data, axis), _plane_extent(overlay, axis), scale)
        horizontal, vertical = (a for a in range(3) if a != axis)
        for label, peak in peaks:
            ax.annotate(label, (peak[horizontal], peak[vertical]), xytext=(4, 4),
                        textcoords="offset points", fontsize=8 if len(peaks) <= 12 else 6,
                        color="#1d2330",
                        fontweight="bold", zorder=_OVERLAY_ZORDER + 1)
        _crop(ax, mask, axis)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=10)
        left, right = ORIENTATION[axis]
        ax.text(0.0, 0.0, left, transform=ax.transAxes, fontsize=9, color="#5b6475")
        ax.text(1.0, 0.0, right, transform=ax.transAxes, fontsize=9, color="#5b6475",
                ha="right")
    _colorbars(fig, scale, colorbar_labels, left=0.935)
    fig.savefig(path)
    return path


def _outline(ax, mask: Volume, axis: int) -> None:
    horizontal, vertical = (a for a in range(3) if a != axis)
    silhouette = mask.data.any(axis=axis).astype(np.float32).T
    ax.contourf(mask.axes[horizontal], mask.axes[vertical], silhouette, levels=[0.5, 1.5],
                colors=["#f1f2f4"], zorder=0)
    ax.contour(mask.axes[horizontal], mask.axes[vertical], silhouette, levels=[0.5],
               colors=["#555555"], linewidths=0.8)


@dataclasses.dataclass(frozen=True)
class NullPanel:
    """One null distribution: per-permutation maxima and what to mark on them."""

    values: np.ndarray
    title: str
    xlabel: str
    threshold: float
    interval: tuple[float, float]
    observed: float | None
    observed_label: str


def null_figure(panels: Sequence[NullPanel], path: Path, *, alpha: float) -> Path:
    """Histograms of null maxima with the FWE threshold and its Monte Carlo 95% interval."""
    fig = _new_figure(5.0 * len(panels), 3.6, NULL_DPI)
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.hist(panel.values, bins=_bins(panel.values), color="#9db4d3", edgecolor="#5a7bab",
                linewidth=0.4)
        ax.axvspan(*panel.interval, color="#ff9f1c", alpha=0.3,
                   label="Monte Carlo 95% interval")
        ax.axvline(panel.threshold, color="#d62828", linewidth=1.6,
                   label=f"FWE threshold (alpha = {alpha:g})")
        _mark_observed(ax, panel)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel, fontsize=9)
        ax.set_ylabel("permutations", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, frameon=False, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _bins(values: np.ndarray) -> np.ndarray | int:
    count = int(min(50, max(10, values.size // 8)))
    if np.issubdtype(values.dtype, np.integer) or np.all(np.mod(values, 1) == 0):
        # Whole voxel counts: one bin edge between consecutive integers, never inside.
        low, high = float(values.min()), float(values.max())
        width = max(1.0, np.ceil((high - low + 1) / count))
        return np.arange(low - 0.5, high + width + 0.5, width)
    return count


def _mark_observed(ax, panel: NullPanel) -> None:
    """The observed maximum: a line, or an arrow at the right edge when far beyond the null.

    Drawn to scale, an observed value ten times the null's range would squash the
    histogram into a few pixels.
    """
    if panel.observed is None:
        return
    low = float(min(panel.values.min(), panel.interval[0]))
    high = float(max(panel.values.max(), panel.interval[1], panel.threshold))
    span = max(high - low, 1e-12)
    if panel.observed <= high + 0.5 * span:
        ax.axvline(panel.observed, color="#222222", linestyle="--", linewidth=1.2,
                   label=f"{panel.observed_label} ({panel.observed:.4g})")
        return
    ax.set_xlim(low - 0.05 * span, high + 0.35 * span)
    ax.annotate(f"{panel.observed_label}\n{panel.observed:.4g} \u2192", xy=(0.99, 0.55),
                xycoords="axes fraction", ha="right", fontsize=8, color="#222222")
