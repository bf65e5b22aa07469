"""Representation alignments of a layer (the canonical representation hypothesis), with their null.

Source: the Ziyin talk (Ziyin et al., "Formation of Representations in Neural Networks", arXiv:2410.03006);
docs/dynamics.md, Setups, "Canonical representation alignments". For any layer connected by a linear map,

    h_b = W h_a,    W `(d_out, d_in)`,    g_a = dl/dh_a,    g_b = dl/dh_b  (per-sample loss l),

the six matrices are (expectations over samples)

    input side a (d_in x d_in):    H_a = E[h_a h_aᵀ],  G_a = E[g_a g_aᵀ],  Z_a = Wᵀ W
    output side b (d_out x d_out): H_b = E[h_b h_bᵀ],  G_b = E[g_b g_bᵀ],  Z_b = W Wᵀ

and the hypothesis (CRH) is that all six pairwise alignments on each side hold, H_c ∝ G_c ∝ Z_c:
representation-gradient (RGA: H-G), representation-weight (RWA: H-Z), gradient-weight (GWA: G-Z).
In 002's Table 1 the a side is the "backward" and the b side the "forward" relation. The
alignment of two matrices is the Pearson correlation of their flattened entries (`alignment`):
1 for proportional matrices, invariant to positive scaling, symmetric.

Its null (`random_basis_null`, spectrax's baseline for every statistic here): the same
statistics for matrices with the same spectra but independent Haar-random eigenbases, one fresh
rotation per matrix and draw. It is not zero: PSD matrices have positive diagonals and a
near-zero-mean off-diagonal, so two independent PSD matrices of size d with flat-ish spectra
already correlate through their diagonals (two identities align perfectly in any basis). An
alignment means something only as a z-score against this baseline.

Theory 002 states (Theorem 1, eq. 7) at stationarity of SGD with weight decay γ > 0:

    W Wᵀ + c1 G_b = c2 H_b,    Wᵀ W + c3 H_a = c4 G_a,    c1..c4 > 0,

and, at a local minimum, the full CRH. `fdt_fit` fits these linear relations (both coefficients
should come out positive). When the CRH is broken the spectra are predicted to be power laws of
each other (the "polynomial alignment hypothesis", exponents in [-1, 3], α = 1 under the CRH):
`spectral_power_law` fits λ_h ∝ λ_g^α in log space over the leading eigenvalues, pairing them by
rank (sorted spectra, as 002's Fig. 3 plots them) or by basis (λ_g the eigenvalues of G, λ_h the
Rayleigh quotients vᵀ H v in G's eigenvectors). Rank pairing compares two monotone sequences, so
its fit is good for almost any pair of matrices, and a spectrum-preserving null leaves it
unchanged: it has no null here. Basis pairing asks whether H is diagonal in G's basis with a
power-law profile; under the null the Rayleigh quotients are flat (α ≈ 0, R² ≈ 0).

All functions take matrices batched over leading axes (layers, heads, steps, seeds) and are
jit-compiled once per shape.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from spectrax.backend import jit
from spectrax.spectral._util import ShapeError, as_float, check_min_rank, common_float
from spectrax.spectral.decompose import matmul
from spectrax.spectral.metrics import pearson
from spectrax.spectral.nulls import NullSummary, StaticFn, null_columns, split_null, summarize_draws

__all__ = [
    "ALIGNMENTS",
    "LABELS",
    "PAIRS",
    "FdtFit",
    "LayerMatrices",
    "PowerLaw",
    "alignment",
    "alignment_statistics",
    "alignment_table",
    "fdt_fit",
    "layer_matrices",
    "paired_spectra",
    "power_law_fit",
    "random_basis",
    "random_basis_null",
    "second_moment",
    "six_alignments",
    "spectral_power_law",
    "spectral_power_laws",
    "weight_grams",
]

# (name, first matrix, second matrix): H-G, H-Z, G-Z on the input side a, then the output side b.
PAIRS = (("hg_a", "h_a", "g_a"), ("hz_a", "h_a", "z_a"), ("gz_a", "g_a", "z_a"),
         ("hg_b", "h_b", "g_b"), ("hz_b", "h_b", "z_b"), ("gz_b", "g_b", "z_b"))
ALIGNMENTS = tuple(name for name, _, _ in PAIRS)
LABELS = {
    "hg_a": "b-RGA  H_a~G_a", "hz_a": "b-RWA  H_a~Z_a", "gz_a": "b-GWA  G_a~Z_a",
    "hg_b": "f-RGA  H_b~G_b", "hz_b": "f-RWA  H_b~Z_b", "gz_b": "f-GWA  G_b~Z_b",
}


class LayerMatrices(NamedTuple):
    """The six matrices of one layer h_b = W h_a, each batched over the same leading axes `(...)`.

    h_a, g_a, z_a: `(..., d_in, d_in)`; h_b, g_b, z_b: `(..., d_out, d_out)`."""

    h_a: jax.Array
    g_a: jax.Array
    z_a: jax.Array
    h_b: jax.Array
    g_b: jax.Array
    z_b: jax.Array


class PowerLaw(NamedTuple):
    """Fit of log x = alpha log y + intercept over the fitted entries, each `(...)`.

    r2: squared correlation of (log y, log x) over those entries; count: how many entries were
    fitted (float; fewer than 2 gives NaN fields)."""

    alpha: jax.Array
    intercept: jax.Array
    r2: jax.Array
    count: jax.Array


class FdtFit(NamedTuple):
    """Least squares target/||target|| ≈ c1 a/||a|| + c2 b/||b|| over the flattened entries,
    no intercept (norms Frobenius, so the coefficients are scale-free); each `(...)`.
    r2 = 1 - ||residual||² / ||target - mean entry||², on the normalized target."""

    c1: jax.Array
    c2: jax.Array
    r2: jax.Array


# ----------------------------------------------------------------------------- the matrices


@jit
def second_moment(x: ArrayLike) -> jax.Array:
    """E[x xᵀ] over samples: x `(..., N, d)` -> `(..., d, d)` (uncentered, as 002's H and G)."""
    x = as_float(x)
    check_min_rank(x, 2, "x")
    return matmul(jnp.swapaxes(x, -1, -2), x) / x.shape[-2]


@jit
def weight_grams(w: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """(Z_a = Wᵀ W `(..., d_in, d_in)`, Z_b = W Wᵀ `(..., d_out, d_out)`) of w `(..., d_out, d_in)`."""
    w = as_float(w)
    check_min_rank(w, 2, "w")
    wt = jnp.swapaxes(w, -1, -2)
    return matmul(wt, w), matmul(w, wt)


@jit
def layer_matrices(h_a: ArrayLike, g_b: ArrayLike, w: ArrayLike, h_b: ArrayLike | None = None,
                   g_a: ArrayLike | None = None) -> LayerMatrices:
    """The six matrices of a layer h_b = W h_a from a batch of samples.

    h_a: `(..., N, d_in)` input activations; g_b: `(..., N, d_out)` per-sample gradients dl/dh_b;
    w: `(..., d_out, d_in)`. h_b defaults to h_a Wᵀ (pass it when the layer has a bias or a
    normalization between); g_a defaults to g_b W, which is dl/dh_a only when h_a feeds nothing but
    this layer: with a residual stream or several consumers of h_a, pass the full gradient.
    """
    h_a, g_b, w = common_float(h_a, g_b, w)
    check_min_rank(w, 2, "w")
    chex.assert_equal_shape_prefix([h_a, g_b], h_a.ndim - 1, exception_type=ShapeError)
    chex.assert_axis_dimension(h_a, -1, w.shape[-1], exception_type=ShapeError)
    chex.assert_axis_dimension(g_b, -1, w.shape[-2], exception_type=ShapeError)
    h_b = matmul(h_a, jnp.swapaxes(w, -1, -2)) if h_b is None else as_float(h_b).astype(w.dtype)
    g_a = matmul(g_b, w) if g_a is None else as_float(g_a).astype(w.dtype)
    chex.assert_equal_shape([h_b, g_b], exception_type=ShapeError)
    chex.assert_equal_shape([h_a, g_a], exception_type=ShapeError)
    z_a, z_b = weight_grams(w)
    return LayerMatrices(second_moment(h_a), second_moment(g_a), z_a, second_moment(h_b), second_moment(g_b), z_b)


# ----------------------------------------------------------------------------- alignments


@jit
def alignment(a: ArrayLike, b: ArrayLike) -> jax.Array:
    """Pearson correlation of the flattened entries of a and b `(..., m, n)` -> `(...)`.

    1 for b = c a with c > 0, -1 for c < 0; NaN if either matrix is constant. Compare with
    `random_basis_null`: independent PSD matrices do not give 0.
    """
    a, b = common_float(a, b)
    check_min_rank(a, 2, "a")
    chex.assert_equal_shape_suffix([a, b], 2, exception_type=ShapeError)
    flat = lambda x: x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))  # noqa: E731
    return pearson(flat(a), flat(b))


