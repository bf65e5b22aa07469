"""Null models (docs/statistics.md §4): exact values, Monte Carlo Gaussian and entry-shuffle nulls, z-scores.

Exact nulls are computed in float64 numpy from the shapes alone:
- `expected_abs_cos(d) = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2))`, the mean of `|<x, y>|` for
  independent uniform unit vectors in `R^d` (about `sqrt(2 / (pi d))`, i.e. ~0.8 / sqrt(d); the
  source's `1/sqrt(d)` is the RMS, not the mean). Singular vectors of a Gaussian matrix are
  uniform (Haar), so this is the exact null of `metrics.mean_abs_cos`.
- `grassmann_chance(k, d) = k / d`, the mean of `metrics.grassmann` for independent uniform
  k-dimensional subspaces of `R^d`.

Monte Carlo nulls evaluate a statistic function on random stand-ins for the real matrices:
`gaussian_null` draws i.i.d. Gaussian matrices of the same shapes (and, by default, the same
per-matrix RMS), `gaussian_spectrum_null` draws only their singular values (exactly in law, via
chi-distributed bidiagonals in O(k^2), for statistics of spectra; `spectral.bidiagonal`),
`shuffle_null` permutes the entries of each real matrix (dense SVDs: it is not Gaussian). Every
(layer, head) matrix gets its own draws; the Gaussian nulls run all heads and all draws inside one
jit-compiled call (`jax.lax.map` over draws, `batch_size` draws at a time to bound memory), the
shuffle null one draw per call of the statistic's own programs. The result is a
`NullSummary` of per-statistic mean, std and the draws themselves, from which `zscore`,
`percentile` and `null_columns` derive table columns. `gaussian_spectrum_draws` and
`null_from_draws` split the spectrum null in two, so several statistics of the same matrices
share one set of draws.

The draws depend only on the key and `num_draws`, not on `batch_size`.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jax.typing import ArrayLike, DTypeLike

from spectrax.backend import jit
from spectrax.spectral._util import ArrayTree, ShapeError, as_float, float_dtype
from spectrax.spectral.bidiagonal import bidiagonal_singular_values, chi_bidiagonal, chi_variates

__all__ = [
    "NullSummary",
    "StaticFn",
    "abs_cos_std",
    "bartlett_factor",
    "cos_null",
    "effect_sizes",
    "expected_abs_cos",
    "gaussian_null",
    "gaussian_singular_values",
    "gaussian_spectrum_draws",
    "gaussian_spectrum_null",
    "grassmann_chance",
    "grassmann_null",
    "RESOLVED_BOUND",
    "mean_null_std",
    "monte_carlo_error",
    "null_columns",
    "null_z",
    "no_draws_null",
    "null_from_draws",
    "percentile",
    "pool_null",
    "resolved",
    "shuffle_entries",
    "shuffle_null",
    "split_null",
    "summarize_draws",
    "unit_rms",
    "zscore",
]


class NullSummary(NamedTuple):
    """A statistic's null distribution; each field has the statistic's pytree structure.

    mean: null mean. std: null standard deviation (sample std, ddof=1, for Monte Carlo).
    draws: `(num_draws, ...)` per leaf for Monte Carlo nulls, `None` for exact ones.
    """

    mean: Any
    std: Any
    draws: Any = None


# ----------------------------------------------------------------------------- exact nulls


def _lgamma(x):
    return np.vectorize(math.lgamma, otypes=[np.float64])(x)


def expected_abs_cos(d: npt.ArrayLike) -> np.ndarray:
    """`E|<x, y>|` for independent uniform unit vectors in `R^d`, float64, via log-gamma."""
    d = np.asarray(d, np.float64)
    if np.any(d < 1):
        raise ValueError("dimension must be >= 1")
    return np.exp(_lgamma(d / 2.0) - _lgamma((d + 1.0) / 2.0)) / math.sqrt(math.pi)


def abs_cos_std(d: npt.ArrayLike) -> np.ndarray:
    """Std of `|<x, y>|` for independent uniform unit vectors in `R^d` (`E<x,y>^2 = 1/d`)."""
    d = np.asarray(d, np.float64)
    return np.sqrt(np.maximum(1.0 / d - expected_abs_cos(d) ** 2, 0.0))


def cos_null(d: int, num_vectors: int) -> NullSummary:
    """Null of `metrics.mean_abs_cos` over `num_vectors` index-matched pairs in `R^d`.

    The mean is exact; the std treats the pairs as independent, `abs_cos_std(d) / sqrt(k)`
    (the diagonal of a Haar-random orthogonal matrix is only weakly dependent; checked against
    Monte Carlo in the tests).
    """
    mean = expected_abs_cos(d)
    return NullSummary(mean=mean, std=abs_cos_std(d) / math.sqrt(num_vectors))


def grassmann_chance(k: npt.ArrayLike, d: npt.ArrayLike) -> np.ndarray:
    """`k / d`: mean of `metrics.grassmann` for independent uniform k-subspaces of `R^d`."""
    return np.asarray(k, np.float64) / np.asarray(d, np.float64)


def grassmann_null(k: int, d: int) -> NullSummary:
    """Exact null of `metrics.grassmann` for two independent uniform k-subspaces of `R^d`.

    mean `k/d`; variance of `tr(P_A P_B) / k` is `2 (d - k)^2 / (d^2 (d - 1) (d + 2))`.
    """
    if not 0 < k <= d:
        raise ValueError(f"need 0 < k <= d, got k={k}, d={d}")
    var = 2.0 * (d - k) ** 2 / (d * d * (d - 1.0) * (d + 2.0)) if d > 1 else 0.0
    return NullSummary(mean=grassmann_chance(k, d), std=np.sqrt(np.float64(var)))


# ----------------------------------------------------------------------------- Monte Carlo


class StaticFn:
    """A statistic function as a jit static argument, equal by content for `functools.partial`.

    So `gaussian_null(key, functools.partial(f, k=8), ...)` built afresh for every layer reuses
    one compiled kernel instead of retracing per layer.
    """

    def __init__(self, fn):
        self.fn = fn
        if isinstance(fn, functools.partial):
            key = (fn.func, fn.args, tuple(sorted(fn.keywords.items())))
            try:
                hash(key)
            except TypeError:
                key = fn
        else:
            key = fn
        self.key = key

    def __call__(self, *args):
        return self.fn(*args)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, StaticFn) and self.key == other.key


def summarize_draws(draws: ArrayTree) -> NullSummary:
    """`NullSummary` of Monte Carlo draws: a pytree of `(num_draws, ...)` arrays -> mean and
    sample std (ddof 1) over the draws, and the draws."""
    mean = jax.tree.map(lambda d: jnp.mean(d, axis=0), draws)
    std = jax.tree.map(lambda d: jnp.std(d, axis=0, ddof=1), draws)
    return NullSummary(mean, std, draws)


def no_draws_null(stat_fn: Callable[..., Any], *structs: ArrayLike | jax.ShapeDtypeStruct) -> NullSummary:
    """The null of `stat_fn` when no Monte Carlo draw is asked for (`num_draws=0`): NaN mean and std
    and zero draws, shaped like `stat_fn`'s output on arrays shaped like `structs` (arrays or
    `jax.ShapeDtypeStruct`s, without the draw axis). Traced for shapes only: nothing is compiled."""
    out = jax.eval_shape(stat_fn, *[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in structs])
    nan = jax.tree.map(lambda o: np.full(o.shape, np.nan, o.dtype), out)
    return NullSummary(nan, nan, jax.tree.map(lambda o: np.zeros((0,) + o.shape, o.dtype), out))


def _check_draws(num_draws, batch_size):
    if num_draws == 1 or num_draws < 0:
        raise ValueError(f"num_draws must be 0 (no Monte Carlo null) or >= 2 for a null std, got {num_draws}")
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size must be >= 1 or None (all draws at once)")


def _rms(x):
    return jnp.sqrt(jnp.mean(x * x, axis=(-2, -1), keepdims=True))


# Below this k, a (k, k) Bartlett factor and LAPACK's SVD: compiles in a fraction of the
# bidiagonal bisection's time and runs in milliseconds anyway; above it the O(k^2) bisection wins
# by 10-130x per draw (benchmarks/RESULTS.md). Both are exact in law.
BISECTION_FROM_K = 384


def gaussian_singular_values(key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike = jnp.float32,
                             method: str | None = None) -> jax.Array:
    """Singular values of i.i.d. N(0, 1) matrices of `shape (..., m, n)`, exactly in law, cheaply.

    With `k = min(m, n)`, `N = max(m, n)`: for `k >= BISECTION_FROM_K`, Golub-Kahan /
    Dumitriu-Edelman: the law of the singular values of a `(k, k)` bidiagonal with independent chi
    entries (`bidiagonal.gaussian_bidiagonal`), found by bisection in O(k^2)
    (`bidiagonal.bidiagonal_singular_values`), no dense SVD. Below, the Bartlett decomposition: the
    triangular QR factor of an `(N, k)` Gaussian matrix has independent entries,
    `R_ii = sqrt(chi2(N - i))` and `R_ij ~ N(0, 1)` above the diagonal, and a `(k, k)` SVD of it.
    `method` (`"bisection"` or `"bartlett"`) forces one. Returns `(..., k)` descending, in `dtype`
    (float32 where float64 is unavailable, with a `Float64Unavailable` warning). `N` enters only as
    degrees of freedom, so one program serves every `N` with the same batch and `k`.
    """
    *batch, m, n = shape
    dtype = float_dtype(dtype, "Gaussian singular values")
    if method not in (None, "bisection", "bartlett"):
        raise ValueError(f"method must be 'bisection' or 'bartlett', got {method!r}")
    return _gaussian_spectra(key, np.int32(max(m, n)), batch=tuple(batch), k=min(m, n), dtype=dtype, method=method)


def _spectra_work(a):
    return math.prod(a["batch"]) * a["k"] ** 2


@functools.partial(jit, static_argnames=("batch", "k", "dtype", "method"), work=_spectra_work)
def _gaussian_spectra(key, big, batch, k, dtype, method):
    return _draw_spectra(key, big, batch, k, dtype, method)


def _draw_spectra(key, big, batch: tuple[int, ...], k: int, dtype, method):
    """`gaussian_singular_values` of `(*batch, k, big)` matrices, `big` a (possibly traced) int."""
    if method == "bisection" or (method is None and k >= BISECTION_FROM_K):
        diag_dof, off_dof = big - jnp.arange(k), k - 1 - np.arange(k - 1)
        return bidiagonal_singular_values(*chi_bidiagonal(key, diag_dof, off_dof, batch, dtype))
    return jnp.linalg.svd(_bartlett(key, big, batch, k, dtype), full_matrices=False, compute_uv=False)


def bartlett_factor(key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike = jnp.float32) -> jax.Array:
    """The triangular factor `R (..., k, k)` of the thin QR of i.i.d. N(0, 1) matrices of
    `shape (..., m, n)`, drawn directly (Bartlett decomposition): independent entries
    `R_ii = chi_{N - i}` and `R_ij ~ N(0, 1)` above the diagonal, `k = min(m, n)`, `N = max(m, n)`.
    `R` has the singular values of the matrix, and `R^T R` its Gram matrix in law."""
    *batch, m, n = shape
    return _bartlett(key, max(m, n), tuple(batch), min(m, n), float_dtype(dtype, "a Bartlett factor"))


def _bartlett(key, big, batch: tuple[int, ...], k: int, dtype) -> jax.Array:
    kd, ko = jax.random.split(key)
    diag = chi_variates(kd, big - jnp.arange(k), batch, dtype)
    upper = jnp.triu(jax.random.normal(ko, batch + (k, k), dtype), 1)
    return upper + diag[..., None] * jnp.eye(k, dtype=dtype)


def _scaled(g, scale):
    """A standard draw `g (..., *core)` at its template's RMS `scale (..., 1, 1)` (None: unit variance)."""
    if scale is None:
        return g
    return g * scale.reshape(scale.shape[:-2] + (1,) * (g.ndim - scale.ndim + 2))


