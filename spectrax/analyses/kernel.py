"""QK-kernel and bottleneck statistics (docs/statistics.md §3), each beside its null (docs/statistics.md §4).

For query head h of one layer, with key/value head g = h // (H // KV), the QK kernel is
`K_h = W_Q,h^T W_K,g`, an `(E, E)` matrix of rank <= D: the bilinear form of the attention logit
`x_query^T K_h x_key`. It is never formed: `sp.qk_kernel_svd` factors both sides by QR and takes
the SVD of the `(D, D)` core. Unlike the spectra of W_Q and W_K alone, the kernel's spectrum does
not change under the attention-preserving reparametrization `W_Q -> M W_Q`, `W_K -> M^-T W_K`.

Per head (`kernel_layer`):

- `kernel_erank` (Roy-Vetterli effective rank of the kernel's singular values, docs/statistics.md §2),
  `kernel_erank_squared` (the same on s^2), `kernel_stable_rank` (sum s^2 / s_1^2) and
  `kernel_sigma_max`. Null: Monte Carlo over Gaussian W_Q,h and W_K,g of the real shapes, each
  scaled to the RMS entry of its real counterpart (only `sigma_max` depends on the scale). It is
  drawn exactly in law and cheaply: for `A, B (D, E)`, `D <= E`, and thin QRs `A^T = Q_A R_A`,
  `B^T = Q_B R_B`, the product `A^T B = Q_A (R_A R_B^T) Q_B^T` has the singular values of the
  `(D, D)` core `R_A R_B^T`; for Gaussian A the factor R_A has the Bartlett law (R_ii =
  sqrt(chi2(E - i)), i = 0..D-1, N(0, 1) above the diagonal) independently of Q_A. So a draw is
  two `(D, D)` Bartlett factors and one `(D, D)` SVD per head instead of `(D, E)` Gaussians and
  QRs. The key-side factor is drawn once per KV head and shared by the query heads of its group,
  exactly as the real W_K is, so the null keeps the within-group dependence of the real table.
  Where W_Q or W_K is stored in a GGUF block type, the draws are whole Gaussian heads quantized
  the same way (`quantized_kernel_null`; rounding is not rotation invariant).
- `ffn_alignment`: the fraction of the MLP input matrix's energy inside the head's top-k key-side
  kernel subspace, `||W P||_F^2 / ||W||_F^2` with `P = V_k V_k^T` from the kernel's right (key
  side) singular vectors, as the source document's code computed it (`Vh[:k].T @ Vh[:k]`). The MLP
  input matrix is `mlp["gate"]` for gated MLPs (docs/statistics.md §3 names the gate) and `mlp["up"]` for
  non-gated ones (gpt2, opt, neox, ...): both read the residual stream the head's keys read.
  Null (exact): for a uniformly random k-dimensional subspace of R^E, independent of W, the
  diagonal entries `c_i` of the random projector in W^T W's eigenbasis are Beta(k/2, (E-k)/2),
  with variance `V = 2k(E-k) / (E^2 (E+2))`, and sum to k, so their covariance is `-V / (E-1)`.
  Hence the mean is `k/E` for any W and the variance `V (E sum_i w_i^2 - 1) / (E - 1)` with
  `w_i = lambda_i / sum(lambda)` the normalized eigenvalues of W^T W (`ffn_alignment_null`).
  The key-side subspace of Gaussian weights is uniform (rotation invariance), so this is also the
  exact null for Gaussian heads. `ffn_alignment_ratio = ffn_alignment / (k/E)` restates it as a
  multiple of chance (the source's "0.57x chance"), without null columns.

Across layers (`layer_similarity`): per head, the Grassmann similarity of the top-k key-side
subspaces of every pair of layers (mean squared cosine of the principal angles), chance `k/E`,
exact null `sp.grassmann_null(k, E)`. `kernel_summary` turns the per-head table and those matrices
into the layer-level findings of the source: the bottleneck layer (lowest mean kernel erank)
against its null, the FFN alignment there, and the similarity of adjacent layers.

Choices: `top_k` is clipped to the head dimension D (the kernel has rank <= D, so further singular
vectors would be arbitrary); the key (right) side is used for the subspace because that is the
source's code; heads with NaN/Inf in W_Q,h or W_K,g get NaN statistics and `finite = 0`; a head
whose kernel is exactly zero (e.g. an all-zero W_Q,h) has `kernel_sigma_max = 0` and NaN for the
scale-free statistics, the alignment and its basis (its subspace is undefined).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from spectrax.backend import jit
from spectrax import spectral as sp
from spectrax.analyses import quantized
from spectrax.analyses.base import Analysis, LayerInput, LayerOutput, Options, Plot, Section, Tables
from spectrax.analyses.aggregate import finite_mean, layer_means, relative_std_error, shown_z
from spectrax.analyses.tables import Table, format_number, json_value, list_markdown

__all__ = [
    "HEADLINE",
    "KERNEL_STATISTICS",
    "KernelSummary",
    "analysis",
    "ffn_alignment_layer_null_std",
    "ffn_alignment_null",
    "ffn_input",
    "kernel_layer",
    "kernel_null",
    "kernel_statistics",
    "kernel_summary",
    "layer_similarity",
    "quantized_kernel_null",
    "render",
    "summarize",
]

KERNEL_STATISTICS = ("kernel_erank", "kernel_erank_squared", "kernel_stable_rank", "kernel_sigma_max")

_HIGHEST = jax.lax.Precision.HIGHEST
_OVERLAP_SLOT = 1 << 30  # the key of `ffn_alignment_layer_null_std`, apart from the kernel null's


def _float(x) -> jax.Array:
    """bf16/f16 (and ints refused) -> float32; float64 kept, so f64 references stay f64."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"weights must be real floating arrays, got {x.dtype}")
    return x if x.dtype == jnp.float64 else x.astype(jnp.float32)