def six_alignments(m: LayerMatrices) -> dict[str, jax.Array]:
    """The six alignments `{hg_a, hz_a, gz_a, hg_b, hz_b, gz_b}` of a layer, each `(...)`."""
    d = m._asdict()
    return {name: alignment(d[x], d[y]) for name, x, y in PAIRS}


# ----------------------------------------------------------------------------- power laws


@functools.partial(jit, static_argnames=("k",))
def power_law_fit(x: ArrayLike, y: ArrayLike, k: int | None = None) -> PowerLaw:
    """Fit x_i ∝ y_i^alpha in log space over the first k entries with x_i, y_i > 0.

    x, y: `(..., n)` index-paired positive values (e.g. spectra sorted descending); k: how many
    leading entries (None: all). Non-positive entries (numerically zero eigenvalues) are skipped.
    """
    x, y = common_float(x, y)
    chex.assert_equal_shape([x, y], exception_type=ShapeError)
    n = x.shape[-1]
    k = n if k is None else k
    if not 2 <= k <= n:
        raise ValueError(f"k must be in [2, {n}], got {k}")
    use = (jnp.arange(n) < k) & (x > 0) & (y > 0)
    w = use.astype(x.dtype)
    lx = jnp.log(jnp.where(use, x, 1.0))
    ly = jnp.log(jnp.where(use, y, 1.0))
    count = jnp.sum(w, axis=-1)
    safe = jnp.maximum(count, 1.0)
    mx = jnp.sum(w * lx, axis=-1) / safe
    my = jnp.sum(w * ly, axis=-1) / safe
    dx, dy = w * (lx - mx[..., None]), w * (ly - my[..., None])
    sxy, syy, sxx = jnp.sum(dx * dy, axis=-1), jnp.sum(dy * dy, axis=-1), jnp.sum(dx * dx, axis=-1)
    ok = (count >= 2) & (syy > 0)
    alpha = jnp.where(ok, sxy / jnp.where(ok, syy, 1.0), jnp.nan)
    r2 = jnp.where(ok & (sxx > 0), sxy * sxy / jnp.where(ok & (sxx > 0), syy * sxx, 1.0), jnp.nan)
    return PowerLaw(alpha, jnp.where(ok, mx - alpha * my, jnp.nan), r2, count)