def _draws_work(a):
    return a["num_draws"] * sum(math.prod(shape) for shape in a["shapes"])


def _spectrum_draws_work(a):
    return a["num_draws"] * sum(math.prod(batch) * k**2 for batch, k in a["cores"])


def _mapped_draws(key, refs, shapes, dtypes, num_draws, batch_size, sample, then):
    """`then(*draws)` for `num_draws` keys, one scaled `sample(key, shape, dtype)` per template,
    `batch_size` keys at a time (`jax.lax.map`)."""
    scales = [None if r is None else _rms(as_float(r).astype(d)) for r, d in zip(refs, dtypes)]

    def draw(k):
        ks = jax.random.split(k, len(shapes))
        return then(*[_scaled(sample(ki, shape, dtype), scale)
                      for ki, shape, dtype, scale in zip(ks, shapes, dtypes, scales)])

    return jax.lax.map(draw, jax.random.split(key, num_draws), batch_size=batch_size or num_draws)


@functools.partial(jit, static_argnames=("stat_fn", "shapes", "dtypes", "num_draws", "batch_size"), work=_draws_work)
def _gaussian_null(key, refs, stat_fn, shapes, dtypes, num_draws, batch_size):
    return summarize_draws(_mapped_draws(key, refs, shapes, dtypes, num_draws, batch_size, jax.random.normal, stat_fn))


