"""Balance and alignment of deep linear networks under SGD (Ziyin et al., NeurIPS 2024; the Ziyin talk).

f(x) = W_L ... W_1 x with W_k `(d, d)` (equal widths), data x ~ N(0, Sigma_x), y = V x + eps,
eps ~ N(0, sigma^2 I). Each hidden layer k = 1..L-1 has the charges D_k = W_{k+1}^T W_{k+1} - W_k W_k^T
(`spectrax.dynamics.symmetry.layer_charges`), conserved by gradient flow and moved by SGD's noise.
The source's claims for SGD's fixed point (Theorem 5.4 as the talk states it):

1. orthogonality: the intermediate layers W_{L-1}, ..., W_2 are scalar multiples of orthogonal
   matrices;
2. alignment: their product aligns with the singular vectors of the outer layers;
3. balance: sqrt(Sigma_eps) W_L, W_{L-1}, ..., W_2, W_1 sqrt(Sigma_x) all have the same norm, so
   with isotropic input noise every layer balances, and with anisotropic input noise the input layer
   does not (its norm is set by Sigma_x), while the intermediate ones still do.

What the recursion gives (derived here, checked by the tests). At a minimum of the product, the
per-sample gradient of W_k is 2 b_k h_{k-1}^T (h_k the forward activation, b_k = W_{k+1}^T b_{k+1}
the backpropagated error, b_L = e the residual), and E[dD_k] = 0 reads, with H_k = E[h_k h_k^T],
G_k = E[b_k b_k^T] (x and the label noise independent):

    tr(G_{k+1}) H_k = tr(H_{k-1}) G_k          (noise balance: representation ∝ gradient covariance)

(`noise_balance_residual`). It is solved by `balanced_solution`: with Sigma_hat = d Sigma_x / tr Sigma_x
and P s Q^T the SVD of V Sigma_hat^1/2,

    W_1 = alpha R_1 s^1/2 Q^T Sigma_hat^-1/2,  W_k = gamma R_k R_{k-1}^T (1 < k < L),  W_L = beta P s^1/2 R_{L-1}^T

for any orthogonal R_k, with alpha^2 tr s = beta^2 tr s = d gamma^2 = c and alpha beta gamma^(L-2) = 1:

    ||W_1 Sigma_hat^1/2||_F^2 = ||W_k||_F^2 = ||W_L||_F^2 = c = d (||V Sigma_hat^1/2||_* / d)^(2/L)

(`balanced_norm`; ||.||_* the nuclear norm). So the source's claims hold with Sigma_x normalized to
mean eigenvalue 1: the noise level cancels from the equilibrium (it sets only how fast SGD gets
there). With Sigma_x ∝ I all L layers share the norm c; with anisotropic Sigma_x, ||W_1||_F^2 =
(c / tr s) tr(s Q^T Sigma_hat^-1 Q) differs from c while the intermediate layers (and W_L) still
sit at c. Alignment is measured as the normalized commutator of W_{k+1}^T W_{k+1} and W_k W_k^T
(`misalignment`, 0 iff the left singular vectors of W_k are right singular vectors of W_{k+1});
orthogonality as `orthogonality_defect`. With anisotropic inputs alignment holds for W_1 Sigma_hat^1/2
(`whiten_input`), not for the raw W_1.

Under GD (gamma = 0) the D_k stay near their initial values, so unbalanced or misaligned starts
stay unbalanced and misaligned.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

__all__ = [
    "balanced_norm",
    "balanced_solution",
    "init_layers",
    "layer_norms",
    "misalignment",
    "noise_balance_residual",
    "normalized_covariance",
    "observe",
    "orthogonality_defect",
    "whiten_input",
    "whitened_input_norm",
]

Layers = tuple[jax.Array, ...]


def init_layers(key: jax.Array, dim: int, scales: jax.Array) -> Layers:
    """L layers `(d, d)`, W_k = scales[k] N(0, 1/d): with unequal scales, an unbalanced start
    (E ||W_k||_F^2 = d scales[k]^2). scales `(L,)`; the dtype is the scales'."""
    chex.assert_rank(scales, 1)
    keys = jax.random.split(key, scales.shape[0])
    return tuple(s * jax.random.normal(k, (dim, dim), scales.dtype) / jnp.sqrt(jnp.asarray(dim, scales.dtype))
                 for k, s in zip(keys, scales))