@functools.partial(jit, static_argnames=("pairing",))
def paired_spectra(x: ArrayLike, y: ArrayLike, pairing: str = "rank",
                   rtol: float = 1e-5) -> tuple[jax.Array, jax.Array]:
    """Eigenvalue pairs (λ_x, λ_y) `(..., d)` of symmetric PSD x, y `(..., d, d)`, ordered by λ_y
    descending.

    pairing "rank": both spectra sorted descending, paired by rank. "basis": λ_y the eigenvalues
    of y, λ_x the Rayleigh quotients v_iᵀ x v_i in y's eigenvectors. Values at or below
    rtol * max of their matrix's spectrum are set to 0 (float32 eigh cannot resolve them), which
    `power_law_fit` skips.
    """
    x, y = common_float(x, y)
    chex.assert_equal_shape([x, y], exception_type=ShapeError)
    if pairing not in ("rank", "basis"):
        raise ValueError(f"pairing must be 'rank' or 'basis', got {pairing!r}")
    ly, v = jnp.linalg.eigh(y)
    ly, v = ly[..., ::-1], v[..., ::-1]
    if pairing == "rank":
        lx = jnp.linalg.eigvalsh(x)[..., ::-1]
    else:
        lx = jnp.sum(v * matmul(x, v), axis=-2)
    top_x = jnp.max(jnp.abs(jnp.linalg.eigvalsh(x)), axis=-1, keepdims=True) if pairing == "basis" else lx[..., :1]

    def floor(lam, top):
        return jnp.where(lam > rtol * top, lam, jnp.zeros((), lam.dtype))

    return floor(lx, top_x), floor(ly, ly[..., :1])


