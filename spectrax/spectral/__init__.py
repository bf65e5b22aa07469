"""Pure jnp spectral kernels: batched SVDs, factored QK/OV kernels, metrics, ESD fits, nulls.

Every kernel takes arrays batched over leading axes such as `(layers, heads, head_dim, hidden)`,
upcasts bf16/f16 to float32 inside, and is jit-compiled once per shape. Every matrix product runs
at `Precision.HIGHEST` (full float32 on TPUs and TF32 GPUs, whatever `jax.default_matmul_precision`
says); float64 is used where asked for and the backend has it (`float64_unavailable`), float32
otherwise. See docs/spectral.md.
"""

from spectrax.spectral import alignment
from spectrax.spectral._util import Float64Unavailable, float64_unavailable
from spectrax.spectral.bidiagonal import (
    Bidiagonal,
    bidiagonal_singular_values,
    chi_bidiagonal,
    chi_degrees_of_freedom,
    gaussian_bidiagonal,
)
from spectrax.spectral.decompose import LQ, METHODS, SVDResult, lq, singular_values, svd
from spectrax.spectral.esd import (
    MPFit,
    PowerLawFit,
    eigenvalues,
    ks_gaussian,
    ks_mp,
    ks_two_sample,
    mp_fit,
    powerlaw_fit,
)
from spectrax.spectral.factored import (
    OVCircuitSVD,
    QKKernelSVD,
    factored_singular_values,
    factored_svd,
    ov_circuit_svd,
    qk_kernel_singular_values,
    qk_kernel_svd,
)
from spectrax.spectral.gqa import gqa_pair, group_size, kv_head_index
from spectrax.spectral.marchenko_pastur import (
    aspect_ratio,
    fit_mp_scale,
    mp_cdf,
    mp_density,
    mp_edges,
    mp_quantile,
    singular_value_edges,
)
from spectrax.spectral.metrics import (
    ScaleFit,
    condition_number,
    effective_rank,
    grassmann,
    max_mean,
    mean_abs_cos,
    pairwise_grassmann,
    pearson,
    projector_energy,
    scale_fit,
    sigma_max,
    ssr,
    stable_rank,
)
from spectrax.spectral.nulls import (
    NullSummary,
    abs_cos_std,
    cos_null,
    expected_abs_cos,
    gaussian_null,
    gaussian_singular_values,
    gaussian_spectrum_draws,
    gaussian_spectrum_null,
    grassmann_chance,
    grassmann_null,
    null_columns,
    null_from_draws,
    percentile,
    pool_null,
    shuffle_entries,
    shuffle_null,
    split_null,
    zscore,
)
from spectrax.spectral.pairs import (
    PAIR_STATISTICS,
    SPECTRA_PAIR_STATISTICS,
    SPECTRUM_STATISTICS,
    exact_pair_nulls,
    gqa_pair_statistics,
    pair_statistics,
    singular_value_statistics,
    spectra_pair_statistics,
    spectrum_statistics,
)
from spectrax.spectral.sharding import (
    BATCH_AXIS,
    cpu_devices_env,
    gather_layers,
    layerwise_null,
    local_mesh,
    pad_batch,
    padded_size,
    process_layers,
    shard_batch,
    sharded,
)

__all__ = [
    "alignment",
    # float64 where the backend has it
    "Float64Unavailable",
    "float64_unavailable",
    # decompose
    "LQ",
    "METHODS",
    "SVDResult",
    "lq",
    "singular_values",
    "svd",
    # factored kernels and GQA pairing
    "OVCircuitSVD",
    "QKKernelSVD",
    "factored_singular_values",
    "factored_svd",
    "ov_circuit_svd",
    "qk_kernel_singular_values",
    "qk_kernel_svd",
    "gqa_pair",
    "group_size",
    "kv_head_index",
    # metrics
    "ScaleFit",
    "condition_number",
    "effective_rank",
    "grassmann",
    "max_mean",
    "mean_abs_cos",
    "pairwise_grassmann",
    "pearson",
    "projector_energy",
    "scale_fit",
    "sigma_max",
    "ssr",
    "stable_rank",
    # Marchenko-Pastur
    "aspect_ratio",
    "fit_mp_scale",
    "mp_cdf",
    "mp_density",
    "mp_edges",
    "mp_quantile",
    "singular_value_edges",
    # ESD
    "MPFit",
    "PowerLawFit",
    "eigenvalues",
    "ks_gaussian",
    "ks_mp",
    "ks_two_sample",
    "mp_fit",
    "powerlaw_fit",
    # chi bidiagonals: Gaussian spectra in O(k^2)
    "Bidiagonal",
    "bidiagonal_singular_values",
    "chi_bidiagonal",
    "chi_degrees_of_freedom",
    "gaussian_bidiagonal",
    # nulls
    "NullSummary",
    "abs_cos_std",
    "cos_null",
    "expected_abs_cos",
    "gaussian_null",
    "gaussian_singular_values",
    "gaussian_spectrum_draws",
    "gaussian_spectrum_null",
    "grassmann_chance",
    "grassmann_null",
    "null_columns",
    "null_from_draws",
    "percentile",
    "pool_null",
    "shuffle_entries",
    "shuffle_null",
    "split_null",
    "zscore",
    # bundled statistics
    "PAIR_STATISTICS",
    "SPECTRA_PAIR_STATISTICS",
    "SPECTRUM_STATISTICS",
    "exact_pair_nulls",
    "gqa_pair_statistics",
    "pair_statistics",
    "singular_value_statistics",
    "spectra_pair_statistics",
    "spectrum_statistics",
    # device distribution
    "BATCH_AXIS",
    "cpu_devices_env",
    "gather_layers",
    "layerwise_null",
    "local_mesh",
    "pad_batch",
    "padded_size",
    "process_layers",
    "shard_batch",
    "sharded",
]
