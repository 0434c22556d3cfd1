"""gpuale's engines inside NiMARE's own API: estimators that *are* NiMARE estimators.

``gpuale.nimare.ALE`` and ``gpuale.nimare.ALESubtraction`` subclass NiMARE 0.22's
``nimare.meta.cbma.ALE`` and ``ALESubtraction``: a NiMARE script changes one import and
nothing else. ``fit`` computes the ALE maps and the analytic null (NiMARE's histogram
bins and weights, bit for bit) on a gpuale engine; ``correct_fwe_montecarlo``, which
NiMARE's ``FWECorrector(method="montecarlo")`` calls, runs the permutations on a gpuale
engine (numba threads for ``n_cores``, the GPU, or a Dask cluster through ``scheduler``)
and returns NiMARE's maps, ``null_distributions_`` keys and tables. Results are
``nimare.results.MetaResult`` objects, so ``FDRCorrector``, ``CBMAWorkflow``,
``PairwiseCBMAWorkflow``, ``Jackknife``, ``FocusCounter`` and ``MetaResult.save_maps``
work on them unchanged.

What gpuale does not compute (another kernel than NiMARE's ``ALEKernel``, the Monte Carlo
uncorrected null, a grey-matter ``mask_coverage``, precomputed MA maps, inference masks in
a subtraction, a subtraction's main-effect correction) runs
NiMARE's own code, with a :class:`NiMAREFallbackWarning` that says so.

Permutations draw random foci with gpuale's counter-based generator (Philox, seeded by
``random_state``), not NiMARE's: the null distributions follow the same procedure but are
other draws, so Monte Carlo p differ from NiMARE's within Monte Carlo error.

``gpuale.nimare.SCALE`` subclasses NiMARE's ``SCALE`` the same way: its permutations
(foci moved to foci of the reference pool) run on a gpuale engine.

Needs NiMARE (``pip install 'gpuale[nimare]'``, tested with 0.22.1).
"""

from __future__ import annotations

import copy
import logging
import warnings

import numpy as np

try:
    from nimare.meta.cbma import ale as _nimare_ale
    from nimare.meta.kernel import ALEKernel
    from nimare.stats import null_to_p
    from nimare.transforms import p_to_z as nimare_p_to_z
    from nimare.utils import (
        _check_ncores,
        _nlogp_to_logp_values,
        _p_to_logp_values,
        mm2vox,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "gpuale.nimare needs NiMARE: pip install 'gpuale[nimare]'"
    ) from exc
from joblib import Memory
from scipy import ndimage

from gpuale._version import __version__
from gpuale.cluster_null import contrast_cluster_null
from gpuale.engines import get_engine, resolve_device
from gpuale.grid import Grid
from gpuale.kernel import ale_kernel, fwhm_from_sample_size, kernel_sigma
from gpuale.nulls import run_null
from gpuale.nullspecs import ContrastNullSpec, GlobalNullSpec, ScaleNullSpec
from gpuale.problem import Problem
from gpuale.stats import analytic_null

__all__ = ["ALE", "SCALE", "ALESubtraction", "NiMAREFallbackWarning"]

#: NiMARE's logger of its ALE estimators: SCALE's notes go where NiMARE's own would.
_LGR = logging.getLogger("nimare.meta.cbma.ale")

#: NiMARE's float type for maps and null values (``nimare.utils.DEFAULT_FLOAT_DTYPE``).
FLOAT = np.float32


class NiMAREFallbackWarning(UserWarning):
    """An option gpuale does not compute: NiMARE's own code runs it instead."""


def _fallback(estimator, step: str, reason: str) -> None:
    warnings.warn(
        f"gpuale.nimare.{type(estimator).__name__}: {reason}; gpuale does not compute this, "
        f"so NiMARE's own code runs the {step} (at NiMARE's speed)",
        NiMAREFallbackWarning,
        stacklevel=3,
    )


def _kernel_reason(kernel) -> str | None:
    """Why gpuale cannot compute with this kernel transformer (None: it can)."""
    if type(kernel) is not ALEKernel:
        return f"the kernel transformer is {type(kernel).__name__}, not NiMARE's ALEKernel"
    return None


def _grid_of(masker) -> Grid:
    """The analysis grid of a NiMARE masker's mask image."""
    img = masker.mask_img_ if hasattr(masker, "mask_img_") else masker.mask_img
    data = np.asanyarray(img.dataobj)
    zooms = tuple(np.float32(z) for z in img.header.get_zooms()[:3])
    return Grid(mask=data != 0, affine=np.asarray(img.affine), voxel_sizes=zooms,
                source="NiMARE masker")