@functools.partial(jit, static_argnames=("cores", "dtypes", "num_draws", "batch_size"), work=_spectrum_draws_work)
def _spectrum_draws(key, refs, bigs, cores, dtypes, num_draws, batch_size):
    """Per template `(batch, k)` in `cores`, `num_draws` spectra of Gaussian `(*batch, k, big)`
    matrices at the template's RMS: keyed by `k`, not the larger side `bigs` (traced)."""
    def sample(key, big_core, dtype):
        big, (batch, k) = big_core
        return _draw_spectra(key, big, batch, k, dtype, None)

    return _mapped_draws(key, refs, tuple(zip(bigs, cores)), dtypes, num_draws, batch_size, sample,
                         lambda *spectra: spectra)


@functools.partial(jit, static_argnames=("stat_fn", "batch_size"))
def _null_of_draws(draws, stat_fn, batch_size):
    return summarize_draws(jax.lax.map(lambda d: stat_fn(*d), draws, batch_size=batch_size or draws[0].shape[0]))


def gaussian_null(
    key: jax.Array,
    stat_fn: Callable[..., Any],
    *templates: ArrayLike | jax.ShapeDtypeStruct,
    num_draws: int = 32,
    batch_size: int | None = 1,
    match_scale: bool = True,
) -> NullSummary:
    """Monte Carlo null of `stat_fn` over shape-matched i.i.d. Gaussian matrices.

    Args:
      key: PRNG key (`jax.random.key` or a legacy uint32 key).
      stat_fn: `stat_fn(*matrices) -> pytree of arrays`, batched over leading axes, e.g.
        `pairs.gqa_pair_statistics`. Use a module-level function or a `functools.partial` of one
        (both compile once); a fresh lambda per call recompiles per call.
      *templates: one per `stat_fn` argument: the real arrays `(..., m, n)` (e.g.
        `q (layers, H, D, E)`, `k (layers, KV, D, E)`) or `jax.ShapeDtypeStruct`s. Every matrix
        gets its own independent draws, so a K head's draw is shared by its query heads exactly as
        the real W_K is.
      num_draws: Monte Carlo draws (>= 2), or 0 for none (`no_draws_null`: NaN mean and std).
      batch_size: draws evaluated at once (`jax.lax.map`); memory grows with it. `None`: all.
      match_scale: scale each drawn matrix to the RMS of its real counterpart (needed for
        scale-dependent statistics such as `sigma_max`); unit variance for `ShapeDtypeStruct`s or
        when False.

    Returns:
      `NullSummary(mean, std, draws)` with `stat_fn`'s output structure; `draws` leaves are
      `(num_draws, ...)`.
    """
    _check_draws(num_draws, batch_size)
    refs, shapes, dtypes = _templates(templates, match_scale)
    if num_draws == 0:
        return no_draws_null(stat_fn, *[jax.ShapeDtypeStruct(sh, dt) for sh, dt in zip(shapes, dtypes)])
    return _gaussian_null(key, refs, stat_fn=StaticFn(stat_fn), shapes=shapes, dtypes=dtypes,
                          num_draws=num_draws, batch_size=batch_size)


