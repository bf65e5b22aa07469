"""GaLore (Zhao et al., ICML 2024): gradient low-rank projection as an optax transformation.

For a matrix parameter W `(m, n)` with gradient G, GaLore keeps the optimizer state in a rank-r
subspace of the gradient instead of the full `(m, n)` space:

    P_t   = top-r singular vectors of G_t on the SMALLER side of W, recomputed every T steps
    R_t   = G_t P_t  `(m, r)`  if m >= n   (P `(n, r)`: right singular vectors, "right" projection)
          = P_tᵀ G_t `(r, n)`  if m <  n   (P `(m, r)`: left singular vectors, "left" projection)
    N_t   = base(R_t)          the base optimizer (Adam by default), its state of R's shape
    ΔW_t  = α N_t P_tᵀ  or  α P_t N_t      projected back, scaled by α

This is the side convention of the paper (project on the smaller dimension) and, checked line by
line, of the reference code (`galore_torch/galore_projector.py`, `proj_type="std"`): for
`shape[0] >= shape[1]` it takes the first r rows of Vᵀ and multiplies the gradient on the right,
otherwise the first r columns of U on the left. Square matrices go right, as in the code. (The reference stores the right projector as Vᵀ[:r] `(r, n)`; here every projector is
stored as orthonormal columns, `(n, r)` or `(m, r)`.) The projector is refreshed at step 0 and
every T steps thereafter; the base state is carried across a refresh unchanged, as in the reference.

Memory of one `(m, n)` matrix under GaLore(Adam): projector min(m, n) r plus two moments
2 max(m, n) r, against 2 m n for Adam (the paper's table: mr + 2nr for m <= n).

Consequences the tests hold:

- With the projector on the smaller side, P is square orthogonal at full rank r = min(m, n), so
  P Pᵀ = I on that side and GaLore(SGD) with α = 1 is exactly SGD at every step, refresh or not.
- `optax.contrib.scale_by_galore` (optax 0.2.8) projects a tall matrix (m >= n) with the LEFT
  singular vectors `(m, r)`, i.e. on the larger side. That is not the paper's algorithm: even at
  full rank its U Uᵀ only spans the column space of the gradient it was computed from, so between
  refreshes GaLore(SGD) drifts away from SGD. (It does store less: max r + 2 min r per matrix.)

Non-matrix leaves (vectors, scalars, stacked tensors) and matrices excluded by `mask` go to the
base optimizer at full size and are not scaled by α (the reference scales only projected
parameters). The rank is clipped to min(m, n), as the reference's slicing does.

Everything is pure and traces once under jit: shapes are static, the refresh is a `lax.cond` on
`count % T == 0`. Under `vmap` over seeds keep `count` unbatched (`vmap_axes`): a batched
predicate turns the cond into a select and the SVD would run at every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "GaLoreState",
    "adam_state_bytes",
    "galore",
    "galore_adam",
    "project",
    "project_back",
    "projection_side",
    "projector_shape",
    "state_bytes",
    "top_projector",
    "vmap_axes",
]

_FLOATS = (jnp.float32, jnp.float64)


class GaLoreState(NamedTuple):
    """count `()` int32: updates so far. projectors: the params' structure, a projector `(k, r)`
    (k = min(m, n)) at each projected `(m, n)` leaf (`(..., k, r)` for a stack `(..., m, n)`) and
    `optax.MaskedNode()` elsewhere. base_state: the base optimizer's state over the low-rank tree
    (projected leaves `(..., m, r)` or `(..., r, n)`, others at full size)."""

    count: jax.Array
    projectors: Any
    base_state: optax.OptState


def projection_side(shape: tuple[int, ...]) -> str:
    """"right" (R = G P, P `(n, r)`) for `(m, n)` with m >= n, "left" (R = Pᵀ G, P `(m, r)`) for m < n."""
    if len(shape) != 2:
        raise ValueError(f"GaLore projects matrices; got shape {shape}")
    return "right" if shape[0] >= shape[1] else "left"


def projector_shape(shape: tuple[int, ...], rank: int) -> tuple[int, int]:
    """Projector of an `(m, n)` matrix: `(min(m, n), min(rank, m, n))`, always on the smaller side."""
    projection_side(shape)
    m, n = shape
    return min(m, n), min(rank, m, n)


def top_projector(grad: jax.Array, rank: int) -> jax.Array:
    """Top-`rank` singular vectors of `grad` `(m, n)` on its smaller side: `(min(m, n), r)`.

    The SVD runs in float32 at least (bf16/f16 gradients are upcast); the result has grad's dtype.
    """
    chex.assert_rank(grad, 2)
    work = grad if grad.dtype in _FLOATS else grad.astype(jnp.float32)
    u, _, vt = jnp.linalg.svd(work, full_matrices=False)
    _, r = projector_shape(grad.shape, rank)
    p = vt[:r].T if projection_side(grad.shape) == "right" else u[:, :r]
    return p.astype(grad.dtype)


def project(grad: jax.Array, projector: jax.Array) -> jax.Array:
    """Low-rank gradient: `(m, n) -> (m, r)` as G P (m >= n) or `(r, n)` as Pᵀ G (m < n)."""
    chex.assert_rank([grad, projector], 2)
    if projection_side(grad.shape) == "right":
        chex.assert_axis_dimension(projector, 0, grad.shape[1])
        return grad @ projector
    chex.assert_axis_dimension(projector, 0, grad.shape[0])
    return projector.T @ grad


def project_back(low: jax.Array, projector: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Inverse map of `project` into the `shape = (m, n)` space: N Pᵀ (m >= n) or P N (m < n)."""
    chex.assert_rank([low, projector], 2)
    if projection_side(shape) == "right":
        return low @ projector.T
    return projector @ low