def _problem_of(coordinates, kernel, grid: Grid) -> Problem:
    """NiMARE's coordinates table (with ``i, j, k`` and ``sample_size``) as a gpuale
    Problem, experiments in NiMARE's order (sorted ids, as ``compute_ale_ma`` orders the
    rows of the MA maps)."""
    ids = coordinates["id"].to_numpy().astype(str)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    ijk = coordinates[["i", "j", "k"]].to_numpy()[order].astype(np.int32)
    experiment_ids, starts = np.unique(ids, return_index=True)
    offsets = np.append(starts, ids.size).astype(np.int64)
    if kernel.fwhm is not None:
        fwhms = np.full(experiment_ids.size, float(kernel.fwhm))
        sigmas = [kernel_sigma(grid.voxel_sizes, fwhm_mm=float(kernel.fwhm))] * fwhms.size
    else:
        if kernel.sample_size is not None:
            sizes = np.full(experiment_ids.size, kernel.sample_size)
        else:  # the first focus's sample_size, as NiMARE's compute_ale_ma takes it
            sizes = coordinates["sample_size"].to_numpy()[order][starts]
        sigmas = [kernel_sigma(grid.voxel_sizes, n_subjects=n) for n in sizes]
        fwhms = np.atleast_1d(np.asarray(fwhm_from_sample_size(sizes), dtype=np.float64))
    unique = sorted(set(sigmas))
    kernel_index = np.array([unique.index(s) for s in sigmas], dtype=np.int32)
    ijk.setflags(write=False)
    return Problem(grid=grid, focus_ijk=ijk, experiment_offsets=offsets,
                   kernel_index=kernel_index, kernels=tuple(ale_kernel(s) for s in unique),
                   fwhm_mm=fwhms, experiment_ids=tuple(experiment_ids))


def _seed_of(random_state) -> int:
    """A 64-bit seed of gpuale's generator from NiMARE's ``random_state``."""
    if random_state is None:
        words = np.random.SeedSequence().generate_state(2, np.uint32)
        return int(words[0]) | (int(words[1]) << 32)
    if isinstance(random_state, (int, np.integer)):
        seed = int(random_state)
        return seed if 0 <= seed < 2**64 else seed % 2**64
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    raise TypeError(f"random_state must be None, an int or a numpy generator, got "
                    f"{type(random_state).__name__}")


def _credit(device: str, engine) -> str:
    return (f" Computed with gpuale {__version__} on "
            f"{engine.describe()} ({device}), which reproduces NiMARE's ALE maps and "
            "analytic null; its Monte Carlo permutations draw random foci with a "
            "counter-based generator (Philox) instead of NiMARE's.")