def whiten_input(weights: Layers, input_cov: jax.Array) -> Layers:
    """(W_1 Sigma_hat^1/2, W_2, ..., W_L): the input layer as the equilibrium sees it (the source's
    "W_1 sqrt(Sigma_x)"); balance and alignment hold for these with anisotropic inputs."""
    chex.assert_rank(input_cov, 2)
    return (weights[0] @ _sqrt_psd(normalized_covariance(input_cov))[0], *weights[1:])


def layer_norms(weights: Layers) -> jax.Array:
    """||W_k||_F^2 per layer `(L,)`, input layer first."""
    return jnp.stack([jnp.sum(w * w) for w in weights])


def normalized_covariance(cov: jax.Array) -> jax.Array:
    """Sigma_hat = d Sigma / tr Sigma `(d, d)`: the covariance at mean eigenvalue 1 (the scale
    cancels from SGD's equilibrium)."""
    chex.assert_rank(cov, 2)
    return cov * (cov.shape[0] / jnp.trace(cov))


def _sqrt_psd(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    vals, vecs = jnp.linalg.eigh(a)
    return (vecs * jnp.sqrt(vals)) @ vecs.T, (vecs / jnp.sqrt(vals)) @ vecs.T


def whitened_input_norm(w1: jax.Array, input_cov: jax.Array) -> jax.Array:
    """||W_1 Sigma_hat^1/2||_F^2 = tr(W_1 Sigma_hat W_1^T): the input layer's norm as the balance
    sees it. w1 `(d_1, d_0)`, input_cov `(d_0, d_0)`."""
    chex.assert_rank([w1, input_cov], 2)
    chex.assert_equal(w1.shape[1], input_cov.shape[0])
    return jnp.trace(w1 @ normalized_covariance(input_cov) @ w1.T)


def balanced_norm(teacher: jax.Array, input_cov: jax.Array, num_layers: int) -> jax.Array:
    """c = d (||V Sigma_hat^1/2||_* / d)^(2/L): every balanced layer's ||.||_F^2 at SGD's equilibrium
    (isotropic label noise, widths all d). teacher `(d, d)`, input_cov `(d, d)`."""
    chex.assert_rank([teacher, input_cov], 2)
    chex.assert_equal_shape([teacher, input_cov])
    if num_layers < 2:
        raise ValueError(f"need >= 2 layers (got {num_layers})")
    d = teacher.shape[0]
    nuclear = jnp.sum(jnp.linalg.svd(teacher @ _sqrt_psd(normalized_covariance(input_cov))[0], compute_uv=False))
    return d * (nuclear / d) ** (2.0 / num_layers)


def balanced_solution(teacher: jax.Array, input_cov: jax.Array, num_layers: int) -> Layers:
    """The closed-form equilibrium of the module docstring with every R_k = I: L layers `(d, d)`
    whose product is the teacher and which satisfy the noise balance."""
    chex.assert_rank([teacher, input_cov], 2)
    chex.assert_equal_shape([teacher, input_cov])
    if num_layers < 2:
        raise ValueError(f"need >= 2 layers (got {num_layers})")
    d = teacher.shape[0]
    half, inv_half = _sqrt_psd(normalized_covariance(input_cov))
    p, s, qt = jnp.linalg.svd(teacher @ half)
    c = d * (jnp.sum(s) / d) ** (2.0 / num_layers)
    alpha = jnp.sqrt(c / jnp.sum(s))
    gamma = jnp.sqrt(c / d)
    beta = 1.0 / (alpha * gamma ** (num_layers - 2))
    root = jnp.sqrt(s)
    first = alpha * (root[:, None] * qt) @ inv_half
    last = beta * p * root
    middle = tuple(gamma * jnp.eye(d, dtype=teacher.dtype) for _ in range(num_layers - 2))
    return (first, *middle, last)


def noise_balance_residual(weights: Layers, input_cov: jax.Array, noise_cov: jax.Array) -> jax.Array:
    """Per hidden layer k = 1..L-1 `(L-1,)`: ||A_k - B_k||_F / ||A_k||_F with A_k = H_k / tr H_{k-1},
    B_k = G_k / tr G_{k+1} (population moments at the minimum: H_0 = Sigma_x, G_L = Sigma_eps).
    0 iff E[dD_k] = 0 at the minimum: SGD's equilibrium condition on the charges."""
    chex.assert_rank([input_cov, noise_cov], 2)
    h = [input_cov]
    for w in weights:
        h.append(w @ h[-1] @ w.T)
    g = [noise_cov]
    for w in weights[::-1]:
        g.append(w.T @ g[-1] @ w)
    g = g[::-1]  # g[k] = G_k, k = 0..L
    out = []
    for k in range(1, len(weights)):
        a = h[k] / jnp.trace(h[k - 1])
        b = g[k] / jnp.trace(g[k + 1])
        out.append(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
    return jnp.stack(out)


def misalignment(below: jax.Array, above: jax.Array) -> jax.Array:
    """||[W_{k+1}^T W_{k+1}, W_k W_k^T]||_F / (||W_{k+1}^T W_{k+1}||_F ||W_k W_k^T||_F) for below = W_k
    `(d_k, d_{k-1})`, above = W_{k+1} `(d_{k+1}, d_k)`: 0 iff the two Gram matrices share eigenvectors
    (W_k's left singular vectors are W_{k+1}'s right ones); at most sqrt(2)."""
    chex.assert_rank([below, above], 2)
    chex.assert_equal(above.shape[1], below.shape[0])
    a = above.T @ above
    b = below @ below.T
    return jnp.linalg.norm(a @ b - b @ a) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))