def spectral_power_law(x: ArrayLike, y: ArrayLike, k: int | None = None, pairing: str = "rank") -> PowerLaw:
    """λ_x ∝ λ_y^alpha between two symmetric PSD matrices `(..., d, d)` over the k leading
    eigenvalues of y (002's λ_h ∝ λ_g^α with x = H, y = G). See `paired_spectra`."""
    return power_law_fit(*paired_spectra(x, y, pairing), k=k)


def spectral_power_laws(m: LayerMatrices, k: int | None = None, pairing: str = "rank") -> dict[str, jax.Array]:
    """`alpha_<pair>` and `alpha_r2_<pair>` for the six pairs of `PAIRS`, first matrix against the
    second (λ_h ∝ λ_g^α, λ_h ∝ λ_z^α, λ_g ∝ λ_z^α); k is capped at each side's size."""
    d = m._asdict()
    out = {}
    for name, x, y in PAIRS:
        kk = None if k is None else min(k, d[x].shape[-1])
        fit = spectral_power_law(d[x], d[y], kk, pairing)
        out[f"alpha_{name}"], out[f"alpha_r2_{name}"] = fit.alpha, fit.r2
    return out


# ----------------------------------------------------------------------------- the theory's relation


@jit
def fdt_fit(target: ArrayLike, a: ArrayLike, b: ArrayLike) -> FdtFit:
    """Least squares of the normalized target on the normalized a and b `(..., d, d)`, no intercept.

    002's eq. 7 as a fit: output side `fdt_fit(H_b, Z_b, G_b)` (H_b = Z_b/c2 + (c1/c2) G_b), input
    side `fdt_fit(G_a, Z_a, H_a)` (G_a = Z_a/c4 + (c3/c4) H_a): both coefficients > 0 at
    stationarity. Coefficients are NaN when a and b are collinear (then `alignment` says it all).
    """
    target, a, b = common_float(target, a, b)
    chex.assert_equal_shape([target, a, b], exception_type=ShapeError)

    def unit(x):
        x = x.reshape(x.shape[:-2] + (-1,))
        n = jnp.linalg.norm(x, axis=-1, keepdims=True)
        return x / jnp.where(n > 0, n, 1.0)

    t, a, b = unit(target), unit(a), unit(b)
    saa, sbb, sab = (jnp.sum(p * q, axis=-1) for p, q in ((a, a), (b, b), (a, b)))
    sta, stb = jnp.sum(t * a, axis=-1), jnp.sum(t * b, axis=-1)
    det = saa * sbb - sab * sab
    ok = det > 1e-6 * saa * sbb
    safe = jnp.where(ok, det, 1.0)
    c1 = jnp.where(ok, (sta * sbb - stb * sab) / safe, jnp.nan)
    c2 = jnp.where(ok, (stb * saa - sta * sab) / safe, jnp.nan)
    res = t - c1[..., None] * a - c2[..., None] * b
    tc = t - jnp.mean(t, axis=-1, keepdims=True)
    r2 = 1.0 - jnp.sum(res * res, axis=-1) / jnp.sum(tc * tc, axis=-1)
    return FdtFit(c1, c2, r2)


# ----------------------------------------------------------------------------- statistics and null