class ALE(_nimare_ale.ALE):
    """NiMARE's ALE on gpuale's engines (``isinstance(est, nimare.meta.cbma.ALE)``).

    Parameters
    ----------
    device : str
        ``auto`` (a GPU when CuPy sees one, else the CPU), ``cpu``, ``gpu`` or ``gpu:N``.
    scheduler : gpuale.nulls.Scheduler, optional
        Who runs the permutation chunks, e.g. ``gpuale.nulls.DaskScheduler(client)``;
        default: ``n_cores`` threads of this machine (or the GPU).
    kernel_transformer, null_method, n_iters, memory, memory_level, n_cores
        As NiMARE's :class:`nimare.meta.cbma.ale.ALE`.
    random_state, **kwargs
        As NiMARE's :class:`nimare.meta.cbma.ale.ALE` (``kernel__sample_size``,
        ``kernel__fwhm``, ``mask``, ``mask_coverage``). ``random_state`` seeds gpuale's
        generator. Another kernel than ``ALEKernel``, ``null_method="montecarlo"`` or
        ``mask_coverage="gm"`` run NiMARE's own code, with a warning.
    """

    def __init__(
        self,
        kernel_transformer=ALEKernel,
        null_method="approximate",
        n_iters=5000,
        memory=Memory(location=None, verbose=0),  # noqa: B008 - NiMARE's default
        memory_level=0,
        n_cores=1,
        random_state=None,
        device="auto",
        scheduler=None,
        **kwargs,
    ):
        super().__init__(
            kernel_transformer=kernel_transformer,
            null_method=null_method,
            n_iters=n_iters,
            memory=memory,
            memory_level=memory_level,
            n_cores=n_cores,
            random_state=random_state,
            **kwargs,
        )
        self.device = device
        self.scheduler = scheduler
        self._gpuale_problem = None
        self._gpuale_engine = None

    # -- what gpuale computes ----------------------------------------------------------

    def _fit_reason(self) -> str | None:
        if self.inputs_.get("ma_maps") is not None:
            return "precomputed MA maps were given (gpuale computes them from the foci)"
        if self.null_method != "approximate":
            return f"null_method={self.null_method!r} (gpuale computes the approximate null)"
        return _kernel_reason(self.kernel_transformer)

    def _correct_reason(self) -> str | None:
        if getattr(self, "_gpuale_problem", None) is None:
            return self._fit_reason() or "the estimator was fitted by NiMARE's code"
        if self.mask_coverage != "brain":
            return (f"mask_coverage={self.mask_coverage!r} (gpuale draws random foci from "
                    "the whole mask)")
        return None

    def _engine(self):
        if self._gpuale_engine is None:
            self._gpuale_device = resolve_device(self.device)
            self._gpuale_engine = get_engine(self._gpuale_device)
        return self._gpuale_engine

    def __getstate__(self):
        """Pickled (NiMARE's ``save``) without the engine, rebuilt where it is needed, or
        the scheduler (a cluster client belongs to this session)."""
        state = self.__dict__.copy()
        state["_gpuale_engine"] = None
        state["scheduler"] = None
        return state

    def __deepcopy__(self, memo):
        """A deep copy (NiMARE's Jackknife and workflows copy estimators) that shares the
        scheduler and the engine rather than copying a cluster client or device state."""
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            shared = key in ("scheduler", "_gpuale_engine")
            setattr(clone, key, value if shared else copy.deepcopy(value, memo))
        return clone

    def _fit(self, dataset):
        reason = self._fit_reason()
        if reason:
            self._gpuale_problem = None
            _fallback(self, "fit", reason)
            return super()._fit(dataset)
        self.dataset = dataset
        self.masker = self.masker or dataset.masker
        self.null_distributions_ = {}
        grid = _grid_of(self.masker)
        problem = _problem_of(self.inputs_["coordinates"], self.kernel_transformer, grid)
        engine = self._engine()
        observed = engine.observed_ale(problem)
        null = analytic_null(observed.ma_values, grid.n_voxels)  # NiMARE's every bin
        self._gpuale_problem = problem
        self._ALE__n_mask_voxels = grid.n_voxels  # as NiMARE's own fit leaves it
        self.weight_vec_ = None
        self.null_distributions_["histogram_bins"] = np.round(null.bin_centers, 5)
        weights = np.zeros(null.bin_centers.size, dtype=np.float64)
        weights[: null.weights.size] = null.weights
        self.null_distributions_["histweights_corr-none_method-approximate"] = weights
        stat = observed.ale.astype(np.float64)
        p = null.p_values(observed.ale)
        z = nimare_p_to_z(p, tail="one")
        maps = {"stat": stat, "p": p, "z": z, "logp": _nlogp_to_logp_values(np.log(p))}
        return maps, {}, self._description_text()

    def _generate_description(self):
        text = super()._generate_description()
        if getattr(self, "_gpuale_problem", None) is not None:
            text += _credit(self._gpuale_device, self._engine())
        return text

    def correct_fwe_montecarlo(self, result, voxel_thresh=0.001, n_iters=5000, n_cores=1,
                               vfwe_only=False):
        """NiMARE's Monte Carlo FWE correction, with the permutations on gpuale's engine.

        Returns what NiMARE's returns (maps, tables, description) and adds the same
        ``null_distributions_`` entries; see
        :meth:`nimare.meta.cbma.base.CBMAEstimator.correct_fwe_montecarlo`.
        """
        reason = self._correct_reason()
        if reason:
            _fallback(self, "Monte Carlo FWE correction", reason)
            return super().correct_fwe_montecarlo(result, voxel_thresh=voxel_thresh,
                                                  n_iters=n_iters, n_cores=n_cores,
                                                  vfwe_only=vfwe_only)
        stat = result.get_map("stat", return_type="array")
        ss_thresh = float(self._p_to_summarystat(voxel_thresh))
        problem = self._gpuale_problem
        engine = self._engine()
        spec = GlobalNullSpec(problem, ss_thresh, 6)
        null = run_null(spec, engine, seed=_seed_of(self.random_state), n_iters=int(n_iters),
                        scheduler=self.scheduler, n_workers=_check_ncores(n_cores))
        max_value = null.max_ale.astype(FLOAT)
        p_voxel = null_to_p(stat, max_value, tail="upper")
        self.null_distributions_["values_level-voxel_corr-fwe_method-montecarlo"] = max_value
        maps = {
            "logp_level-voxel": _p_to_logp_values(p_voxel, dtype=FLOAT),
            "z_level-voxel": nimare_p_to_z(p_voxel, tail="one"),
        }
        if not vfwe_only:
            max_size = null.max_cluster_size.astype(FLOAT)
            max_mass = null.max_cluster_mass.astype(FLOAT)
            p_size, p_mass = _cluster_p(stat, problem.grid, ss_thresh, max_size, max_mass)
            self.null_distributions_[
                "values_desc-size_level-cluster_corr-fwe_method-montecarlo"] = max_size
            self.null_distributions_[
                "values_desc-mass_level-cluster_corr-fwe_method-montecarlo"] = max_mass
            maps.update({
                "logp_desc-size_level-cluster": _p_to_logp_values(p_size, dtype=FLOAT),
                "z_desc-size_level-cluster": nimare_p_to_z(p_size, tail="one"),
                "logp_desc-mass_level-cluster": _p_to_logp_values(p_mass, dtype=FLOAT),
                "z_desc-mass_level-cluster": nimare_p_to_z(p_mass, tail="one"),
            })
        credit = (f" The {n_iters} permutations ran on gpuale {__version__} "
                  f"({engine.describe()}; random foci from gpuale's counter-based "
                  "generator, Philox).")
        if vfwe_only:
            description = (
                "Family-wise error correction was performed using a voxel-level Monte Carlo "
                "procedure. In this procedure, null datasets are generated in which dataset "
                "coordinates are substituted with coordinates randomly drawn from the "
                "meta-analysis mask, and the maximum summary statistic is retained. This "
                f"procedure was repeated {n_iters} times to build a null distribution of "
                "summary statistics." + credit)
        else:
            description = (
                "Family-wise error rate correction was performed using a Monte Carlo "
                "procedure. In this procedure, null datasets are generated in which dataset "
                "coordinates are substituted with coordinates randomly drawn from the "
                "meta-analysis mask, and maximum values are retained. This procedure was "
                f"repeated {n_iters} times to build null distributions of summary statistics, "
                "cluster sizes, and cluster masses. Clusters for cluster-level correction "
                "were defined using edge-wise connectivity and a voxel-level threshold of "
                f"p < {voxel_thresh} from the uncorrected null distribution." + credit)
        return maps, {}, description