def _resolve_mask(mask: Any, params: Any) -> Any:
    """The params-shaped tree of Python bools saying which leaves to project (2-D leaves only)."""
    if mask is None:
        return jax.tree.map(lambda p: np.ndim(p) == 2, params)
    chosen = mask(params) if callable(mask) else mask

    def check(path, p, flag):
        if flag and np.ndim(p) < 2:
            raise ValueError(f"mask selects {jax.tree_util.keystr(path)} of shape {np.shape(p)} for "
                             "projection; GaLore projects 2-D matrices (or stacks of them, (..., m, n))")
        return bool(flag)

    return jax.tree_util.tree_map_with_path(check, params, chosen)


def galore(rank: int, *, base: optax.GradientTransformation, update_proj_gap: int = 200,
           scale: float = 0.25, mask: Any | Callable[[Any], Any] | None = None) -> optax.GradientTransformation:
    """GaLore around `base`: the base optimizer runs on rank-`rank` projected gradients.

    Args:
      rank: r, the projection rank (clipped to min(m, n) per matrix).
      base: the optimizer in the low-rank space, learning rate included (e.g. `optax.adam(1e-2)`).
        It is called without params, so transformations that need them (`adamw`'s decay) are
        refused by optax; chain weight decay after `galore` instead.
      update_proj_gap: T, steps between SVD refreshes of the projectors (step 0 included).
      scale: α, applied to the projected-back updates of projected matrices only (paper: 0.25).
      mask: None (project every 2-D leaf), or a params-shaped tree of bools / a callable
        `params -> tree of bools`; True projects a leaf, False sends it to `base` at full size.
        A selected leaf of more than two axes `(..., m, n)` is a stack of `(m, n)` matrices, each
        with its own projector `(..., k, r)` (e.g. the stacked layers of `spectrax.load`).

    Returns:
      An `optax.GradientTransformation` whose state is a `GaLoreState`.
    """
    if not isinstance(rank, int | np.integer) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1 (got {rank!r})")
    if not isinstance(update_proj_gap, int | np.integer) or update_proj_gap < 1:
        raise ValueError(f"update_proj_gap must be an integer >= 1 (got {update_proj_gap!r})")
    if not isinstance(base, optax.GradientTransformation):
        raise ValueError(f"base must be an optax.GradientTransformation (got {type(base).__name__})")
    rank, gap = int(rank), int(update_proj_gap)

    def init(params):
        flags = _resolve_mask(mask, params)

        def leaf(p, flag):
            if not flag:
                return optax.MaskedNode(), p
            *stack, m, n = p.shape
            k, r = projector_shape((m, n), rank)
            low = (m, r) if projection_side((m, n)) == "right" else (r, n)
            return jnp.zeros((*stack, k, r), p.dtype), jnp.zeros((*stack, *low), p.dtype)

        pairs = jax.tree.map(leaf, params, flags)
        projectors = jax.tree.map(lambda _, pair: pair[0], params, pairs)
        low = jax.tree.map(lambda _, pair: pair[1], params, pairs)
        return GaLoreState(jnp.zeros((), jnp.int32), projectors, base.init(low))

    def update(updates, state, params=None):
        del params  # the base sees low-rank shapes: params of the full shape mean nothing to it
        chex.assert_rank(state.count, 0)
        refresh = state.count % gap == 0

        def down(g, p):
            if isinstance(p, optax.MaskedNode):
                return p, g
            chex.assert_equal_rank([g, p])
            p = jax.lax.cond(refresh, lambda: _per_matrix(lambda m: top_projector(m, rank), g.ndim)(g), lambda: p)
            return p, _per_matrix(project, g.ndim)(g, p)

        pairs = jax.tree.map(down, updates, state.projectors)
        projectors = jax.tree.map(lambda _, pair: pair[0], updates, pairs)
        low = jax.tree.map(lambda _, pair: pair[1], updates, pairs)
        low_updates, base_state = base.update(low, state.base_state, None)

        def up(g, n, p):
            if isinstance(p, optax.MaskedNode):
                return n
            back = _per_matrix(lambda n, p: project_back(n, p, g.shape[-2:]), g.ndim)(n, p)
            return (scale * back).astype(g.dtype)

        out = jax.tree.map(up, updates, low_updates, projectors)
        return out, GaLoreState(optax.safe_int32_increment(state.count), projectors, base_state)

    return optax.GradientTransformation(init, update)