def gaussian_spectrum_null(
    key: jax.Array,
    stat_fn: Callable[..., Any],
    *templates: ArrayLike | jax.ShapeDtypeStruct,
    num_draws: int = 32,
    batch_size: int | None = 1,
    match_scale: bool = True,
) -> NullSummary:
    """Monte Carlo null of a statistic of singular values only, without drawing whole matrices.

    Like `gaussian_null`, but `stat_fn(*spectra)` receives, for each template `(..., m, n)`, the
    singular values `(..., min(m, n))` of an independent shape-matched Gaussian matrix, drawn
    exactly in law by `gaussian_singular_values` (a chi bidiagonal): for a `(128, 5120)` head that
    is 255 random numbers instead of 655360 and no SVD, so a draw costs far less than a real pass;
    for a whole `(13824, 5120)` matrix O(k^2) work instead of a dense O(m n k) SVD. Use it for
    Pearson, SSR, alpha, sigma_max, condition number, effective rank, max/mean, stable rank, and
    MP/KS statistics; statistics of singular vectors need `gaussian_null`. Equal to
    `null_from_draws(stat_fn, *gaussian_spectrum_draws(key, *templates, ...))`; several statistics
    of the same matrices can share one set of draws that way.

    Args:
      key: as in `gaussian_null`.
      stat_fn: `stat_fn(*spectra) -> pytree of arrays`, batched over leading axes (e.g.
        `metrics.stable_rank`); module-level or a `functools.partial`, as in `gaussian_null`.
      *templates: as in `gaussian_null`: arrays `(..., m, n)` or `jax.ShapeDtypeStruct`s.
      num_draws: Monte Carlo draws (>= 2), or 0 for none (`no_draws_null`: NaN mean and std).
      batch_size: draws evaluated at once; `None`: all.
      match_scale: as in `gaussian_null`.

    Returns:
      `NullSummary(mean, std, draws)` with `stat_fn`'s output structure; `draws` leaves are
      `(num_draws, ...)`.

    Examples:
        >>> import jax
        >>> import spectrax as sx
        >>> from spectrax.spectral import gaussian_spectrum_null, singular_values, stable_rank, zscore
        >>> q = sx.load(sx.data.TINY_LLAMA).layer(0)["attn"]["q"]    # (H, D, E) = (4, 16, 64)
        >>> null = gaussian_spectrum_null(jax.random.key(0), stable_rank, q, num_draws=8)
        >>> null.mean.shape, null.draws.shape    # per head, and per draw and head
        ((4,), (8, 4))
        >>> z = zscore(stable_rank(singular_values(q)), null)   # trained heads against shape-matched noise
        >>> bool((z < -2).all())                 # every trained head is far more low-rank than noise
        True
    """
    draws = gaussian_spectrum_draws(key, *templates, num_draws=num_draws, batch_size=batch_size,
                                    match_scale=match_scale)
    return null_from_draws(stat_fn, *draws, batch_size=batch_size)