def _cluster_p(stat: np.ndarray, grid: Grid, thresh: float, max_size: np.ndarray,
               max_mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cluster-size and cluster-mass FWE p of every in-mask voxel, as NiMARE computes them:
    face-connected clusters of stat > thresh, p = share of permutations whose largest
    cluster reaches the observed one (``nimare.stats.null_to_p``, upper tail)."""
    volume = grid.to_volume(np.asarray(stat, dtype=FLOAT))
    volume[volume <= thresh] = 0
    conn = ndimage.generate_binary_structure(rank=3, connectivity=1)
    labels, n = ndimage.label(volume, conn)
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.int64)
    sizes[0] = 0
    # NiMARE sums stat - threshold in float64 over each label, the background's too.
    masses = ndimage.sum_labels(volume.astype(np.float64) - thresh, labels,
                                index=np.arange(n + 1))
    p_size = null_to_p(sizes, max_size, "upper")
    p_mass = null_to_p(masses, max_mass, "upper")
    in_mask = labels.ravel()[grid.in_mask_flat]
    return p_size[in_mask], p_mass[in_mask]


def _pooled(first: Problem, second: Problem) -> Problem:
    """Both groups as one problem, the first group's experiments first (ids prefixed, so
    that an experiment in both stays two)."""
    kernels = tuple(first.kernels) + tuple(second.kernels)
    return Problem(
        grid=first.grid,
        focus_ijk=np.concatenate([first.focus_ijk, second.focus_ijk]),
        experiment_offsets=np.concatenate(
            [first.experiment_offsets, second.experiment_offsets[1:] + first.n_foci]),
        kernel_index=np.concatenate(
            [first.kernel_index, second.kernel_index + len(first.kernels)]).astype(np.int32),
        kernels=kernels,
        fwhm_mm=np.concatenate([first.fwhm_mm, second.fwhm_mm]),
        experiment_ids=tuple(f"1:{e}" for e in first.experiment_ids)
        + tuple(f"2:{e}" for e in second.experiment_ids),
    )


def _group_maps(engine, problem: Problem, label: str) -> tuple[np.ndarray, dict]:
    """One group's ALE and analytic-null p, z and logp, named as NiMARE names a pairwise
    estimator's group maps (``stat_desc-group1``, ...)."""
    observed = engine.observed_ale(problem)
    null = analytic_null(observed.ma_values, problem.grid.n_voxels,
                         max_ale=float(observed.ale.max()))
    p = null.p_values(observed.ale)
    maps = {
        f"stat_desc-{label}": observed.ale.astype(np.float64),
        f"p_desc-{label}": p,
        f"z_desc-{label}": nimare_p_to_z(p, tail="one").astype(np.float64),
        f"logp_desc-{label}": _nlogp_to_logp_values(np.log(p), dtype=FLOAT),
    }
    return observed.ale, maps