def _per_matrix(fn: Callable, ndim: int) -> Callable:
    """`fn` of `(m, n)` matrices (array arguments) mapped over the leading axes of `ndim`-axis stacks."""
    for _ in range(ndim - 2):
        fn = jax.vmap(fn)
    return fn


def galore_adam(learning_rate: float, rank: int, *, update_proj_gap: int = 200, scale: float = 0.25,
                mask: Any = None, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """The paper's GaLore-Adam: `galore(rank, base=optax.adam(learning_rate, b1, b2, eps), ...)`."""
    return galore(rank, base=optax.adam(learning_rate, b1=b1, b2=b2, eps=eps), update_proj_gap=update_proj_gap,
                  scale=scale, mask=mask)


def state_bytes(tree: Any) -> int:
    """Bytes held by the array leaves of `tree` (arrays or `jax.ShapeDtypeStruct`s, e.g. from
    `jax.eval_shape(opt.init, params)`); `MaskedNode`s and other empty nodes count zero."""
    return int(sum(int(np.prod(np.shape(x), dtype=np.int64)) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree)))


def adam_state_bytes(params: Any) -> int:
    """Bytes of a full `optax.adam` state for `params` (two moments of every leaf plus the count),
    computed without allocating it."""
    return state_bytes(jax.eval_shape(optax.adam(1e-3).init, params))


def vmap_axes(opt_state: Any, axis: int = 0) -> Any:
    """`in_axes`/`out_axes` for an optimizer state vmapped over a leading (seed) axis, with the
    `count` of every `GaLoreState` unbatched so the projector refresh stays a real branch."""
    def leaf(x):
        if isinstance(x, GaLoreState):
            return GaLoreState(None, jax.tree.map(lambda _: axis, x.projectors),
                               jax.tree.map(lambda _: axis, x.base_state))
        return axis

    return jax.tree.map(leaf, opt_state, is_leaf=lambda x: isinstance(x, GaLoreState))