def gaussian_spectrum_draws(
    key: jax.Array,
    *templates: ArrayLike | jax.ShapeDtypeStruct,
    num_draws: int = 32,
    batch_size: int | None = 1,
    match_scale: bool = True,
) -> tuple[jax.Array, ...]:
    """Singular values of `num_draws` independent shape-matched Gaussian stand-ins per template.

    Args:
      key: PRNG key, as in `gaussian_null`.
      *templates: real arrays `(..., m, n)` or `jax.ShapeDtypeStruct`s; every matrix gets its own
        draws.
      num_draws: as in `gaussian_null`.
      batch_size: draws generated at once (each holds `(..., k)` bidiagonals and bisection brackets).
      match_scale: as in `gaussian_null`.

    Returns:
      one `(num_draws, ..., min(m, n))` array per template, descending along the last axis.
    """
    _check_draws(num_draws, batch_size)
    refs, shapes, dtypes = _templates(templates, match_scale)
    if num_draws == 0:
        return tuple(np.zeros((0, *sh[:-2], min(sh[-2:])), float_dtype(dt, "Gaussian singular values"))
                     for sh, dt in zip(shapes, dtypes))
    bigs = tuple(np.int32(max(sh[-2:])) for sh in shapes)
    cores = tuple((tuple(sh[:-2]), min(sh[-2:])) for sh in shapes)
    dtypes = tuple(float_dtype(dt, "Gaussian singular values") for dt in dtypes)
    return _spectrum_draws(key, refs, bigs, cores=cores, dtypes=dtypes, num_draws=num_draws, batch_size=batch_size)


def null_from_draws(stat_fn: Callable[..., Any], *draws: ArrayLike, batch_size: int | None = None) -> NullSummary:
    """`NullSummary` of `stat_fn` evaluated on each draw: `draws` are `(num_draws, ...)` arrays, one
    per `stat_fn` argument (e.g. from `gaussian_spectrum_draws`); `batch_size` draws at a time."""
    _check_draws(draws[0].shape[0], batch_size)
    if draws[0].shape[0] == 0:
        return no_draws_null(stat_fn, *[jax.ShapeDtypeStruct(d.shape[1:], d.dtype) for d in draws])
    return _null_of_draws(tuple(draws), stat_fn=StaticFn(stat_fn), batch_size=batch_size)


def _templates(templates, match_scale):
    """(refs, shapes, dtypes) of Monte Carlo templates; a ref is the real array whose RMS a draw
    takes, None for `ShapeDtypeStruct`s or without `match_scale`."""
    shapes, dtypes, refs = [], [], []
    for t in templates:
        if not isinstance(t, jax.ShapeDtypeStruct):
            t = jnp.asarray(t)
        dtype = as_float(jnp.zeros((), t.dtype)).dtype
        if len(t.shape) < 2:
            raise ShapeError(f"templates must be (..., m, n) matrices, got shape {t.shape}")
        shapes.append(tuple(t.shape))
        dtypes.append(np.dtype(dtype))
        real = match_scale and not isinstance(t, jax.ShapeDtypeStruct)
        refs.append(t if real else None)
    return tuple(refs), tuple(shapes), tuple(dtypes)


@jit
def shuffle_entries(key: jax.Array, x: ArrayLike) -> jax.Array:
    """Permutes the entries of each `(m, n)` matrix of `x (..., m, n)` independently.

    One sort by 64 random bits per entry (two uint32 keys): a uniform permutation up to ties, which
    among even 10^8 entries occur with probability below 3e-4 (and then keep two entries' order).
    `jax.random.permutation` sorts by 32 bits in as many rounds as it takes to make ties unlikely, three
    for a 30522 x 384 embedding: 2.5x slower on a CPU, where XLA's sort is most of a shuffle's cost.
    """
    flat = x.reshape(x.shape[:-2] + (-1,))
    high, low = jax.random.bits(key, (2, *flat.shape), jnp.uint32)
    return jax.lax.sort((high, low, flat), dimension=-1, num_keys=2)[-1].reshape(x.shape)