def orthogonality_defect(w: jax.Array) -> jax.Array:
    """||W^T W / (||W||_F^2 / d) - I||_F / sqrt(d) for a square W `(d, d)`: 0 iff W is a scalar
    multiple of an orthogonal matrix."""
    chex.assert_rank(w, 2)
    chex.assert_equal(w.shape[0], w.shape[1])
    d = w.shape[0]
    gram = w.T @ w
    return jnp.linalg.norm(gram * (d / jnp.trace(gram)) - jnp.eye(d, dtype=w.dtype)) / jnp.sqrt(
        jnp.asarray(d, w.dtype))


def observe(input_cov: jax.Array, noise_cov: jax.Array):
    """An `observe` for `symmetry.train`: weights -> dict of layer_norms `(L,)`, whitened_input_norm
    `()`, misalignment `(L-1,)` per adjacent pair of `whiten_input(weights)`, orthogonality `(L-2,)`
    of the intermediate layers, noise_balance `(L-1,)`."""

    def fn(weights: Layers) -> dict[str, Any]:
        ortho = [orthogonality_defect(w) for w in weights[1:-1]]
        white = whiten_input(weights, input_cov)
        return {
            "layer_norms": layer_norms(weights),
            "whitened_input_norm": whitened_input_norm(weights[0], input_cov),
            "misalignment": jnp.stack([misalignment(b, a) for b, a in zip(white[:-1], white[1:])]),
            "orthogonality": jnp.stack(ortho) if ortho else jnp.zeros((0,), weights[0].dtype),
            "noise_balance": noise_balance_residual(weights, input_cov, noise_cov),
        }

    return fn