# ----------------------------------------------------------------------------- statistics


@jit
def kernel_statistics(s: ArrayLike) -> dict[str, jax.Array]:
    """Spectrum statistics of kernel singular values `s (..., r)` -> `{name: (...)}`.

    Names are `KERNEL_STATISTICS`; NaN for an all-zero spectrum except `kernel_sigma_max` (0).
    """
    return {
        "kernel_erank": sp.effective_rank(s),
        "kernel_erank_squared": sp.effective_rank(s, squared=True),
        "kernel_stable_rank": sp.stable_rank(s),
        "kernel_sigma_max": sp.sigma_max(s),
    }


def ffn_input(mlp: dict | None) -> jax.Array | None:
    """The MLP matrix that reads the residual stream: `gate (F, E)` if present, else `up (F, E)`.

    `None` for `mlp=None` (no alignment wanted); a dict with neither key is refused.
    """
    if mlp is None:
        return None
    for name in ("gate", "up"):
        if name in mlp:
            w = _float(mlp[name])
            chex.assert_rank(w, 2)
            return w
    raise ValueError(f"MLP has neither 'gate' nor 'up' (keys: {sorted(mlp)}); cannot pick its input matrix")


def _kernel_svd(q, k, top_k: int):
    """`qk_kernel_svd` of one layer, `q (H, D, E)`, `k (KV, D, E)`, its KV groups split over the
    local devices at call time (`spectral.sharded`; one device gives the plain call)."""
    H, KV = q.shape[0], k.shape[0]
    grouped = sp.sharded(sp.qk_kernel_svd)(q.reshape(KV, H // KV, *q.shape[1:]), k[:, None], top_k=top_k)
    return jax.tree.map(lambda x: x.reshape(H, *x.shape[2:]), grouped)


@jit
def _observe(s, key_vectors, q, k, w):
    """Kernel statistics `{name: (H,)}`, key-side bases `(H, E, k)`, alignment `(H,)`, finite `(H,)`
    from the kernels' singular values `s (H, r)` and key-side vectors `(H, E, k)`."""
    H, KV = q.shape[0], k.shape[0]
    kv_of = sp.kv_head_index(H, KV)
    stats = kernel_statistics(s)
    # A zero kernel has no top-k subspace (the QR/SVD would return arbitrary axes): NaN it.
    defined = jnp.isfinite(s[:, 0]) & (s[:, 0] > 0)
    basis = jnp.where(defined[:, None, None], key_vectors, jnp.full((), jnp.nan, key_vectors.dtype))
    if w is None:
        ffn = jnp.full((H,), jnp.nan, basis.dtype)
    else:
        ffn = sp.projector_energy(w.astype(basis.dtype), basis)
    finite = jnp.all(jnp.isfinite(q), axis=(-2, -1)) & jnp.all(jnp.isfinite(k), axis=(-2, -1))[kv_of]
    return stats, basis, ffn, finite


# ----------------------------------------------------------------------------- kernel null


def _kernel_factors(key, scale_q, scale_k, d: int, n: int):
    """Scaled Bartlett factors `(H, d, d)` per query head and per query head's KV head.

    The K-side factor is drawn per KV head `(KV, d, d)` and gathered with the GQA map, so query
    heads of one group see the very same factor, as they see the same real W_K.
    """
    H, KV = scale_q.shape[0], scale_k.shape[0]
    kq, kk = jax.random.split(key)
    rq = sp.bartlett_factor(kq, (H, n, d), scale_q.dtype) * scale_q[:, None, None]
    rk = sp.bartlett_factor(kk, (KV, n, d), scale_k.dtype) * scale_k[:, None, None]
    return rq, rk[sp.kv_head_index(H, KV)]


def _rms(x):
    return jnp.sqrt(jnp.mean(x * x, axis=(-2, -1)))


@functools.partial(jit, static_argnames=("num_draws", "batch_size"),
                   work=lambda a: a["num_draws"] * (a["q"].size + a["k"].size))
def _kernel_null_draws(key, q, k, num_draws: int, batch_size: int):
    """`{name: (num_draws, H)}` statistics of scale-matched Gaussian kernels; q `(H, D, E)`, k `(KV, D, E)`."""
    _, D, E = q.shape
    scale_q, scale_k = _rms(q), _rms(k)  # NaN for a non-finite head: its null is NaN too

    def draw(key_i):
        rq, rk = _kernel_factors(key_i, scale_q, scale_k, D, E)
        core = jnp.matmul(rq, jnp.swapaxes(rk, -1, -2), precision=_HIGHEST)
        return kernel_statistics(jnp.linalg.svd(core, full_matrices=False, compute_uv=False))

    return jax.lax.map(draw, jax.random.split(key, num_draws), batch_size=batch_size)


def _check_heads(q, k) -> tuple[int, int, int, int]:
    chex.assert_rank([q, k], 3)
    H, D, E = q.shape
    KV = k.shape[0]
    chex.assert_shape(k, (KV, D, E))
    sp.group_size(H, KV)  # refuses head counts that do not divide
    if D > E:
        raise ValueError(f"head_dim {D} > hidden {E}: the kernel null assumes D <= E")
    return H, KV, D, E


def kernel_null(key: jax.Array, q: ArrayLike, k: ArrayLike, *, num_draws: int = 16, batch_size: int = 1) -> dict[str, sp.NullSummary]:
    """Monte Carlo null of `kernel_statistics` over scale-matched Gaussian W_Q,h and W_K,g.

    Exact in law via Bartlett factors (module docstring); all heads and draws in one compiled call
    (`jax.lax.map` over draws, `batch_size` at a time), compiled once per shape.

    Args:
      key: PRNG key.
      q: `(H, D, E)` query heads; k: `(KV, D, E)` key heads; any float dtype.
      num_draws: draws (>= 2; 0: NaN nulls, no draws); batch_size: draws evaluated at once (memory grows with it).
    Returns:
      `{name: NullSummary(mean (H,), std (H,), draws (num_draws, H))}` for `KERNEL_STATISTICS`;
      std is the sample std (ddof=1). The draws do not depend on `batch_size`.
    """
    q, k = _float(q), _float(k)
    _check_heads(q, k)
    if num_draws == 1 or num_draws < 0:
        raise ValueError(f"num_draws must be 0 (no Monte Carlo null) or >= 2 for a null std, got {num_draws}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if num_draws == 0:
        H = q.shape[0]
        return {name: sp.NullSummary(np.full(H, np.nan, np.float32), np.full(H, np.nan, np.float32),
                                     np.zeros((0, H), np.float32)) for name in KERNEL_STATISTICS}
    draws = _kernel_null_draws(key, q, k, num_draws=num_draws, batch_size=batch_size)
    return {
        name: sp.NullSummary(jnp.mean(d, axis=0), jnp.std(d, axis=0, ddof=1), d)
        for name, d in draws.items()
    }


def quantized_kernel_null(key: jax.Array, q: ArrayLike, k: ArrayLike, storage: Mapping[str, str] | None, *,
                          num_draws: int = 16) -> dict[str, sp.NullSummary] | None:
    """`kernel_null` for projections stored in a GGUF block type: each draw is whole Gaussian
    heads `(H, D, E)`, `(KV, D, E)` (one per KV head, shared by its group), those of a quantized
    projection quantized and dequantized along E as stored (`quantized.noise_matrix`), scaled to
    each real head's RMS; the kernel's singular values are those of the `(D, D)` core of the two
    thin QRs, as in `sp.qk_kernel_svd`. Rounding is not rotation invariant, so the Bartlett
    shortcut of `kernel_null` does not apply. None where neither W_Q nor W_K is quantizable, and
    for `num_draws=0`."""
    if num_draws == 0:
        return None
    kinds = {m: (storage or {}).get(f"attn.{m}") for m in ("q", "k")}
    heads = {"q": np.asarray(q, np.float64), "k": np.asarray(k, np.float64)}
    scale = {m: np.sqrt(np.mean(x * x, axis=(-2, -1))) for m, x in heads.items()}
    kv_of = sp.kv_head_index(heads["q"].shape[0], heads["k"].shape[0])
    draws = []
    for d in range(num_draws):
        keys = {m: jax.random.fold_in(jax.random.fold_in(key, d), i) for i, m in enumerate(heads)}
        drawn = {m: quantized.noise_matrix(keys[m], x.shape, kinds[m]) for m, x in heads.items()}
        if all(w is None for w in drawn.values()):
            return None
        r = {}
        for m, w in drawn.items():
            w = np.asarray(jax.random.normal(keys[m], heads[m].shape, np.float32)) if w is None else w
            r[m] = np.linalg.qr(np.swapaxes(w, -1, -2).astype(np.float64), mode="r") * scale[m][:, None, None]
        core = r["q"] @ np.swapaxes(r["k"][kv_of], -1, -2)
        draws.append(kernel_statistics(np.linalg.svd(core, compute_uv=False).astype(np.float32)))
    stacked = {name: np.stack([np.asarray(one[name]) for one in draws]) for name in draws[0]}
    return {name: sp.NullSummary(d.mean(axis=0), d.std(axis=0, ddof=1), d) for name, d in stacked.items()}


def _pooled_over_heads(nulls: dict[str, sp.NullSummary], q, k) -> dict[str, sp.NullSummary]:
    """Each head's kernel null pooled over the layer's heads (`spectral.pool_null`), which share
    one shape: `num_draws * H` draws per head. `kernel_sigma_max` scales with `rms(W_Q,h) *
    rms(W_K,g)`, so its draws are pooled in those units and scaled back per head."""
    H, KV = q.shape[0], k.shape[0]
    scale = np.asarray(_rms(q), np.float64) * np.asarray(_rms(k), np.float64)[sp.kv_head_index(H, KV)]
    pooled = {}
    for name, null in nulls.items():
        head_scale = scale if name == "kernel_sigma_max" else None
        draws = np.asarray(null.draws, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero head: NaN, flagged by `finite`
            unit = draws if head_scale is None else draws / head_scale
            pooled[name] = sp.pool_null(sp.NullSummary(None, None, unit), axis=0, scale=head_scale)
    return pooled


# ----------------------------------------------------------------------------- FFN alignment null


@jit
def _concentration(w) -> jax.Array:
    """`sum_i w_i^2` with `w_i = lambda_i / sum(lambda)` the normalized eigenvalues of `W^T W`.

    Equals `||W^T W||_F^2 / ||W||_F^4`; the Gram matrix is taken on the smaller side (same nonzero
    eigenvalues), and W is first divided by its RMS so neither power over- or underflows.
    """
    rms = _rms(w)
    w = w / jnp.where(rms > 0, rms, 1.0)
    F, E = w.shape
    wt = jnp.swapaxes(w, -1, -2)
    gram = jnp.matmul(wt, w, precision=_HIGHEST) if F >= E else jnp.matmul(w, wt, precision=_HIGHEST)
    total = jnp.sum(w * w)
    return jnp.where(total > 0, jnp.sum(gram * gram) / jnp.where(total > 0, total, 1.0) ** 2, jnp.nan)


def ffn_alignment_null(w: ArrayLike, k: int) -> sp.NullSummary:
    """Exact null of `sp.projector_energy(w, basis)` for a uniformly random k-subspace of R^E.

    Args:
      w: `(F, E)` matrix (e.g. the MLP gate `(ffn, hidden)`).
      k: subspace dimension, `0 < k <= E`.
    Returns:
      `NullSummary(mean, std)` float64 scalars, no draws: mean `k/E`; variance
      `V (E sum_i w_i^2 - 1) / (E - 1)`, `V = 2k(E-k) / (E^2 (E+2))`, `w_i` the normalized
      eigenvalues of `W^T W` (derivation in the module docstring). NaN std for a zero or
      non-finite W.
    """
    w = _float(w)
    chex.assert_rank(w, 2)
    E = int(w.shape[1])
    if not 0 < k <= E:
        raise ValueError(f"need 0 < k <= E, got k={k}, E={E}")
    mean = np.float64(k / E)
    if E == 1:
        return sp.NullSummary(mean=mean, std=np.float64(0.0))
    conc = np.float64(_concentration(w))
    v = 2.0 * k * (E - k) / (E * E * (E + 2.0))
    # E * sum w^2 >= 1 exactly; clip the rounding error of a nearly flat spectrum.
    var = v * max(E * conc - 1.0, 0.0) / (E - 1.0) if np.isfinite(conc) else np.nan
    return sp.NullSummary(mean=mean, std=np.float64(np.sqrt(var)))


@functools.partial(jit, static_argnames=("hidden", "head_dim", "k", "group", "num_draws"),
                   work=lambda a: a["num_draws"] * a["hidden"] * a["head_dim"] * a["group"])
def _overlap_draws(key, *, hidden: int, head_dim: int, k: int, group: int, num_draws: int) -> jax.Array:
    """`(num_draws,)`: per draw, the mean over pairs of query heads of one KV group of
    `||V_h^T V_h'||_F^2`, the overlap of their top-k key-side subspaces in the coordinates of the
    group's key row space, for Gaussian heads (Bartlett factors, as `kernel_null`)."""

    def draw(key_i):
        kq, kk = jax.random.split(key_i)
        rq = sp.bartlett_factor(kq, (group, hidden, head_dim))
        rk = sp.bartlett_factor(kk, (1, hidden, head_dim))
        core = jnp.matmul(rq, jnp.swapaxes(rk, -1, -2), precision=_HIGHEST)
        top = jnp.linalg.svd(core, full_matrices=False)[2][:, :k]                  # (group, k, D)
        overlap = jnp.sum(jnp.einsum("akd,bld->abkl", top, top, precision=_HIGHEST) ** 2, axis=(-2, -1))
        return (jnp.sum(overlap) - jnp.trace(overlap)) / (group * (group - 1))

    return jax.lax.map(draw, jax.random.split(key, num_draws))


def ffn_alignment_layer_null_std(key: jax.Array, null_std: float, hidden: int, k: int, num_heads: int,
                                 num_kv_heads: int, head_dim: int, *, num_draws: int = 16) -> tuple[float, float]:
    """Null std of the mean `ffn_alignment` over a layer's `num_heads` query heads, and its Monte
    Carlo error, for Gaussian heads: query heads reading one key head are *not* independent.

    Under the null a head's key-side subspace is `Q V_h`, `Q (E, D)` the Haar-random frame of its
    key head's row space and `V_h (D, k)` the top-k right singular vectors of the `(D, D)` kernel
    core, independent of Q. For Haar-random rotations the alignments `tr(P W^T W) / tr(W^T W)`
    of two projectors are bilinear in their traceless parts: `Cov(f_h, f_h') = c tr(P_h0 P_h'0)`
    with the same `c` as the exact variance `c (k - k^2/E)` (`ffn_alignment_null`). So two heads of
    one group correlate by `rho = (E ||V_h^T V_h'||_F^2 - k^2/E) / (k - k^2/E)`, a number of (E, D,
    k) alone, drawn here from `(D, D)` Bartlett cores (`_overlap_draws`): 1 when k = D (the two
    subspaces are the group's whole key row space), small when k << D. Heads of different groups
    and layers are independent. The variance of the mean is then `var (1 + (g - 1) rho) / H`,
    g = H / KV.

    Args:
      key: PRNG key; null_std: the exact per-head null std (`ffn_alignment_null(w, k).std`);
      hidden: E; k: subspace dimension (<= head_dim); num_heads, num_kv_heads, head_dim: H, KV, D.
      num_draws: Monte Carlo draws of rho (0: NaN unless k = D, where rho = 1 exactly).
    Returns:
      `(std, std_se)` floats; NaN where the per-head null std is.
    """
    E, std = hidden, float(null_std)
    g = sp.group_size(num_heads, num_kv_heads)
    if g == 1 or k == head_dim:
        rho, rho_se = float(g > 1), 0.0
    elif num_draws < 2:
        rho = rho_se = math.nan
    else:
        chance = k * k / E
        draws = np.asarray(_overlap_draws(key, hidden=E, head_dim=head_dim, k=k, group=g, num_draws=num_draws), np.float64)
        rho = (draws.mean() - chance) / (k - chance)
        rho_se = draws.std(ddof=1) / math.sqrt(num_draws) / (k - chance)
    inflation = 1.0 + (g - 1) * rho
    layer = std * math.sqrt(inflation / num_heads)
    return layer, layer * (g - 1) * rho_se / (2 * inflation)


# ----------------------------------------------------------------------------- one layer


def kernel_layer(attn: dict, mlp: dict | None, key: jax.Array, *, top_k: int = 16, num_draws: int = 16,
                 storage: Mapping[str, str] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-head QK-kernel statistics of one unstacked layer, with nulls.

    Args:
      attn: canonical attention of one layer: `q (H, D, E)`, `k (KV, D, E)` (numpy or jax, any
        float dtype; other keys ignored). Requires `D <= E`.
      mlp: the layer's MLP dict; `gate (F, E)` is used when present, else `up (F, E)` (both read
        the residual stream). `None` gives NaN alignment columns.
      key: PRNG key for the Monte Carlo kernel null.
      top_k: dimension of each head's key-side subspace, clipped to D (the kernel has rank <= D).
      num_draws: Monte Carlo draws of the kernel null (>= 2).
      storage: `{matrix: storage type}`; with `attn.q` or `attn.k` in a quantizable GGUF type,
        the kernel null is `quantized_kernel_null`.
    Returns:
      `(columns, bases)`: `columns` maps each name to an `(H,)` numpy array: `kv_head`; every
      `KERNEL_STATISTICS` name with the columns of `spectral.null_columns` and the null of the layer
      mean, `_layer_null_std(_se)` and `_layer_null_mean_se`; `ffn_alignment` with `_null_mean`,
      `_null_std`, `_z`, `_diff` and `_ratio` (exact null; the ratio is alignment / (k/E)) and, with
      an MLP, `_layer_null_std(_se)` (`ffn_alignment_layer_null_std`: heads of one group correlate)
      and `_layer_null_mean_se` (0);
      `finite` (1 unless the head's W_Q,h or W_K,g holds NaN/Inf). `bases` is `(H, E, k)` float32,
      the top-k key-side kernel singular vectors of each head (NaN for non-finite or zero kernels),
      for `layer_similarity`. An MLP matrix holding NaN/Inf makes every head's alignment and its
      null std NaN; `finite` speaks of W_Q and W_K only.
    """
    q, k = _float(attn["q"]), _float(attn["k"])
    H, KV, D, E = _check_heads(q, k)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    k_eff = min(top_k, D)
    w = ffn_input(mlp)
    if w is not None and w.shape[1] != E:
        raise ValueError(f"MLP input matrix {w.shape} does not read the hidden size {E}")
    out = _kernel_svd(q, k, k_eff)
    stats, basis, ffn, finite = _observe(out.s, out.key, q, k, w)
    per_head = quantized_kernel_null(key, q, k, storage, num_draws=num_draws) or kernel_null(key, q, k, num_draws=num_draws)
    nulls = _pooled_over_heads(per_head, q, k)
    if w is None:
        nulls["ffn_alignment"] = sp.NullSummary(np.float64(k_eff / E), np.float64(np.nan))
    else:
        nulls["ffn_alignment"] = ffn_alignment_null(w, k_eff)
    columns = sp.null_columns({**stats, "ffn_alignment": ffn}, nulls)
    cols = {"kv_head": sp.kv_head_index(H, KV)}
    cols.update({name: np.asarray(value) for name, value in columns.items()})
    for name, null in per_head.items():  # the null of the layer mean: heads reading one key head share it
        draws = np.asarray(null.draws, np.float64)
        std = sp.mean_null_std(draws, sp.kv_head_index(H, KV))
        means = np.nanmean(draws, axis=-1)  # each draw's layer mean, whose mean is the layer's null mean
        cols[f"{name}_layer_null_std"] = np.full(H, std, np.float32)
        cols[f"{name}_layer_null_std_se"] = np.full(H, std * relative_std_error(means), np.float32)
        cols[f"{name}_layer_null_mean_se"] = np.full(H, std / np.sqrt(max(np.sum(np.isfinite(means)), 1)), np.float32)
    if w is not None:  # its per-head null is exact; the layer mean's needs the groups' correlation
        std, se = ffn_alignment_layer_null_std(jax.random.fold_in(key, _OVERLAP_SLOT), nulls["ffn_alignment"].std, E, k_eff,
                                               H, KV, D, num_draws=num_draws)
        cols["ffn_alignment_layer_null_std"] = np.full(H, std, np.float32)
        cols["ffn_alignment_layer_null_std_se"] = np.full(H, se, np.float32)
        cols["ffn_alignment_layer_null_mean_se"] = np.zeros(H, np.float32)  # the mean k/E is exact
    cols["finite"] = np.asarray(finite).astype(np.int64)
    return cols, np.asarray(basis, np.float32)


# ----------------------------------------------------------------------------- across layers


@jit
def _head_similarity(bases) -> jax.Array:
    """`(L, E, k)` orthonormal bases of one head -> `(L, L)` Grassmann similarities.

    One `(L k, L k)` Gram matrix of all bases side by side: no E-sized intermediate beyond the
    input, and no `(L, L, E, k)` broadcast.
    """
    L, E, k = bases.shape
    flat = jnp.swapaxes(bases, 0, 1).reshape(E, L * k)
    gram = jnp.matmul(flat.T, flat, precision=_HIGHEST).reshape(L, k, L, k)
    return jnp.sum(gram * gram, axis=(1, 3)) / k


def layer_similarity(bases: ArrayLike) -> np.ndarray:
    """Layer x layer similarity of each head's top-k key-side kernel subspace.

    Args:
      bases: `(L, H, E, k)`, the stacked `bases` of `kernel_layer` for L layers.
    Returns:
      `(H, L, L)` float32: mean squared cosine of the principal angles between the subspaces of
      layers i and j (`sp.grassmann`), in [0, 1] up to rounding, ones on the diagonal; NaN in the
      rows and columns of a layer whose basis is NaN. Chance `k/E`, exact null
      `sp.grassmann_null(k, E)`. Heads are processed one at a time (one compile per shape), so
      extra memory is one head's `(L, E, k)` slice.
    """
    chex.assert_rank(bases, 4)
    L, H = bases.shape[:2]
    if isinstance(bases, np.ndarray) and bases.dtype != np.float64:
        bases = bases.astype(np.float32, copy=False)
    out = [np.asarray(_head_similarity(_float(bases[:, h]))) for h in range(H)]
    return np.stack(out).astype(np.float32) if out else np.zeros((0, L, L), np.float32)


def _cv(x) -> float:
    """Coefficient of variation over the finite entries: population std / mean."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if not x.size or np.mean(x) == 0:
        return math.nan
    return float(np.std(x) / np.mean(x))


def kernel_summary(rows: dict[str, np.ndarray], similarity: np.ndarray | None, *, top_k: int,
                   hidden: int) -> dict:
    """Layer-level findings of the kernel analysis, JSON-serializable (NaN -> None).

    Args:
      rows: the per-head table over layers: `kernel_layer`'s columns concatenated, plus `layer`.
      similarity: `(H, L, L)` from `layer_similarity`, its axis i being the i-th smallest layer id
        in `rows`; or None.
      top_k: the effective subspace dimension, `min(top_k, head_dim)` (= `bases.shape[-1]`);
        checked against the table's `ffn_alignment_null_mean = k / E`.
      hidden: E.
    Returns:
      `{"top_k", "hidden", "chance", "layers": [per-layer dict], "bottleneck": {...},
      "adjacent_similarity": {...} | None}`. Per layer (means over the heads with finite values;
      `aggregate.layer_means`): `kernel_erank_mean`, `kernel_erank_null_mean`, `kernel_erank_null_std`
      (the null std *of the layer mean*, counting query heads that share a key head:
      `kernel_erank_layer_null_std`), `kernel_erank_z` (the z of the layer mean against that null),
      `kernel_erank_diff`, `kernel_erank_ratio` (its effect sizes), `kernel_erank_head_null_std`
      (mean per-head null std, the spread of one Gaussian head), `kernel_erank_cv` (population std /
      mean over heads), `ffn_alignment_mean`, `ffn_alignment_ratio` (mean / (k/E)),
      `ffn_alignment_null_std` and `ffn_alignment_z` (of the layer mean, likewise), `heads` (finite
      heads), and `kernel_erank_resolved`, `ffn_alignment_resolved` (`spectral.resolved` for the null
      of the layer mean: a report shows a z only where it holds, `aggregate.shown_z`). The
      bottleneck is the layer with the lowest `kernel_erank_mean`; `below_null_3std` says whether
      that mean lies more than 3 null std of the layer mean below the null mean. Adjacent
      similarity: per consecutive pair of analyzed layers, the mean over heads of `sim(l, l+1)` and
      the mean per-head z against the exact Grassmann null.
    """
    if not 0 < top_k <= hidden:
        raise ValueError(f"need 0 < top_k <= hidden, got {top_k}, {hidden}")
    chance = top_k / hidden
    if "ffn_alignment_null_mean" in rows:
        stored = finite_mean(rows["ffn_alignment_null_mean"])
        if math.isfinite(stored) and not math.isclose(stored, chance, rel_tol=1e-4):
            raise ValueError(
                f"the table's chance level {stored:.6g} != top_k / hidden = {chance:.6g}; pass the "
                "effective top_k, min(top_k, head_dim)"
            )
    layer = np.asarray(rows["layer"])
    ids = np.unique(layer)
    means = layer_means(rows, _SUMMARIZED)
    per_layer = []
    for i, lid in enumerate(ids):
        m = layer == lid
        per_layer.append({
            "layer": int(lid),
            "heads": int(np.sum(np.isfinite(np.asarray(rows["kernel_erank"][m], np.float64)))),
            "kernel_erank_mean": float(means["kernel_erank"][i]),
            **{f"kernel_erank_{c}": _layer_value(means, f"kernel_erank_{c}", i)
               for c in ("null_mean", "null_std", "z", "diff", "ratio")},
            "kernel_erank_head_null_std": finite_mean(rows["kernel_erank_null_std"][m]),
            "kernel_erank_cv": _cv(rows["kernel_erank"][m]),
            "ffn_alignment_mean": float(means["ffn_alignment"][i]),
            "ffn_alignment_ratio": float(means["ffn_alignment"][i]) / chance,
            **{f"ffn_alignment_{c}": _layer_value(means, f"ffn_alignment_{c}", i) for c in ("null_std", "z")},
            **{f"{stat}_resolved": _resolved(means, stat, i) for stat in _SUMMARIZED},
        })
    bottleneck = None
    candidates = [p for p in per_layer if math.isfinite(p["kernel_erank_mean"])]
    if candidates:
        b = min(candidates, key=lambda p: p["kernel_erank_mean"])
        below = b["kernel_erank_mean"] < b["kernel_erank_null_mean"] - 3.0 * b["kernel_erank_null_std"]
        bottleneck = {
            "layer": b["layer"],
            "kernel_erank": b["kernel_erank_mean"],
            **{c: b[c] for c in ("kernel_erank_null_mean", "kernel_erank_null_std", "kernel_erank_z", "kernel_erank_diff",
                                 "kernel_erank_ratio")},
            "below_null_3std": bool(below),
            "ffn_alignment": b["ffn_alignment_mean"],
            **{c: b[c] for c in ("ffn_alignment_ratio", "ffn_alignment_null_std", "ffn_alignment_z",
                                 "kernel_erank_resolved", "ffn_alignment_resolved")},
        }
    return {
        "top_k": int(top_k),
        "hidden": int(hidden),
        "chance": chance,
        "layers": [{k: json_value(v) if isinstance(v, float) else v for k, v in p.items()} for p in per_layer],
        "bottleneck": None if bottleneck is None else {k: json_value(v) if isinstance(v, float) else v
                                                       for k, v in bottleneck.items()},
        "adjacent_similarity": _adjacent(similarity, ids, top_k, hidden),
    }


_SUMMARIZED = ("kernel_erank", "ffn_alignment")  # the statistics whose layer means `kernel_summary` reports


def _layer_value(means: Mapping[str, np.ndarray], column: str, i: int) -> float:
    """Layer `i`'s entry of a `layer_means` column; NaN where the table had no null for it."""
    return float(means[column][i]) if column in means else math.nan


def _resolved(means: Mapping[str, np.ndarray], stat: str, i: int) -> bool:
    """Whether the null of layer `i`'s mean of `stat` is resolved (`spectral.resolved`: std > 0 and
    its Monte Carlo error at most `spectral.RESOLVED_BOUND` of it)."""
    if f"{stat}_null_std" not in means:
        return False
    return bool(sp.resolved(means[f"{stat}_null_std"][i], means[f"{stat}_null_std_se"][i]))


def _adjacent(similarity, ids, top_k: int, hidden: int) -> dict | None:
    if similarity is None:
        return None
    sim = np.asarray(similarity, np.float64)
    chex.assert_rank(sim, 3)
    _, L, L2 = sim.shape
    if L != L2 or L != len(ids):
        raise ValueError(f"similarity {sim.shape} does not match the table's {len(ids)} layers")
    null = sp.grassmann_null(top_k, hidden)
    std = float(null.std)
    pairs = []
    for i in range(L - 1):
        s = sim[:, i, i + 1]
        pairs.append({
            "layers": [int(ids[i]), int(ids[i + 1])],
            "similarity": json_value(finite_mean(s)),
            "z": json_value(finite_mean((s - float(null.mean)) / std)) if std > 0 else None,
        })
    finite = [p for p in pairs if p["similarity"] is not None]
    largest = max(finite, key=lambda p: p["similarity"]) if finite else None
    return {"chance": float(null.mean), "null_std": std, "pairs": pairs, "largest": largest}


# ----------------------------------------------------------------------------- the analysis

HEADLINE = ("kernel_erank", "kernel_stable_rank", "ffn_alignment")


def _layer_rows(inputs: LayerInput, key: jax.Array, options: Options) -> LayerOutput:
    """`kernel_layer` of one streamed layer; its key-side bases are kept for `layer_similarity`."""
    attn, mlp = ({k: v[0] for k, v in inputs.params[part].items()} for part in ("attn", "mlp"))  # views
    rows, basis = kernel_layer(attn, mlp, key, top_k=options.top_k, num_draws=options.num_draws,
                               storage=inputs.storage)
    return LayerOutput(rows, {"basis": np.asarray(basis, np.float32)})


@dataclasses.dataclass(frozen=True)
class KernelSummary:
    """`kernel_summary`'s findings (`top_k`, `hidden`, `chance`, per-layer values, the bottleneck,
    adjacent-layer similarity) and, not in the JSON, what the report draws: the per-head table and
    the layer x layer similarity (`similarity`: `kernel_similarity.csv`'s rows; `mean_similarity`
    `(L, L)` over `layer_ids`), None for fewer than two layers of one shape."""

    top_k: int
    hidden: int
    chance: float
    layers: tuple[dict, ...]
    bottleneck: dict | None
    adjacent_similarity: dict | None
    heads: Table = dataclasses.field(repr=False)
    similarity: Table | None = dataclasses.field(default=None, repr=False)
    mean_similarity: np.ndarray | None = dataclasses.field(default=None, repr=False)
    layer_ids: np.ndarray | None = dataclasses.field(default=None, repr=False)
    basis_dim: int | None = None

    def to_json(self) -> dict:
        return {"top_k": self.top_k, "hidden": self.hidden, "chance": self.chance, "layers": list(self.layers),
                "bottleneck": self.bottleneck, "adjacent_similarity": self.adjacent_similarity}


def summarize(tables: Tables, spec, options: Options) -> KernelSummary:
    """`KernelSummary` of a run: `top_k` clipped to the head dimension, E = `spec.hidden_size`."""
    heads, bases, hidden = tables.heads, tables.kernel_bases, spec.hidden_size
    top_k = min(options.top_k, *spec.head_dims)
    similarity = table = mean = ids = k = None
    if bases is not None and len(bases) > 1:
        similarity = layer_similarity(bases)  # (H, L, L)
        ids = np.unique(heads["layer"])
        mean, std = np.nanmean(similarity, axis=0), np.nanstd(similarity, axis=0)
        a, b = np.meshgrid(np.arange(len(ids)), np.arange(len(ids)), indexing="ij")
        k = bases.shape[-1]
        table = {"layer_a": ids[a.ravel()], "layer_b": ids[b.ravel()], "similarity": mean.ravel(),
                 "similarity_head_std": std.ravel(), "chance": np.full(a.size, k / hidden)}
    found = kernel_summary(heads, similarity, top_k=top_k, hidden=hidden)
    return KernelSummary(top_k=found["top_k"], hidden=found["hidden"], chance=found["chance"],
                         layers=tuple(found["layers"]), bottleneck=found["bottleneck"],
                         adjacent_similarity=found["adjacent_similarity"], heads=heads, similarity=table,
                         mean_similarity=mean, layer_ids=ids, basis_dim=k)


def render(summary: KernelSummary) -> Section:
    """The report's kernel section, `kernel_similarity.csv`, its heatmap and the per-layer trends."""
    k, chance = summary.top_k, summary.chance
    per_layer = summary.layers
    lines = [
        "## QK-kernel subspaces (kernel)",
        "",
        "For every query head the kernel K_h = W_Q,hᵀ W_K,g (E x E, rank <= D) is decomposed from QR factors "
        "of both sides, never formed. Its effective rank is set against kernels of shape- and scale-matched "
        "Gaussian W_Q, W_K (drawn exactly in law from Bartlett factors); the \"bottleneck\" is the layer of lowest "
        f"mean effective rank. FFN alignment is the fraction of the MLP input matrix's energy inside the head's "
        f"top-{k} key-side kernel subspace (exact null: mean k/E = {chance:.4g} for any matrix, std from its "
        "spectrum). Layer x layer similarity is the Grassmann similarity of those subspaces (chance k/E). Heads "
        "sharing a KV head share W_K. z: of the layer mean against the null of that mean (which counts the query heads that "
        "share a key head), shown only where that null is resolved (n/a otherwise). Gauge: both statistics and their z are invariant (properties of the attention "
        "function, `gauge.INVARIANCE`), unlike most per-head laws.",
        "",
        list_markdown({name: [p[key] for p in per_layer] for name, key in (
            ("layer", "layer"), ("kernel erank", "kernel_erank_mean"), ("null", "kernel_erank_null_mean"),
            ("z", "kernel_erank_z"), ("CV over heads", "kernel_erank_cv"),
            ("FFN alignment / chance", "ffn_alignment_ratio"), ("FFN z", "ffn_alignment_z"))} | {
            "z": [shown_z(p, "kernel_erank_z", "kernel_erank_resolved") for p in per_layer],
            "FFN z": [shown_z(p, "ffn_alignment_z", "ffn_alignment_resolved") for p in per_layer]}),
        "",
        "What stands out:",
        "",
    ]
    b = summary.bottleneck
    if b:
        verdict = ("its null is not resolved (too few Monte Carlo draws to say)" if not b["kernel_erank_resolved"]
                   else "more than 3 null std below random kernels" if b["below_null_3std"]
                   else "within 3 null std of random kernels: the lowest of the layers, but not distinguishable from what random heads of this shape give")
        lines.append(f"- The bottleneck (lowest mean kernel effective rank) is layer {b['layer']}: {format_number(b['kernel_erank'])} "
                     f"vs {format_number(b['kernel_erank_null_mean'])} ± {format_number(b['kernel_erank_null_std'], 2)} (null std of the layer mean) "
                     f"for random kernels, {verdict}.")
        z = shown_z(b, "ffn_alignment_z", "ffn_alignment_resolved")
        verdict = ("no more and no less than a random subspace would" if z is None or abs(z) < 2 else
                   "more than a random subspace would" if z > 0 else "less than a random subspace would")
        lines.append(f"- FFN alignment at the bottleneck is {format_number(b['ffn_alignment_ratio'], 3)}x chance (z of the layer mean "
                     f"{format_number(z, 3)}): the MLP input overlaps the heads' kernel subspaces {verdict}.")
    adjacent = summary.adjacent_similarity
    if adjacent and adjacent.get("largest"):
        top = adjacent["largest"]
        lines.append(f"- The most similar adjacent layers are {top['layers'][0]} and {top['layers'][1]}: similarity "
                     f"{format_number(top['similarity'], 3)} vs chance {format_number(adjacent['chance'], 3)} ± {format_number(adjacent['null_std'], 2)} "
                     f"(mean per-head z {format_number(top['z'], 3)}).")
    lines.append("")
    plots, tables = [], {}
    if summary.similarity is not None:
        tables["kernel_similarity.csv"] = summary.similarity
        d = summary.basis_dim
        plots.append(Plot("similarity_heatmap", "kernel_similarity", (summary.mean_similarity, summary.layer_ids),
                          {"chance": d / summary.hidden,
                           "title": f"QK-kernel top-{d} key-side subspaces: layer x layer similarity (mean over heads)"}))
    for stat in ("kernel_erank", "ffn_alignment"):
        plots.append(Plot("layer_trend", f"trend_{stat}", (summary.heads, stat),
                          {"title": f"{stat} per layer vs random null"}))
    plots.append(Plot("head_heatmap", "heatmap_kernel_erank_z", (summary.heads, "kernel_erank_z"),
                      {"title": "QK-kernel effective rank: z-score against Gaussian null"}))
    return Section("\n".join(lines), tables, tuple(plots))


analysis = Analysis(name="kernel", table="heads", layer_rows=_layer_rows, summarize=summarize, render=render,
                    key_id=2, headline=HEADLINE, spread=("kernel_erank",), reads=("attn", "mlp"))