def shuffle_null(
    key: jax.Array,
    stat_fn: Callable[..., Any],
    *arrays: ArrayLike,
    num_draws: int = 32,
) -> NullSummary:
    """Monte Carlo null of `stat_fn` over entry-shuffled copies of the real matrices.

    Each `(m, n)` matrix of each array `(..., m, n)` has its entries permuted independently per
    draw: the entry distribution is kept, the structure destroyed. Each draw is one call of
    `stat_fn` on arrays shaped like the real ones, one draw at a time: a jitted `stat_fn` (or one
    built of jitted kernels) runs the very programs that compute the real statistic, so the null
    compiles only the shuffle. Arguments as in `gaussian_null`; the draws depend only on `key`.
    """
    _check_draws(num_draws, None)
    arrays = tuple(as_float(a) for a in arrays)
    for a in arrays:
        if a.ndim < 2:
            raise ShapeError(f"arrays must be (..., m, n) matrices, got shape {a.shape}")
    if num_draws == 0:
        return no_draws_null(stat_fn, *arrays)
    draws = []
    for k in jax.random.split(key, num_draws):
        keys = jax.random.split(k, len(arrays))
        draws.append(stat_fn(*[shuffle_entries(ki, a) for ki, a in zip(keys, arrays)]))
    return summarize_draws(jax.tree.map(lambda *d: jnp.stack(d), *draws))


# ----------------------------------------------------------------------------- comparisons