def alignment_statistics(m: LayerMatrices, k: int | None = None) -> dict[str, jax.Array]:
    """Every statistic of a layer that the random-basis null speaks to, each `(...)`.

    The six alignments; `alpha_<pair>`, `alpha_r2_<pair>` for the basis-paired power law of each
    pair (`spectral_power_laws(..., pairing="basis")`); the FDT fits `fdt_b_z`, `fdt_b_g`,
    `fdt_b_r2` (H_b on Z_b, G_b) and `fdt_a_z`, `fdt_a_h`, `fdt_a_r2` (G_a on Z_a, H_a).
    """
    out = six_alignments(m)
    out.update(spectral_power_laws(m, k, pairing="basis"))
    fb, fa = fdt_fit(m.h_b, m.z_b, m.g_b), fdt_fit(m.g_a, m.z_a, m.h_a)
    out.update(fdt_b_z=fb.c1, fdt_b_g=fb.c2, fdt_b_r2=fb.r2, fdt_a_z=fa.c1, fdt_a_h=fa.c2, fdt_a_r2=fa.r2)
    return out


@jit
def random_basis(key: jax.Array, x: ArrayLike) -> jax.Array:
    """x `(..., d, d)` symmetric -> Q diag(λ(x)) Qᵀ with an independent Haar-random Q per matrix:
    the same spectrum in a random eigenbasis."""
    x = as_float(x)
    lam = jnp.linalg.eigvalsh(x)
    q = jax.random.orthogonal(key, x.shape[-1], x.shape[:-2], x.dtype)
    return matmul(q * lam[..., None, :], jnp.swapaxes(q, -1, -2))


@functools.partial(jit, static_argnames=("stat_fn", "num_draws", "batch_size"),
                   work=lambda a: a["num_draws"] * sum(lam.size * lam.shape[-1] for lam in a["spectra"]))
def _random_basis_null(key, spectra, stat_fn, num_draws, batch_size):
    def draw(k):
        ks = jax.random.split(k, len(spectra))
        mats = []
        for ki, lam in zip(ks, spectra):
            q = jax.random.orthogonal(ki, lam.shape[-1], lam.shape[:-1], lam.dtype)
            mats.append(matmul(q * lam[..., None, :], jnp.swapaxes(q, -1, -2)))
        return stat_fn(LayerMatrices(*mats))

    return summarize_draws(jax.lax.map(draw, jax.random.split(key, num_draws), batch_size=batch_size or num_draws))


def random_basis_null(key: jax.Array, m: LayerMatrices, stat_fn: Callable[[LayerMatrices], Any] = alignment_statistics, *,
                      num_draws: int = 32, batch_size: int | None = 4) -> NullSummary:
    """Monte Carlo null of `stat_fn` over the six matrices rotated into independent random bases.

    Each matrix (and each element of the leading batch) keeps its eigenvalues and gets its own
    Haar-random eigenbasis per draw. `stat_fn(LayerMatrices) -> pytree`: a module-level function
    or a `functools.partial` of one (a fresh lambda recompiles per call). Returns
    `NullSummary(mean, std, draws)` with draws `(num_draws, ...)`; `batch_size` draws at a time.
    """
    if num_draws < 2:
        raise ValueError("num_draws must be >= 2 for a null std")
    m = LayerMatrices(*common_float(*m))
    chex.assert_rank(list(m), m.h_a.ndim, exception_type=ShapeError)
    chex.assert_equal_shape_prefix(list(m), m.h_a.ndim - 2, exception_type=ShapeError)
    for name, x in m._asdict().items():
        if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
            raise ShapeError(f"{name} must be square matrices (..., d, d), got shape {x.shape}")
    spectra = tuple(jnp.linalg.eigvalsh(x) for x in m)
    return _random_basis_null(key, spectra, StaticFn(stat_fn), num_draws, batch_size)


def alignment_table(key: jax.Array, m: LayerMatrices, k: int | None = None, *, num_draws: int = 32,
                    batch_size: int | None = 4) -> dict[str, jax.Array]:
    """Table columns for a layer (batched `(...)`): every `alignment_statistics` entry beside its
    random-basis null (`<stat>_null_mean`, `_null_std`, `_z`, `_pct`), plus the rank-paired power
    laws `rank_alpha_<pair>`, `rank_alpha_r2_<pair>` (no null: rotations keep the spectra)."""
    observed = alignment_statistics(m, k)
    null = random_basis_null(key, m, functools.partial(alignment_statistics, k=k), num_draws=num_draws,
                             batch_size=batch_size)
    cols = null_columns(observed, split_null(null))
    cols.update({f"rank_{n}": v for n, v in spectral_power_laws(m, k, pairing="rank").items()})
    return cols