class ALESubtraction(_nimare_ale.ALESubtraction):
    """NiMARE's ALE subtraction on gpuale's engines
    (``isinstance(est, nimare.meta.cbma.ALESubtraction)``).

    The random splits of the pooled experiments run on a gpuale engine; with
    ``vfwe_only=False`` the cluster-level null forms clusters at the same pooled quantile
    of ``|differences|`` as NiMARE without keeping every permuted map
    (:mod:`gpuale.cluster_null`). ``device`` and ``scheduler`` as in :class:`ALE`; the
    other parameters as NiMARE's. Inference maps, another kernel, and
    ``correct_fwe_montecarlo(target="main-effects"|"all")`` run NiMARE's own code, with a
    warning.

    Parameters
    ----------
    device : str
        ``auto`` (a GPU when CuPy sees one, else the CPU), ``cpu``, ``gpu`` or ``gpu:N``.
    scheduler : gpuale.nulls.Scheduler, optional
        Who runs the permutation chunks, as for :class:`ALE`.
    kernel_transformer, n_iters, voxel_thresh, low_memory, vfwe_only
        As NiMARE's :class:`nimare.meta.cbma.ale.ALESubtraction`.
    restrict_to_inference_mask, memory, memory_level, n_cores, random_state, **kwargs
        As NiMARE's :class:`nimare.meta.cbma.ale.ALESubtraction`; ``random_state`` seeds
        gpuale's generator.
    """

    def __init__(
        self,
        kernel_transformer=ALEKernel,
        n_iters=5000,
        voxel_thresh=0.001,
        low_memory="auto",
        vfwe_only=True,
        restrict_to_inference_mask=False,
        memory=Memory(location=None, verbose=0),  # noqa: B008 - NiMARE's default
        memory_level=0,
        n_cores=1,
        random_state=None,
        device="auto",
        scheduler=None,
        **kwargs,
    ):
        super().__init__(
            kernel_transformer=kernel_transformer,
            n_iters=n_iters,
            voxel_thresh=voxel_thresh,
            low_memory=low_memory,
            vfwe_only=vfwe_only,
            restrict_to_inference_mask=restrict_to_inference_mask,
            memory=memory,
            memory_level=memory_level,
            n_cores=n_cores,
            random_state=random_state,
            **kwargs,
        )
        self.device = device
        self.scheduler = scheduler
        self._gpuale_pooled = None
        self._gpuale_engine = None

    _engine = ALE._engine
    __getstate__ = ALE.__getstate__
    __deepcopy__ = ALE.__deepcopy__

    def _fit_reason(self) -> str | None:
        if (self.inputs_.get("inference_map1") is not None
                or self.inputs_.get("inference_map2") is not None):
            return "inference maps were given (gpuale's subtraction tests every voxel)"
        if (self.inputs_.get("ma_maps1") is not None
                or self.inputs_.get("ma_maps2") is not None):
            return "precomputed MA maps were given (gpuale computes them from the foci)"
        return _kernel_reason(self.kernel_transformer)

    def _fit(self, dataset1, dataset2):
        reason = self._fit_reason()
        if reason:
            self._gpuale_pooled = None
            _fallback(self, "fit", reason)
            return super()._fit(dataset1, dataset2)
        self.dataset1 = dataset1
        self.dataset2 = dataset2
        self.masker = self.masker or dataset1.masker
        self.null_distributions_ = {}
        grid = _grid_of(self.masker)
        kernel = self.kernel_transformer
        first = _problem_of(self.inputs_["coordinates1"], kernel, grid)
        second = _problem_of(self.inputs_["coordinates2"], kernel, grid)
        engine = self._engine()
        ale1, maps1 = _group_maps(engine, first, "group1")
        ale2, maps2 = _group_maps(engine, second, "group2")
        self._gpuale_pooled = (_pooled(first, second), first.n_experiments)
        diff = ale1.astype(FLOAT) - ale2.astype(FLOAT)
        p, sign = self._gpuale_null(self.n_iters, self.voxel_thresh, self.vfwe_only,
                                    self.n_cores, tails=True)
        maps = {
            "stat_desc-group1MinusGroup2": diff,
            "p_desc-group1MinusGroup2": p,
            "z_desc-group1MinusGroup2": nimare_p_to_z(p, tail="two") * sign,
            "logp_desc-group1MinusGroup2": _p_to_logp_values(p, dtype=FLOAT),
        }
        maps.update(maps1)
        maps.update(maps2)
        return maps, {}, self._description_text()

    def _gpuale_null(self, n_iters, voxel_thresh, vfwe_only, n_cores, tails=False):
        """Run the splits on gpuale's engine into ``null_distributions_`` (NiMARE's keys);
        with ``tails``, the two-sided p and the sign of every in-mask voxel."""
        pooled, n_first = self._gpuale_pooled
        grid = pooled.grid
        engine = self._engine()
        support, log_maps = engine.experiment_log_maps(pooled)
        seed = _seed_of(self.random_state)
        n_iters = int(n_iters)
        workers = _check_ncores(n_cores)
        if vfwe_only:
            null = run_null(ContrastNullSpec(log_maps, n_first), engine, seed=seed,
                            n_iters=n_iters, scheduler=self.scheduler, n_workers=workers)
        else:
            spec = ContrastNullSpec(log_maps, n_first, voxel_flat=grid.in_mask_flat[support],
                                    shape=tuple(int(n) for n in grid.shape), connectivity=6)
            null = contrast_cluster_null(spec, engine, seed=seed, n_iters=n_iters,
                                         voxel_thresh=float(voxel_thresh),
                                         n_mask_voxels=grid.n_voxels,
                                         scheduler=self.scheduler, n_workers=workers)
        nulls = self.null_distributions_
        nulls["values_level-voxel_corr-fwe_method-montecarlo"] = null.max_abs.astype(FLOAT)
        if not vfwe_only:
            nulls["summary_stat_thresh_level-voxel_corr-fwe_method-montecarlo"] = float(
                null.cluster_forming_abs_difference)
            nulls["values_desc-size_level-cluster_corr-fwe_method-montecarlo"] = (
                null.max_cluster_size.astype(FLOAT))
            nulls["values_desc-mass_level-cluster_corr-fwe_method-montecarlo"] = (
                null.max_cluster_mass.astype(FLOAT))
        if not tails:
            return None
        # Voxels no experiment reaches differ by 0 in every split: upper = lower = n.
        upper = np.full(grid.n_voxels, n_iters, dtype=np.int64)
        lower = upper.copy()
        upper[support] = null.upper
        lower[support] = null.lower
        #: Per in-mask voxel, the splits whose difference equals the observed one exactly
        #: (counted in both tails; NiMARE's float comparisons break such ties one way).
        self.gpuale_ties_ = upper + lower - n_iters
        return self._finalize_alediff_tail_counts(upper, lower, n_iters)

    def _generate_description(self):
        text = super()._generate_description()
        if getattr(self, "_gpuale_pooled", None) is not None:
            text += _credit(self._gpuale_device, self._engine())
        return text

    def correct_fwe_montecarlo(self, result, voxel_thresh=0.001, n_iters=None, n_cores=1,
                               vfwe_only=False, target="pairwise"):
        """NiMARE's Monte Carlo FWE correction of the subtraction, with the splits on
        gpuale's engine where the fit's nulls do not already answer it (see
        :meth:`nimare.meta.cbma.ale.ALESubtraction.correct_fwe_montecarlo`)."""
        if getattr(self, "_gpuale_pooled", None) is None or target != "pairwise":
            _fallback(self, "Monte Carlo FWE correction",
                      f"target={target!r} (gpuale corrects the pairwise difference)"
                      if target != "pairwise" else "the estimator was fitted by NiMARE's code")
            return super().correct_fwe_montecarlo(result, voxel_thresh=voxel_thresh,
                                                  n_iters=n_iters, n_cores=n_cores,
                                                  vfwe_only=vfwe_only, target=target)
        n_iters = self.n_iters if n_iters is None else n_iters
        voxel_thresh = self.voxel_thresh if voxel_thresh is None else voxel_thresh
        fitted = (self.n_iters, self.voxel_thresh, self.vfwe_only)
        nulls = self.null_distributions_
        cached = (n_iters, voxel_thresh) == fitted[:2] and (vfwe_only or (
            "values_desc-size_level-cluster_corr-fwe_method-montecarlo" in nulls))
        if not cached:
            self._gpuale_null(n_iters, voxel_thresh, vfwe_only, n_cores)
        # NiMARE's own code turns the nulls into maps, as it would from its cached nulls.
        self.n_iters, self.voxel_thresh, self.vfwe_only = n_iters, voxel_thresh, vfwe_only
        try:
            maps, tables, description = super().correct_fwe_montecarlo(
                result, voxel_thresh=voxel_thresh, n_iters=n_iters, n_cores=n_cores,
                vfwe_only=vfwe_only, target=target)
        finally:
            self.n_iters, self.voxel_thresh, self.vfwe_only = fitted
        description += (f" The {n_iters} random splits ran on gpuale {__version__} "
                        f"({self._engine().describe()}).")
        return maps, tables, description