def _z(obs, mean, std, mean_se=None):
    xp = _array_module(obs, mean, std, mean_se)
    obs = xp.asarray(obs)
    mean = xp.asarray(mean, obs.dtype)
    std = xp.asarray(std, obs.dtype)
    ok = std > 0
    spread = xp.where(ok, std, 1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        if mean_se is not None:  # std * sqrt(1 + (se / std)^2): no underflow of std^2 for tiny nulls
            ratio = xp.asarray(mean_se, obs.dtype) / spread
            spread = spread * xp.sqrt(1 + xp.where(xp.isfinite(ratio), ratio, 0.0) ** 2)
        return xp.where(ok, (obs - mean) / spread, np.nan).astype(obs.dtype)


def null_z(observed: ArrayLike, mean: ArrayLike, std: ArrayLike, mean_se: ArrayLike | None = None) -> Any:
    """The z of `observed` against a null of mean `mean` and std `std` whose mean is itself estimated,
    with Monte Carlo standard error `mean_se` (None or 0 for an exact mean):
    `(observed - mean) / sqrt(std^2 + mean_se^2)`, NaN where `std` is not positive.

    Under the null the observation is one more draw, independent of the N draws behind the mean, so
    `Var(observed - mean) = std^2 + std^2 / N`: dividing by `std` alone inflates z by
    `sqrt(1 + 1/N)` (6% at N = 8), which shows as an excess of |z| > 2 at every level of
    aggregation (docs/statistics.md §4). Every z spectrax reports goes through this function."""
    return _z(observed, mean, std, mean_se)


def zscore(observed: ArrayTree, null: NullSummary) -> ArrayTree:
    """`null_z` leaf by leaf: `(observed - null.mean) / null.std` for an exact null, and for a Monte
    Carlo one `/ sqrt(null.std^2 + mean_se^2)` with `mean_se` the Monte Carlo error of the null mean
    from its draws (`monte_carlo_error`); NaN where the null std is 0."""
    if null.draws is None:
        return jax.tree.map(_z, observed, null.mean, null.std)
    return jax.tree.map(lambda o, m, s, d: _z(o, m, s, monte_carlo_error(d)[0]), observed, null.mean, null.std, null.draws)


def _pct(obs, draws):
    xp = _array_module(obs, draws)
    obs = xp.asarray(obs)
    draws = xp.asarray(draws, obs.dtype)
    below = xp.sum(draws < obs, axis=0).astype(obs.dtype)
    ties = xp.sum(draws == obs, axis=0).astype(obs.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):  # no finite draw: NaN
        pct = 100.0 * (below + 0.5 * ties) / xp.sum(~xp.isnan(draws), axis=0).astype(obs.dtype)
    return xp.where(xp.isnan(obs), np.nan, pct).astype(obs.dtype)


def percentile(observed: ArrayTree, null: NullSummary) -> ArrayTree:
    """Empirical percentile (0-100) of `observed` among the Monte Carlo draws, ties counted half.

    Needs `null.draws`; exact nulls have none.
    """
    if null.draws is None:
        raise ValueError("an exact null has no draws; use zscore")
    return jax.tree.map(_pct, observed, null.draws)


RESOLVED_BOUND = 0.25
"""A Monte Carlo null is resolved when its std is positive and the Monte Carlo standard error of
that std is at most this fraction of it (docs/statistics.md §4): a z from it is then off by at most
a quarter of itself at one standard error (16 Gaussian draws give 0.18, pooled nulls far less)."""


def monte_carlo_error(draws: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo standard errors `(of the null mean, of the null std)` from `draws (N, ...)`.

    Over the `n` finite draws of each position: `std / sqrt(n)` for the mean, and for the sample std
    `s` the delta method on the sample variance, `sqrt((m4 - s^4 (n - 3) / (n - 1)) / n) / (2 s)`
    with `m4` the fourth central moment (exact to first order for any distribution with a fourth
    moment, so heavy-tailed nulls get the larger error they have; `s / sqrt(2 (n - 1))` for a
    Gaussian). NaN where fewer than two draws are finite; 0 for the std of constant draws.
    """
    xp = _array_module(draws)
    x = xp.asarray(draws, np.float64 if xp is np else jnp.promote_types(draws.dtype, jnp.float32))
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a position without two finite draws stays NaN
        n = xp.sum(xp.isfinite(x), axis=0).astype(x.dtype)
        n = xp.where(n >= 2, n, np.nan)
        centered = x - xp.nanmean(x, axis=0)
        var = xp.nansum(centered**2, axis=0) / (n - 1)
        m4 = xp.nansum(centered**4, axis=0) / n
        var_of_var = xp.maximum(m4 - var**2 * (n - 3) / (n - 1), 0.0) / n
        std = xp.sqrt(var)
        return std / xp.sqrt(n), xp.where(std > 0, xp.sqrt(var_of_var) / (2 * xp.where(std > 0, std, 1.0)), 0.0 * std)


def _array_module(*arrays):
    """jax.numpy inside a trace (a caller jit-compiles `null_columns`), numpy otherwise: host columns
    then cost no device program per shape."""
    return jnp if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(arrays)) else np


def resolved(std: npt.ArrayLike, std_se: npt.ArrayLike | None = None) -> np.ndarray:
    """Whether a null can carry a z: std > 0 and, for a Monte Carlo null, `std_se <= RESOLVED_BOUND * std`
    (an exact null, `std_se=None` or 0, needs only std > 0). NaN std or error: not resolved."""
    std = np.asarray(std, np.float64)
    se = np.zeros_like(std) if std_se is None else np.asarray(std_se, np.float64)
    with np.errstate(invalid="ignore"):
        return (std > 0) & (se <= RESOLVED_BOUND * std)


def effect_sizes(observed: ArrayLike, mean: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """`(observed - mean, observed / mean)`, the ratio NaN where the null mean is 0."""
    xp = _array_module(observed, mean)
    dtype = np.float64 if xp is np else jnp.promote_types(jnp.asarray(observed).dtype, jnp.float32)
    observed, mean = xp.asarray(observed, dtype), xp.asarray(mean, dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        return observed - mean, xp.where(mean != 0, observed / xp.where(mean != 0, mean, 1.0), np.nan)


def null_columns(observed: dict[str, Any], nulls: dict[str, NullSummary]) -> dict[str, Any]:
    """Table columns for each statistic: `<stat>`, `<stat>_null_mean`, `<stat>_null_std`,
    `<stat>_z`, the effect sizes `<stat>_diff` (observed - null mean) and `<stat>_ratio` (observed /
    null mean), and, for Monte Carlo nulls, `<stat>_pct` and the Monte Carlo standard errors of the
    null mean and std, `<stat>_null_mean_se` and `<stat>_null_std_se` (`monte_carlo_error`).

    observed: `{name: array}`; nulls: `{name: NullSummary}` for the names that have one (a
    Monte Carlo `NullSummary` over a dict-valued `stat_fn` converts with `split_null`).
    Arrays are broadcast to the observed shape.
    """
    cols: dict[str, Any] = {}
    for name, obs in observed.items():
        null = nulls.get(name)
        xp = _array_module(obs, null)   # host columns in numpy: no device program per shape
        obs = xp.asarray(obs)
        cols[name] = obs
        if null is None:
            continue
        mean = xp.broadcast_to(xp.asarray(null.mean, obs.dtype), obs.shape)
        cols[f"{name}_null_mean"] = mean
        cols[f"{name}_null_std"] = xp.broadcast_to(xp.asarray(null.std, obs.dtype), obs.shape)
        errors = None if null.draws is None else monte_carlo_error(null.draws)
        cols[f"{name}_z"] = _z(obs, null.mean, null.std, None if errors is None else errors[0])
        diff, ratio = effect_sizes(obs, mean)
        cols[f"{name}_diff"], cols[f"{name}_ratio"] = diff.astype(obs.dtype), ratio.astype(obs.dtype)
        if errors is not None:
            cols[f"{name}_pct"] = _pct(obs, null.draws)
            for column, se in zip(("null_mean_se", "null_std_se"), errors):
                cols[f"{name}_{column}"] = xp.broadcast_to(se.astype(obs.dtype), obs.shape)
    return cols


def unit_rms(s: npt.ArrayLike, size: int) -> np.ndarray:
    """Spectra `s (..., k)` of stand-ins for `size`-entry matrices rescaled to an entry RMS of exactly
    1 (`|s|_2 = sqrt(size)`), float32: the unit null that `pool_null` shares among matrices of one shape.

    A matrix's null is then the Gaussian null *at its own Frobenius norm*: its RMS is known exactly,
    so a stand-in whose norm fluctuates would spread scale-dependent statistics (`sigma_max`,
    `alpha`) wider than any observation can (in a calibration run their percentiles bunched in the
    middle)."""
    s = np.asarray(s, np.float64)
    return (s * np.sqrt(size) / np.linalg.norm(s, axis=-1, keepdims=True)).astype(np.float32)


def pool_null(null: NullSummary, axis: int, scale: npt.ArrayLike | None = None) -> NullSummary:
    """One null for every matrix of one shape: the draws of all of them pooled.

    Matrices of one shape (the query heads of a layer, its key heads) have one Gaussian null up to
    their scale, so pooling their draws gives each of them a null resting on `num_draws * size`
    draws instead of `num_draws`, at no extra cost: a null std from 16 draws is off by up to
    ~40%, from 16 x 9 by ~12%.

    Args:
      null: Monte Carlo null of one statistic from unit-variance stand-ins (`match_scale=False`):
        `draws (num_draws, *shape)`.
      axis: the axis of `shape` (counted without the draw axis) along which the matrices share a shape.
      scale: None for a statistic that does not change with the matrices' scale (pearson, ssr,
        cond, erank, ...); otherwise `(*shape)` factors, each matrix's null being the unit null times its
        factor (RMS for `sigma_max`, `rms_a / rms_b` for `alpha`, `rms_a**2` for `alpha_mse`).

    Returns:
      `NullSummary` with `mean`, `std` of `shape` and `draws (num_draws * size, *shape)`. NaN
      draws (the stand-ins of an all-zero matrix) are left out of the mean, std and percentiles.
    """
    draws = np.asarray(null.draws)
    if draws.ndim < 2 or not 0 <= axis < draws.ndim - 1:
        raise ShapeError(f"pool_null: axis {axis} is not an axis of draws shaped {draws.shape} after the draw axis")
    if draws.shape[0] == 0:  # num_draws=0: nothing to pool, the null stays NaN
        nan = np.full(draws.shape[1:], np.nan, draws.dtype)
        return NullSummary(nan, nan, draws)
    pooled = np.moveaxis(draws, axis + 1, 1)
    pooled = np.moveaxis(pooled.reshape((-1, 1) + pooled.shape[2:]), 1, axis + 1)  # (N * size, ..., 1, ...)
    shape = draws.shape[1:]
    with warnings.catch_warnings():  # a position whose every draw is NaN stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.broadcast_to(np.nanmean(pooled, axis=0), shape)
        std = np.broadcast_to(np.nanstd(pooled, axis=0, ddof=1), shape)
    if scale is None:
        return NullSummary(mean, std, pooled)
    scale = np.asarray(scale, pooled.dtype)
    return NullSummary(mean * scale, std * scale, pooled * scale)


def mean_null_std(draws: npt.ArrayLike, groups: npt.ArrayLike) -> np.ndarray:
    """Null std of the mean of a statistic over the heads of a layer, from its per-head draws.

    Under the null, heads in different groups are independent, and heads in one group (query
    heads reading one key/value head) are correlated through what they share:
    `Var(mean) = (sum_h var_h + sum_{h != h' in one group} cov_hh') / H^2`, each variance and
    covariance estimated from the draws (a pair of heads shares its group's draw of the shared
    matrix within one draw). A layer mean is thus between `sqrt(groups)` and `sqrt(H)` times
    tighter than one head; dividing by `sqrt(H)` overstates it for statistics of shared heads.

    Args:
      draws: `(num_draws, ..., H)` per-head null draws, heads last, each head at its own scale
        (not pooled); NaN draws are left out.
      groups: `(H,)` group of each head (`kv_head_index`); all distinct for independent heads.

    Returns:
      `(...)` null std of the mean over the H heads.
    """
    x = np.asarray(draws, np.float64)
    groups = np.asarray(groups)
    H = x.shape[-1]
    if groups.shape != (H,):
        raise ShapeError(f"mean_null_std: groups {groups.shape} do not match {H} heads")
    with warnings.catch_warnings():  # a position whose every draw is NaN stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        centered = x - np.nanmean(x, axis=0)
        dof = np.maximum(np.sum(np.isfinite(x), axis=0) - 1, 0)
        var = np.nansum(centered**2, axis=0) / np.where(dof > 0, dof, np.nan)
        total = np.sum(var, axis=-1)
        same = (groups[:, None] == groups[None, :]) & ~np.eye(H, dtype=bool)
        if same.any():
            c = np.nan_to_num(centered)
            cov = np.einsum("n...i,n...j->...ij", c, c)[..., same] / np.max(np.where(dof > 0, dof, np.nan), axis=-1)[..., None]
            total = total + np.sum(cov, axis=-1)
        return np.sqrt(np.maximum(total, 0.0)) / H


def split_null(null: NullSummary) -> dict[str, NullSummary]:
    """`NullSummary` of a dict-valued statistic -> `{name: NullSummary}`."""
    draws = null.draws if null.draws is not None else {k: None for k in null.mean}
    return {k: NullSummary(null.mean[k], null.std[k], draws[k]) for k in null.mean}
