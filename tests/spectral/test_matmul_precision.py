"""Every matrix product inside the public spectral kernels runs at full precision.

TPUs and TF32-capable GPUs run a float32 `dot_general` at the default precision in bfloat16 or
TF32 passes (~3 decimal digits), which breaks CholeskyQR2 (a Gram matrix loses the small singular
values) and every statistic built on it. So each product must carry `Precision.HIGHEST`, which
no `jax.default_matmul_precision` setting overrides. The check reads the jaxprs (tracing, no
compilation), including the sub-jaxprs of jit, scan, cond, while, map and custom_jvp/custom_vmap
calls, so it holds on a CPU-only machine for what an accelerator would run.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectrax.spectral as sp
from spectrax.spectral import alignment as al

HIGHEST = jax.lax.Precision.HIGHEST


def _sub_jaxprs(value):
    """The jaxprs held in one equation parameter (a jaxpr, a closed jaxpr, or a tuple of them)."""
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def dot_precisions(jaxpr) -> list:
    """The `precision` of every `dot_general` in `jaxpr` and all its sub-jaxprs."""
    found, stack = [], [jaxpr.jaxpr if hasattr(jaxpr, "jaxpr") else jaxpr]
    while stack:
        for eqn in stack.pop().eqns:
            if eqn.primitive.name == "dot_general":
                found.append(eqn.params["precision"])
            for value in eqn.params.values():
                stack.extend(_sub_jaxprs(value))
    return found


def _is_highest(precision) -> bool:
    if isinstance(precision, tuple):
        return all(p == HIGHEST for p in precision)
    return precision == HIGHEST


# --------------------------------------------------------------------------- the walker itself


def test_walker_finds_products_in_every_kind_of_sub_jaxpr():
    """A default-precision product hidden in scan, cond, while, custom_jvp and an inner jit is found."""
    a = jnp.ones((3, 3))

    @jax.custom_jvp
    def custom(x):
        return x @ x

    custom.defjvp(lambda primals, tangents: (custom(primals[0]), tangents[0]))

    def hidden(x):
        y = jax.lax.scan(lambda c, _: (c @ x, None), x, None, length=2)[0]
        y = jax.lax.cond(True, lambda: y @ x, lambda: y)
        y = jax.lax.while_loop(lambda c: c[0, 0] > 1e9, lambda c: c @ x, y)
        y = jax.lax.map(lambda r: r @ x, y)
        return jax.jit(lambda z: custom(z))(y)

    precisions = dot_precisions(jax.make_jaxpr(hidden)(a))
    assert len(precisions) == 5 and not any(_is_highest(p) for p in precisions)
    full = jax.make_jaxpr(lambda x: jnp.matmul(x, x, precision=HIGHEST))(a)
    assert [_is_highest(p) for p in dot_precisions(full)] == [True]


# --------------------------------------------------------------------------- the public kernels

# Small example calls of every public kernel: shapes like (layers, heads, head_dim, hidden).
_rng = np.random.default_rng(0)
Q = _rng.standard_normal((2, 4, 8, 24)).astype(np.float32)
K = _rng.standard_normal((2, 2, 8, 24)).astype(np.float32)
W = _rng.standard_normal((2, 12, 20)).astype(np.float32)
S = np.sort(_rng.uniform(0.1, 2.0, (2, 12)).astype(np.float32), axis=-1)[..., ::-1].copy()
KEY = jax.random.key(0)
H = _rng.standard_normal((2, 16, 6)).astype(np.float32)       # activations (layers, tokens, width)
H_A = np.einsum("ltd,lte->lde", H, H) / 16                      # (layers, 6, 6) second moments
G_B = np.einsum("ltd,lte->lde", H[..., ::-1], H[..., ::-1]) / 16
W_AL = _rng.standard_normal((2, 6, 6)).astype(np.float32)
M = al.layer_matrices(H_A, G_B, W_AL)

KERNEL_CALLS = {
    # decompose: every method, values and vectors (the cholqr fallback sits in a cond)
    **{f"singular_values[{m}]": functools.partial(sp.singular_values, Q, method=m) for m in sp.METHODS},
    **{f"svd[{m}]": functools.partial(sp.svd, Q, method=m) for m in sp.METHODS},
    "singular_values[batch_size]": functools.partial(sp.singular_values, Q, batch_size=2),
    "gram_singular_values": functools.partial(sp.gram_singular_values, Q),
    "lq": functools.partial(sp.lq, Q),
    "lq[qr]": functools.partial(sp.lq, Q, method="qr"),
    # factored kernels and GQA
    "factored_singular_values": functools.partial(sp.factored_singular_values, Q, Q),
    "factored_svd": functools.partial(sp.factored_svd, Q, Q, top_k=4),
    "qk_kernel_singular_values": functools.partial(sp.qk_kernel_singular_values, Q[:, :2], K),
    "qk_kernel_svd": functools.partial(sp.qk_kernel_svd, Q[:, :2], K, top_k=4),
    "ov_circuit_svd": functools.partial(sp.ov_circuit_svd, Q[:, :2], K, top_k=4),
    "gqa_pair": functools.partial(sp.gqa_pair, sp.pair_statistics, Q, K, axis=1),
    # metrics
    "condition_number": functools.partial(sp.condition_number, S),
    "effective_rank": functools.partial(sp.effective_rank, S),
    "grassmann": functools.partial(sp.grassmann, Q[:, :2, :3, :].swapaxes(-1, -2), K[..., :3, :].swapaxes(-1, -2)),
    "max_mean": functools.partial(sp.max_mean, S),
    "mean_abs_cos": functools.partial(sp.mean_abs_cos, Q[:, :2], K),
    "pairwise_grassmann": functools.partial(sp.pairwise_grassmann, Q[0, :, :3, :].swapaxes(-1, -2)),
    "pearson": functools.partial(sp.pearson, S, S[::-1]),
    "projector_energy": functools.partial(sp.projector_energy, W[..., :8, :], Q[0, :2, :3, :20].swapaxes(-1, -2)),
    "scale_fit": functools.partial(sp.scale_fit, S, S[::-1]),
    "sigma_max": functools.partial(sp.sigma_max, S),
    "ssr": functools.partial(sp.ssr, S, S[::-1]),
    "stable_rank": functools.partial(sp.stable_rank, S),
    # Marchenko-Pastur and ESD fits
    "fit_mp_scale": functools.partial(sp.fit_mp_scale, S**2, 0.6),
    "mp_cdf": functools.partial(sp.mp_cdf, S, 0.6),
    "mp_density": functools.partial(sp.mp_density, S, 0.6),
    "mp_edges": functools.partial(sp.mp_edges, 0.6),
    "mp_quantile": functools.partial(sp.mp_quantile, S / 3, 0.6),
    "singular_value_edges": functools.partial(sp.singular_value_edges, (12, 20)),
    "eigenvalues": functools.partial(sp.eigenvalues, S, (12, 20)),
    "ks_gaussian": functools.partial(sp.ks_gaussian, KEY, S, (12, 20)),
    "ks_mp": functools.partial(sp.ks_mp, S, (12, 20)),
    "ks_two_sample": functools.partial(sp.ks_two_sample, S, S[::-1]),
    "mp_fit": functools.partial(sp.mp_fit, S, (12, 20)),
    "powerlaw_fit": functools.partial(sp.powerlaw_fit, S**2, min_tail=3),
    "mp_fit_weightwatcher": functools.partial(sp.mp_fit_weightwatcher, S**2, (12, 20)),
    # chi bidiagonals
    "bidiagonal_singular_values": functools.partial(sp.bidiagonal_singular_values, S, S[..., 1:]),
    "chi_bidiagonal": functools.partial(sp.chi_bidiagonal, KEY, *sp.chi_degrees_of_freedom((12, 20)), (2,)),
    "chi_variates": functools.partial(sp.chi_variates, KEY, np.arange(1, 9), (2,)),
    "bartlett_factor": functools.partial(sp.bartlett_factor, KEY, (2, 20, 12)),
    "gaussian_bidiagonal": functools.partial(sp.gaussian_bidiagonal, KEY, (2, 12, 20)),
    # nulls: the dense Bartlett path and the bisection path, each statistic's draws
    "gaussian_null": functools.partial(sp.gaussian_null, KEY, sp.gqa_pair_statistics, Q, K, num_draws=2),
    "gaussian_singular_values[bartlett]": functools.partial(sp.gaussian_singular_values, KEY, (2, 12, 20)),
    "gaussian_singular_values[bisection]": functools.partial(
        sp.gaussian_singular_values, KEY, (2, 12, 20), method="bisection"),
    "gaussian_spectrum_draws": functools.partial(sp.gaussian_spectrum_draws, KEY, W, num_draws=2),
    "gaussian_spectrum_null": functools.partial(
        sp.gaussian_spectrum_null, KEY, sp.singular_value_statistics, W, num_draws=2),
    "null_from_draws": functools.partial(sp.null_from_draws, sp.singular_value_statistics, np.stack([S, S])),
    "shuffle_entries": functools.partial(sp.shuffle_entries, KEY, W),
    "shuffle_null": functools.partial(sp.shuffle_null, KEY, sp.spectrum_statistics, W, num_draws=2),
    "layerwise_null": functools.partial(
        sp.layerwise_null, sp.gaussian_null, KEY, [0, 1], sp.spectrum_statistics, W, num_draws=2),
    # bundled statistics
    "gqa_pair_statistics": functools.partial(sp.gqa_pair_statistics, Q, K, grassmann_k=3),
    "pair_statistics": functools.partial(sp.pair_statistics, Q[:, :2], K, grassmann_k=3),
    "singular_value_statistics": functools.partial(sp.singular_value_statistics, S),
    "spectra_pair_statistics": functools.partial(sp.spectra_pair_statistics, S, S[::-1]),
    "spectrum_statistics": functools.partial(sp.spectrum_statistics, W),
    # alignment (activation second moments against weights)
    "alignment.second_moment": functools.partial(al.second_moment, H),
    "alignment.weight_grams": functools.partial(al.weight_grams, W_AL),
    "alignment.layer_matrices": functools.partial(al.layer_matrices, H_A, G_B, W_AL),
    "alignment.alignment": functools.partial(al.alignment, H_A, G_B),
    "alignment.six_alignments": functools.partial(al.six_alignments, M),
    "alignment.power_law_fit": functools.partial(al.power_law_fit, S, S[::-1]),
    "alignment.paired_spectra": functools.partial(al.paired_spectra, H_A, G_B),
    "alignment.spectral_power_law": functools.partial(al.spectral_power_law, H_A, G_B),
    "alignment.spectral_power_laws": functools.partial(al.spectral_power_laws, M),
    "alignment.fdt_fit": functools.partial(al.fdt_fit, H_A, G_B, W_AL),
    "alignment.alignment_statistics": functools.partial(al.alignment_statistics, M),
    "alignment.random_basis": functools.partial(al.random_basis, KEY, H_A),
    "alignment.random_basis_null": functools.partial(al.random_basis_null, KEY, M, num_draws=2, batch_size=None),
    "alignment.alignment_table": functools.partial(al.alignment_table, KEY, M, num_draws=2),
}

# Public names that are not kernels: types, constants, host (numpy) exact nulls and table
# helpers, and device plumbing (`sharded` wraps the kernels checked here).
NOT_KERNELS = {
    "alignment", "Float64Unavailable", "ShapeError", "float64_unavailable", "LQ", "METHODS", "SVDResult", "OVCircuitSVD", "QKKernelSVD", "ScaleFit", "MPFit", "WWMPFit",
    "WW_EVALS_FLOOR", "PowerLawFit", "Bidiagonal", "NullSummary", "PAIR_STATISTICS", "SPECTRA_PAIR_STATISTICS",
    "SPECTRUM_STATISTICS", "BATCH_AXIS", "group_size", "kv_head_index", "aspect_ratio",
    "chi_degrees_of_freedom", "abs_cos_std", "cos_null", "expected_abs_cos", "grassmann_chance",
    "grassmann_null", "exact_pair_nulls", "mean_null_std", "null_columns", "RESOLVED_BOUND", "effect_sizes", "unit_rms",
    "monte_carlo_error", "resolved", "percentile", "pool_null", "split_null", "zscore", "null_z",
    "StaticFn", "summarize_draws", "no_draws_null",
    "cpu_devices_env", "gather_layers", "local_mesh", "pad_batch", "padded_size", "process_layers",
    "shard_batch", "sharded",
    "alignment.ALIGNMENTS", "alignment.LABELS", "alignment.PAIRS", "alignment.FdtFit",
    "alignment.LayerMatrices", "alignment.PowerLaw",
}


def test_every_public_kernel_is_checked():
    """A new public kernel must be added to KERNEL_CALLS (or, if it is none, to NOT_KERNELS)."""
    public = set(sp.__all__) | {f"alignment.{n}" for n in al.__all__}
    covered = {name.split("[")[0] for name in KERNEL_CALLS}
    assert public - NOT_KERNELS == covered, (sorted(public - NOT_KERNELS - covered), sorted(covered - public))
    for name in NOT_KERNELS - {"alignment"}:
        obj = getattr(al, name.split(".")[1]) if name.startswith("alignment.") else getattr(sp, name)
        assert inspect.isclass(obj) or not (callable(obj) and hasattr(obj, "lower")), f"{name} is jit-compiled"


@pytest.mark.parametrize("name", sorted(KERNEL_CALLS))
def test_every_product_is_full_precision(name):
    precisions = dot_precisions(jax.make_jaxpr(KERNEL_CALLS[name])())
    low = [p for p in precisions if not _is_highest(p)]
    assert not low, f"{name}: {len(low)} of {len(precisions)} dot_general(s) at precision {low[0]}"


@pytest.mark.parametrize("name", ["svd[cholqr]", "singular_values[cholqr]", "gqa_pair_statistics", "qk_kernel_svd"])
def test_vmapped_kernels_keep_full_precision(name):
    """Under `vmap` (how the nulls call the kernels) the custom_vmap rule folds into the batch."""
    call = KERNEL_CALLS[name]
    args = tuple(np.stack([a, a]) for a in call.args)
    precisions = dot_precisions(jax.make_jaxpr(jax.vmap(lambda *a: call.func(*a, **call.keywords)))(*args))
    assert precisions and all(_is_highest(p) for p in precisions)


def test_products_are_present_where_expected():
    """The check is not vacuous: CholeskyQR2 and the factored kernels are made of products."""
    for name in ("singular_values[cholqr]", "svd[gram]", "qk_kernel_svd", "alignment.layer_matrices"):
        assert dot_precisions(jax.make_jaxpr(KERNEL_CALLS[name])()), name


# --------------------------------------------------------------------------- float64 where there is none


def test_float64_unavailable_names_the_reason():
    assert sp.float64_unavailable() == "jax_enable_x64 is off"
    with jax.enable_x64(True):
        assert sp.float64_unavailable("cpu") is None
        assert sp.float64_unavailable("gpu") is None
        assert sp.float64_unavailable("tpu") == "TPUs have no float64 arithmetic"


def test_float64_dtype_argument_without_x64_falls_back_to_float32_and_says_so():
    """`dtype=float64` with x64 off: one `Float64Unavailable` warning (not JAX's truncation warning)
    and exactly the float32 computation."""
    key = jax.random.key(3)
    with pytest.warns(sp.Float64Unavailable, match="jax_enable_x64 is off"):
        s = sp.gaussian_singular_values(key, (2, 7, 11), dtype=jnp.float64)
    assert s.dtype == jnp.float32
    np.testing.assert_array_equal(s, sp.gaussian_singular_values(key, (2, 7, 11)))
    with pytest.warns(sp.Float64Unavailable):
        lo, hi = sp.singular_value_edges((7, 11), dtype=np.float64)
    assert lo.dtype == hi.dtype == jnp.float32


def test_float64_on_a_tpu_falls_back_to_float32_cholqr(monkeypatch):
    """x64 on a TPU (the default backend reported as one): float64 matrices are computed in float32,
    and the float64-only `"gram"` method becomes the float32 `"cholqr"`."""
    x = np.random.default_rng(5).standard_normal((3, 5, 13))
    with jax.enable_x64(True):
        expected = sp.singular_values(x[:, :, :12].astype(np.float32), method="cholqr")
        assert sp.singular_values(x, method="gram").dtype == jnp.float64  # a real CPU: float64 kept
        monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
        with pytest.warns(sp.Float64Unavailable, match="TPUs have no float64"):
            s = sp.singular_values(x[:, :, :12], method="gram")    # a new shape: traced again
        with pytest.warns(sp.Float64Unavailable):
            stats = sp.spectrum_statistics(x[:, :4])
    assert s.dtype == jnp.float32
    np.testing.assert_array_equal(s, expected)
    assert all(v.dtype == jnp.float32 for v in stats.values())