class SCALE(_nimare_ale.SCALE):
    """NiMARE's SCALE on gpuale's engines (``isinstance(est, nimare.meta.cbma.ale.SCALE)``).

    Specific coactivation likelihood estimation (Langner et al. 2014) as NiMARE 0.22.1
    defines it: in each permutation every focus takes the position of a focus drawn
    uniformly from the reference pool ``xyz`` (NiMARE's ``mm2vox``, not clamped); a
    voxel's p is its exceedance count over the permutations, clipped to [1/n, 1 - 1/n],
    with one-sided z. The permutations run on a gpuale engine
    (:class:`gpuale.nullspecs.ScaleNullSpec`), their draws depending only on the seed, the
    permutation and the focus, so every engine, thread count and Dask split gives the
    same counts. ``fit`` returns NiMARE's ``stat``, ``logp`` and ``z``;
    ``correct_fwe_montecarlo`` (voxel-level only, as NiMARE's) returns
    ``logp_level-voxel`` and ``z_level-voxel`` from each permutation's largest ALE, the
    fit's own maxima where ``n_iters`` is the fit's (NiMARE draws the same permutations
    again from the same seed).

    Parameters
    ----------
    xyz, n_iters, n_cores, kernel_transformer, memory, memory_level, random_state, **kwargs
        As NiMARE's :class:`nimare.meta.cbma.ale.SCALE` (``kernel__sample_size``,
        ``kernel__fwhm``). ``random_state`` seeds gpuale's generator (Philox), so the
        permutations are other draws than NiMARE's: the p agree within Monte Carlo error.
        Another kernel than ``ALEKernel``, or precomputed MA maps, run NiMARE's own code,
        with a :class:`NiMAREFallbackWarning`.
    device, scheduler
        As :class:`ALE`.
    """

    def __init__(
        self,
        xyz,
        n_iters=5000,
        n_cores=1,
        kernel_transformer=ALEKernel,
        memory=Memory(location=None, verbose=0),  # noqa: B008 - NiMARE's default
        memory_level=0,
        random_state=None,
        device="auto",
        scheduler=None,
        **kwargs,
    ):
        super().__init__(
            xyz=xyz,
            n_iters=n_iters,
            n_cores=n_cores,
            kernel_transformer=kernel_transformer,
            memory=memory,
            memory_level=memory_level,
            random_state=random_state,
            **kwargs,
        )
        self.device = device
        self.scheduler = scheduler
        self._gpuale_problem = None
        self._gpuale_engine = None

    _engine = ALE._engine
    __getstate__ = ALE.__getstate__
    __deepcopy__ = ALE.__deepcopy__

    def _fit_reason(self) -> str | None:
        if self.inputs_.get("ma_maps") is not None:
            return "precomputed MA maps were given (gpuale computes them from the foci)"
        return _kernel_reason(self.kernel_transformer)

    def _scale_null(self, n_iters, n_cores):
        spec = ScaleNullSpec(self._gpuale_problem, self._gpuale_pool)
        return run_null(spec, self._engine(), seed=self._gpuale_seed, n_iters=int(n_iters),
                        scheduler=self.scheduler, n_workers=_check_ncores(n_cores))

    def _fit(self, dataset):
        reason = self._fit_reason()
        if reason:
            self._gpuale_problem = None
            _fallback(self, "fit", reason)
            return super()._fit(dataset)
        self.dataset = dataset
        self.masker = self.masker or dataset.masker
        self.null_distributions_ = {}
        grid = _grid_of(self.masker)
        self._gpuale_problem = _problem_of(self.inputs_["coordinates"],
                                           self.kernel_transformer, grid)
        self._gpuale_pool = mm2vox(self.xyz, self.masker.mask_img.affine).astype(np.int32)
        self._gpuale_seed = _seed_of(self.random_state)
        stat = self._engine().observed_ale(self._gpuale_problem).ale.astype(FLOAT)
        null = self._scale_null(self.n_iters, self.n_cores)
        self._gpuale_max = null.max_ale.astype(FLOAT)
        # NiMARE's _scale_to_p: float32 counts / n, clipped to [1/n, 1 - 1/n].
        smallest = 1.0 / self.n_iters
        p = np.maximum(smallest, np.minimum(null.counts.astype(FLOAT) / self.n_iters,
                                            1.0 - smallest)).astype(FLOAT)
        maps = {"stat": stat, "logp": _p_to_logp_values(p, dtype=FLOAT),
                "z": nimare_p_to_z(p, tail="one")}
        return maps, {}, self._description_text()

    def _generate_description(self):
        text = super()._generate_description()
        if getattr(self, "_gpuale_problem", None) is not None:
            text += _credit(self._gpuale_device, self._engine()).replace(
                "its Monte Carlo permutations", "its SCALE permutations")
        return text

    def correct_fwe_montecarlo(self, result, voxel_thresh=None, n_iters=5000, n_cores=1,
                               vfwe_only=True):
        """NiMARE's voxel-level Monte Carlo FWE correction of SCALE, on gpuale's engine.

        Each permutation's largest ALE under SCALE's null (the fit's, where ``n_iters`` is
        the fit's: the same seed draws the same permutations); see
        :meth:`nimare.meta.cbma.ale.SCALE.correct_fwe_montecarlo`.

        Raises
        ------
        NotImplementedError
            For ``vfwe_only=False``, as NiMARE's SCALE: voxel-specific nulls give no single
            null for cluster sizes.
        """
        if not vfwe_only:
            raise NotImplementedError(
                "SCALE only supports voxel-level Monte Carlo FWE correction. "
                "Cluster-level FWE is not implemented.")
        if getattr(self, "_gpuale_problem", None) is None:
            _fallback(self, "Monte Carlo FWE correction", "the estimator was fitted by "
                      "NiMARE's code")
            return super().correct_fwe_montecarlo(result, voxel_thresh=voxel_thresh,
                                                  n_iters=n_iters, n_cores=n_cores,
                                                  vfwe_only=vfwe_only)
        if voxel_thresh is not None:
            _LGR.warning("Ignoring voxel_thresh for SCALE Monte Carlo FWE correction; "
                         "only voxel-level max-stat inference is supported.")
        stat = result.get_map("stat", return_type="array")
        if int(n_iters) == int(self.n_iters):
            maxima = self._gpuale_max
        else:
            maxima = self._scale_null(n_iters, n_cores).max_ale.astype(FLOAT)
        p_fwe = null_to_p(stat, maxima, tail="upper")
        self.null_distributions_["values_level-voxel_corr-fwe_method-montecarlo"] = maxima
        maps = {"logp_level-voxel": _p_to_logp_values(p_fwe, dtype=FLOAT),
                "z_level-voxel": nimare_p_to_z(p_fwe, tail="one")}
        description = (
            "Family-wise error correction was performed for SCALE using a voxel-level Monte "
            "Carlo max-statistic procedure. In this procedure, null datasets are generated "
            "by replacing dataset coordinates with coordinates randomly sampled from the "
            "SCALE reference coordinate pool, and the maximum ALE summary statistic is "
            f"retained. This procedure was repeated {n_iters} times to build a voxel-level "
            "FWE null distribution. Cluster-level Monte Carlo FWE correction is not "
            f"implemented for SCALE. The {n_iters} permutations ran on gpuale "
            f"{__version__} ({self._engine().describe()}; pool draws from gpuale's "
            "counter-based generator, Philox).")
        return maps, {}, description
