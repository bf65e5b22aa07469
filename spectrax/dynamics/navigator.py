"""The spectral line navigator (Cohen, Gromov, Yang, Tian, ICLR 2025 workshop, "Spectral Journey").

A 2-layer transformer trained to output shortest paths on small graphs learns edge embeddings that
correlate with the eigenvectors of the normalized Laplacian of the graph's *line graph*. The talk
(the Tian talk, "Spectral Line Navigator (SLN)") turns that into an algorithm and claims it is ">99%
optimal for small random graph (size < 10)":

    1. compute the line graph L(G) of G;
    2. compute the eigenvectors of the normalized Laplacian of L(G) (edge embeddings v_e);
    3. i = source;
    4. while i != target:  j = argmin over neighbours j of i and neighbours k of the target of
       ||v_(i,j) - v_(k,target)||_2;  i = j.

Everything below is that algorithm with each choice the talk leaves open made explicit.

Graphs. Undirected, simple, as a boolean adjacency `(N, N)` (batched `(G, N, N)`); a graph with n < N
nodes uses nodes 0..n-1 and leaves the rest isolated (padding). `random_connected_graphs` draws
Erdős–Rényi G(n, p) graphs conditioned on being connected (rejection sampling, which is exactly the
conditional law), keyed by a PRNG key.

Line graph. Edge slot e = (u_e, v_e), u_e < v_e, enumerates all E = N(N-1)/2 node pairs in
`np.triu_indices` order; `present[e]` says whether the pair is an edge. Two present slots are
adjacent in L(G) iff they share an endpoint. Working over all slots keeps every shape static.

Normalized Laplacian. L = I - D^{-1/2} A D^{-1/2} (Chung's convention: L_ii = 1 if d_i > 0, 0 for an
isolated vertex). Absent slots get the diagonal value 4 and no off-diagonal entries, so L is
block-diagonal (real block ⊕ 4·I): its real eigenvalues are those of the line graph's own
Laplacian (all in [0, 2]), eigenvectors of the real block vanish on the absent slots, and the
padding eigenvalues sort last. The real eigenvalue 0 has the line graph's number of components as
multiplicity (1 for a connected G with >= 2 edges).

Edge embedding (the talk does not say which eigenvectors, nor how they are scaled). With the
nonzero real eigenpairs (λ_k, u_k) of L, edge e is embedded as x_e[k] = c_k · s_e · u_k[e], with

    dim    None: every nonzero eigenvalue; an int k: the k smallest nonzero eigenvalues, extended to
           the whole eigenspace of the k-th one (so the embedding distances do not depend on which
           basis of a degenerate eigenspace LAPACK returns: ties are common on small graphs);
    scale  "none":         c_k = 1,          s_e = 1            (the eigenvectors as they are);
           "inverse_sqrt": c_k = λ_k^{-1/2}, s_e = 1            (||x_e - x_f||^2 = (1_e - 1_f)ᵀ L⁺ (1_e - 1_f));
           "commute":      c_k = λ_k^{-1/2}, s_e = d_e^{-1/2}   (vol · ||x_e - x_f||^2 = the random
                                                                walk's commute time between e and f on L(G)).

Eigenvalues count as zero below sqrt(eps) of the dtype, and as equal within sqrt(eps).

The literal reading "all eigenvectors, unscaled" (dim=None, scale "none") is degenerate, exactly:
the rows of the full orthogonal eigenvector matrix are orthonormal, and the one column dropped (the
zero eigenvector, u_0[e] = sqrt(d_e / vol), vol = Σ_e d_e) gives, for a connected line graph,
||x_e - x_f||^2 = 2 - (sqrt(d_e) - sqrt(d_f))^2 / vol for e != f. Distances depend on line-graph
degrees alone (the navigator then walks to the neighbour whose edge degree differs most from the
target's edges), so the embedding must be truncated or weighted to carry the geometry.

Navigator. From node i toward target t, the score of neighbour j is
min over edges (k, t) of G of ||x_(i,j) - x_(k,t)||^2 (squared: same argmin); the next node is the
neighbour of smallest score. Scores within a relative sqrt(eps) of the minimum count as tied and the
tie goes to the smallest node index; a step with tied candidates is recorded. The rule depends only
on (i, t), so the walk is a deterministic memoryless map i -> next(i, t): if it has not reached t
after n - 1 steps it has repeated a node and cycles forever. The bound n - 1 therefore detects
every failure exactly; failures are reported, never looped on.

Baseline. A random walk that moves to a uniformly random neighbour each step, with the same step
bound. Its probability of taking a shortest path has a closed form: with d = BFS distance to t,
q(t) = 1 and q(i) = (1 / deg i) Σ_{j ~ i, d(j) = d(i) - 1} q(j) (`random_walk_optimal_probability`),
which the Monte Carlo walk is held against.

Measured findings (which run, what held and what did not): docs/dynamics.md, "Findings by module", `navigator`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SCALES",
    "EdgeEmbedding",
    "Queries",
    "check_graphs",
    "edge_embedding",
    "edge_slots",
    "evaluate",
    "evaluate_graphs",
    "greedy_walk",
    "line_graph",
    "navigator_next_hops",
    "normalized_laplacian",
    "optimal_fraction_table",
    "random_connected_graphs",
    "random_walk",
    "random_walk_optimal_probability",
    "shortest_path_lengths",
    "variant_codes",
    "wilson_interval",
]

SCALES = ("none", "inverse_sqrt", "commute")
_PAD_EIGENVALUE = 4.0  # outside the normalized Laplacian's spectrum [0, 2]: padding sorts last
_VARIANT_FIELDS = ("nav_length", "nav_tied")
_Z95 = 1.959963984540054  # standard normal 97.5% quantile


class EdgeEmbedding(NamedTuple):
    """Per graph (leading batch axes allowed), E = N(N-1)/2 edge slots:
    x `(E, E)` edge embeddings (row e = slot e; zero rows for absent slots, zero columns for
    eigenvectors not kept); eigenvalues `(E,)` of the padded Laplacian, ascending (real ones in
    [0, 2], padding = 4); kept `(E,)` bool, the eigen-columns used; present `(E,)` bool."""

    x: jax.Array
    eigenvalues: jax.Array
    kept: jax.Array
    present: jax.Array


class Queries(NamedTuple):
    """Every ordered (source s, target t) pair of G graphs padded to N nodes; arrays `(G, N, N)`
    indexed [graph, s, t], the navigator's `(V, G, N, N)` with V embedding variants first.

    valid: s != t and both are real nodes; distance: BFS shortest-path length (-1 unreachable);
    nav_length `(V, G, N, N)`: steps the navigator took to reach t (-1: it cycles, never reaching t);
    nav_tied `(V, G, N, N)`: a step of its walk had tied candidates (broken by smallest index);
    rw_length: steps the random walk took (-1: not within the bound);
    rw_optimal_prob: exact probability that the random walk takes a shortest path;
    num_nodes `(G,)`: real nodes per graph."""

    valid: jax.Array
    distance: jax.Array
    nav_length: jax.Array
    nav_tied: jax.Array
    rw_length: jax.Array
    rw_optimal_prob: jax.Array
    num_nodes: jax.Array


def _float_dtype(dtype=None):
    return jax.dtypes.canonicalize_dtype(jnp.float64 if dtype is None else dtype)


def _tol(dtype) -> float:
    return float(np.sqrt(np.finfo(dtype).eps))


# ----------------------------------------------------------------------------- graphs


def edge_slots(num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) `(E,)` int32 with u < v: the E = N(N-1)/2 node pairs, in `np.triu_indices` order."""
    u, v = np.triu_indices(num_nodes, 1)
    return u.astype(np.int32), v.astype(np.int32)


def _slot_of(num_nodes: int) -> np.ndarray:
    """`(N, N)` int32: the slot of pair {i, j} (the diagonal, never an edge, maps to slot 0)."""
    u, v = edge_slots(num_nodes)
    slot = np.zeros((num_nodes, num_nodes), np.int32)
    slot[u, v] = slot[v, u] = np.arange(len(u), dtype=np.int32)
    return slot


def shortest_path_lengths(adj: jax.Array) -> jax.Array:
    """BFS distances `(..., N, N)` int32 of adjacency `(..., N, N)` bool; -1 where unreachable."""
    chex.assert_rank(adj, {2, 3})
    n = adj.shape[-1]
    adj = adj.astype(bool)
    eye = jnp.broadcast_to(jnp.eye(n, dtype=bool), adj.shape)
    dist0 = jnp.where(eye, 0, -1).astype(jnp.int32)

    def body(k, carry):
        reached, dist = carry
        # frontier expansion as a boolean matrix product: row s reaches j if it reaches a neighbour of j
        new = jnp.any(reached[..., :, :, None] & adj[..., None, :, :], axis=-2) & ~reached
        return reached | new, jnp.where(new, k, dist)

    _, dist = jax.lax.fori_loop(1, max(n, 2), body, (eye, dist0))
    return dist


def _connected(adj: np.ndarray) -> np.ndarray:
    """`(G,)` bool: node 0 reaches every node of each graph `(G, n, n)` (host-side, numpy)."""
    reach = np.zeros(adj.shape[:2], bool)
    reach[:, 0] = True
    for _ in range(adj.shape[-1] - 1):
        reach |= np.einsum("gi,gij->gj", reach.astype(np.int32), adj.astype(np.int32)) > 0
    return reach.all(axis=1)


def random_connected_graphs(key: jax.Array, num_graphs: int, num_nodes: int, p: float = 0.5, *,
                            max_nodes: int | None = None, max_rounds: int = 1000) -> np.ndarray:
    """`(num_graphs, max_nodes, max_nodes)` bool: Erdős–Rényi G(num_nodes, p) graphs conditioned on
    connectivity (rejection sampling), padded with isolated nodes up to `max_nodes` (default
    num_nodes). Round r draws candidates with `fold_in(key, r)`, so the result is a pure function of
    the arguments."""
    n_max = num_nodes if max_nodes is None else max_nodes
    if num_nodes < 1 or n_max < num_nodes or num_graphs < 0 or not 0.0 < p <= 1.0:
        raise ValueError("need 1 <= num_nodes <= max_nodes, num_graphs >= 0 and 0 < p <= 1")
    u, v = edge_slots(num_nodes)
    # one draw shape for every n (the columns past the graph's pairs are unused): compiled once
    batch, width = 256, max(len(u), 45)
    accepted: list[np.ndarray] = []
    count = 0
    for r in range(max_rounds):
        if count >= num_graphs:
            break
        draw = np.asarray(jax.random.uniform(jax.random.fold_in(key, r), (batch, width)))[:, : len(u)] < p
        adj = np.zeros((batch, num_nodes, num_nodes), bool)
        adj[:, u, v] = draw
        adj |= np.swapaxes(adj, 1, 2)
        connected = _connected(adj)
        accepted.append(adj[connected])
        count += int(connected.sum())
    else:
        if count < num_graphs:
            raise ValueError(f"G({num_nodes}, {p}) is connected too rarely: {count} graphs in {max_rounds} rounds")
    graphs = np.concatenate(accepted + [np.zeros((0, num_nodes, num_nodes), bool)])[:num_graphs]
    out = np.zeros((num_graphs, n_max, n_max), bool)
    out[:, :num_nodes, :num_nodes] = graphs
    return out


# ----------------------------------------------------------------------------- spectra


def line_graph(adj: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Line graph over all edge slots: present `(..., E)` bool and adjacency `(..., E, E)` bool
    (two present slots are adjacent iff they share an endpoint) of adjacency `(..., N, N)`."""
    chex.assert_rank(adj, {2, 3})
    u, v = edge_slots(adj.shape[-1])
    present = adj.astype(bool)[..., u, v]
    share = ((u[:, None] == u[None, :]) | (u[:, None] == v[None, :]) | (v[:, None] == u[None, :])
             | (v[:, None] == v[None, :])) & ~np.eye(len(u), dtype=bool)
    return present, jnp.asarray(share) & present[..., :, None] & present[..., None, :]


def normalized_laplacian(a: jax.Array, mask: jax.Array | None = None, *, dtype=None) -> jax.Array:
    """L = I - D^{-1/2} A D^{-1/2} `(..., K, K)` of a 0/1 symmetric adjacency `(..., K, K)`.

    Isolated vertices get L_ii = 0 (Chung); vertices outside `mask` `(..., K)` (which must have no
    edges) get L_ii = 4, outside the spectrum, so they separate from the graph's own eigenpairs."""
    chex.assert_rank(a, {2, 3})
    dtype = _float_dtype(dtype)
    a = a.astype(dtype)
    deg = jnp.sum(a, axis=-1)
    inv_sqrt = jnp.where(deg > 0, jax.lax.rsqrt(jnp.maximum(deg, jnp.ones((), dtype))), jnp.zeros((), dtype))
    diag = jnp.where(deg > 0, jnp.ones((), dtype), jnp.zeros((), dtype))
    if mask is not None:
        chex.assert_equal_shape_prefix([a, mask], a.ndim - 1)
        diag = jnp.where(mask, diag, jnp.asarray(_PAD_EIGENVALUE, dtype))
    lap = -inv_sqrt[..., :, None] * a * inv_sqrt[..., None, :]
    return lap + diag[..., :, None] * jnp.eye(a.shape[-1], dtype=dtype)


def _variant_codes(dim, scale) -> tuple[int, int]:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; use one of {SCALES}")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1):
        raise ValueError(f"dim must be None or an int >= 1 (got {dim!r})")
    return (0 if dim is None else int(dim)), SCALES.index(scale)


def _embed(adj: jax.Array, dim_code: jax.Array, scale_code: jax.Array, dtype) -> EdgeEmbedding:
    """`edge_embedding` with the variant as (possibly traced) int32 codes: dim_code 0 = all nonzero
    eigenvalues, k >= 1 = the k smallest; scale_code = index in SCALES. One compiled program then
    serves every variant."""
    tol = _tol(dtype)
    one, zero = jnp.ones((), dtype), jnp.zeros((), dtype)
    present, line = line_graph(adj)
    lap = normalized_laplacian(line, present, dtype=dtype)
    w, vecs = jnp.linalg.eigh(lap)
    nonzero = (w > tol) & (w < _PAD_EIGENVALUE - 1.0)
    rank = jnp.cumsum(nonzero, axis=-1, dtype=jnp.int32)
    # the k-th smallest nonzero eigenvalue (the largest one if there are fewer), then its whole eigenspace
    kth = jnp.min(jnp.where(nonzero & (rank == dim_code), w, jnp.inf), axis=-1, keepdims=True)
    kth = jnp.where(jnp.isinf(kth), jnp.max(jnp.where(nonzero, w, -jnp.inf), axis=-1, keepdims=True), kth)
    kept = nonzero & ((dim_code <= 0) | (w <= kth + tol))
    weight = jnp.where(scale_code == 0, one, jax.lax.rsqrt(jnp.where(kept, w, one)))
    x = vecs * jnp.where(kept, weight, zero)[..., None, :]
    deg = jnp.sum(line.astype(dtype), axis=-1)
    row = jnp.where((scale_code == 2) & (deg > 0), jax.lax.rsqrt(jnp.maximum(deg, one)), one)
    x = jnp.where(present[..., :, None], x * row[..., None], zero)
    return EdgeEmbedding(x=x, eigenvalues=w, kept=kept, present=present)


def edge_embedding(adj: jax.Array, *, dim: int | None = None, scale: str = "commute",
                   dtype=None) -> EdgeEmbedding:
    """Spectral edge embedding of adjacency `(..., N, N)`: the module docstring's x_e[k] = c_k s_e u_k[e]
    from the normalized Laplacian of the line graph (`dim`: None = all nonzero eigenvalues, k = the
    k smallest nonzero ones plus the rest of the k-th one's eigenspace; `scale` in SCALES)."""
    chex.assert_rank(adj, {2, 3})
    dim_code, scale_code = _variant_codes(dim, scale)
    return _embed(adj, jnp.int32(dim_code), jnp.int32(scale_code), _float_dtype(dtype))


# ----------------------------------------------------------------------------- walks


def navigator_next_hops(adj: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The navigator's move table of one graph: next `(N, N)` int32 [i, t] = the node it steps to
    from i toward t, and tied `(N, N)` bool [i, t] = several neighbours shared the minimal score.

    adj `(N, N)` bool; x `(E, D)` edge embeddings (rows of absent slots are ignored). next[t, t] = t;
    a node without neighbours stays put."""
    chex.assert_rank([adj, x], [2, 2])
    n = adj.shape[-1]
    u, v = edge_slots(n)
    chex.assert_axis_dimension(x, 0, len(u))
    adj = adj.astype(bool)
    present = adj[u, v]
    sq_norm = jnp.sum(x * x, axis=-1)
    sq = jnp.maximum(sq_norm[:, None] + sq_norm[None, :] - 2.0 * (x @ x.T), jnp.zeros((), x.dtype))
    sq = jnp.where(jnp.eye(len(u), dtype=bool), jnp.zeros((), x.dtype), sq)  # exactly 0 to itself
    incident = jnp.asarray((np.arange(n)[:, None] == u[None, :]) | (np.arange(n)[:, None] == v[None, :])) & present
    inf = jnp.asarray(jnp.inf, x.dtype)
    # to_target[e, t] = min over the target's edges f of ||x_e - x_f||^2
    to_target = jnp.min(jnp.where(incident[None, :, :], sq[:, None, :], inf), axis=-1)
    score = jnp.where(adj[:, :, None], to_target[jnp.asarray(_slot_of(n))], inf)  # [i, j, t]
    best = jnp.min(score, axis=1, keepdims=True)
    # Gram-form distances carry rounding ~ eps * |x|^2: ties are judged at sqrt(eps) of that scale.
    slack = _tol(x.dtype) * jnp.maximum(jnp.max(sq_norm), jnp.ones((), x.dtype))
    cand = score <= best + slack
    nxt = jnp.argmax(cand, axis=1).astype(jnp.int32)
    tied = jnp.sum(cand, axis=1) > 1
    nodes = jnp.arange(n, dtype=jnp.int32)
    is_target = nodes[:, None] == nodes[None, :]
    stuck = ~jnp.any(adj, axis=1)[:, None]
    nxt = jnp.where(is_target, nodes[None, :], jnp.where(stuck, nodes[:, None], nxt))
    return nxt, tied & ~is_target & ~stuck


def greedy_walk(next_hops: jax.Array, tied: jax.Array, max_steps: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """Walk every (s, t) pair along `next_hops` `(N, N)`: length `(N, N)` int32 [s, t] = steps to
    reach t (0 for s = t, -1 if not within `max_steps`), and tied_any `(N, N)` bool (a step of the
    walk had tied candidates). The loop runs N - 1 steps; `max_steps` (scalar, may be traced) caps
    the steps that count."""
    chex.assert_rank([next_hops, tied], [2, 2])
    n = next_hops.shape[-1]
    s = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, n))
    t = s.T

    def body(k, carry):
        pos, length, tie = carry
        active = (pos != t) & (k <= max_steps)
        tie = tie | (active & tied[pos, t])
        pos = jnp.where(active, next_hops[pos, t], pos)
        length = jnp.where(active & (pos == t), k, length)
        return pos, length, tie

    length0 = jnp.where(s == t, 0, -1).astype(jnp.int32)
    _, length, tie = jax.lax.fori_loop(1, max(n, 2), body, (s, length0, jnp.zeros((n, n), bool)))
    return length, tie


def random_walk(key: jax.Array, adj: jax.Array, max_steps: int | jax.Array) -> jax.Array:
    """Random-neighbour walks for every (s, t) pair of one graph `(N, N)`, independent per pair:
    length `(N, N)` int32 = steps to first reach t (-1 if not within `max_steps`). Step k draws with
    `fold_in(key, k)`."""
    chex.assert_rank(adj, 2)
    n = adj.shape[-1]
    adj = adj.astype(bool)
    s = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, n))
    t = s.T
    deg = jnp.sum(adj, axis=1, dtype=jnp.int32)
    cum = jnp.cumsum(adj, axis=1, dtype=jnp.int32)  # cum[i, j] = neighbours of i among 0..j

    def body(k, carry):
        pos, length = carry
        # the r-th neighbour of pos, r uniform in {0, ..., deg - 1}
        draw = jax.random.uniform(jax.random.fold_in(key, k), (n, n))
        r = jnp.floor(draw * deg[pos].astype(draw.dtype)).astype(jnp.int32)
        step = jnp.argmax(cum[pos] > r[..., None], axis=-1).astype(jnp.int32)
        active = (pos != t) & (k <= max_steps) & (deg[pos] > 0)
        pos = jnp.where(active, step, pos)
        return pos, jnp.where(active & (pos == t), k, length)

    length0 = jnp.where(s == t, 0, -1).astype(jnp.int32)
    _, length = jax.lax.fori_loop(1, max(n, 2), body, (s, length0))
    return length


def random_walk_optimal_probability(adj: jax.Array, dist: jax.Array, *, dtype=None) -> jax.Array:
    """Exact P(random-neighbour walk from s reaches t along a shortest path) `(N, N)` [s, t], from
    adjacency `(N, N)` and BFS distances `(N, N)`: q(t) = 1, q(i) = mean over neighbours j of
    [d(j) = d(i) - 1] q(j). 0 where t is unreachable."""
    chex.assert_rank([adj, dist], [2, 2])
    dtype = _float_dtype(dtype)
    n = adj.shape[-1]
    a = adj.astype(dtype)
    deg = jnp.maximum(jnp.sum(a, axis=1), jnp.ones((), dtype))
    down = a[:, :, None] * (dist[None, :, :] == dist[:, None, :] - 1).astype(dtype)  # [i, j, t]
    eye = jnp.eye(n, dtype=bool)
    q0 = eye.astype(dtype)

    def body(_, q):
        return jnp.where(eye, q0, jnp.einsum("ijt,jt->it", down, q) / deg[:, None])

    return jax.lax.fori_loop(0, max(n - 1, 1), body, q0)


# ----------------------------------------------------------------------------- evaluation


def evaluate_graphs(keys: jax.Array, adj: jax.Array, num_nodes: jax.Array, bound: jax.Array,
                    variants: jax.Array, *, dtype=None) -> Queries:
    """Pure, traceable core of `evaluate` for B graphs and V embedding variants.

    keys `(B,)` PRNG keys of the random walks; adj `(B, N, N)` bool; num_nodes `(B,)` int32; bound
    `(B,)` int32 step bound of both walks; variants `(V, 2)` int32 rows (dim code, scale code) as
    made by `variant_codes`. Returns `Queries` with nav_length and nav_tied `(V, B, N, N)`."""
    chex.assert_rank([adj, num_nodes, bound, variants], [3, 1, 1, 2])
    dtype = _float_dtype(dtype)
    n = adj.shape[-1]

    def navigate(a, b, code):
        emb = _embed(a, code[0], code[1], dtype)
        nxt, tied = navigator_next_hops(a, emb.x)
        return greedy_walk(nxt, tied, b)

    def one(key, a, size, b):
        dist = shortest_path_lengths(a)
        nav_len, nav_tied = jax.vmap(navigate, in_axes=(None, None, 0))(a, b, variants)
        real = jnp.arange(n, dtype=jnp.int32) < size.astype(jnp.int32)
        valid = real[:, None] & real[None, :] & ~jnp.eye(n, dtype=bool)
        return (valid, dist, nav_len, nav_tied, random_walk(key, a, b),
                random_walk_optimal_probability(a, dist, dtype=dtype))

    valid, dist, nav_len, nav_tied, rw_len, q = jax.vmap(one)(keys, adj, num_nodes, bound)
    return Queries(valid, dist, jnp.moveaxis(nav_len, 1, 0), jnp.moveaxis(nav_tied, 1, 0), rw_len, q, num_nodes)


def variant_codes(variants) -> np.ndarray:
    """`(V, 2)` int32 codes of embedding variants given as (dim, scale) pairs (dim None = all)."""
    return np.asarray([_variant_codes(d, sc) for d, sc in variants], np.int32).reshape(-1, 2)


def check_graphs(adj, num_nodes) -> tuple[np.ndarray, np.ndarray]:
    """Validate a padded batch for `evaluate`: adj `(G, N, N)` symmetric bool without self-loops,
    num_nodes `(G,)` in [2, N], padding nodes isolated, each graph connected; raises ValueError."""
    adj = np.asarray(adj, bool)
    num_nodes = np.asarray(num_nodes, np.int32)
    chex.assert_rank(adj, 3)
    chex.assert_shape(num_nodes, (adj.shape[0],))
    n = adj.shape[-1]
    if np.any(adj != np.swapaxes(adj, 1, 2)) or np.any(adj[:, np.arange(n), np.arange(n)]):
        raise ValueError("adjacency must be symmetric with no self-loops")
    real = np.arange(n)[None, :] < num_nodes[:, None]
    if np.any(num_nodes < 2) or np.any(num_nodes > n) or np.any(adj & ~(real[:, :, None] & real[:, None, :])):
        raise ValueError("num_nodes must be in [2, N] and padding nodes must be isolated")
    for size in np.unique(num_nodes):
        if not _connected(adj[num_nodes == size][:, :size, :size]).all():
            raise ValueError("every graph must be connected on its real nodes")
    return adj, num_nodes


@functools.partial(jax.jit, static_argnames=("dtype",))
def _evaluate_jit(keys, adj, num_nodes, bound, variants, *, dtype):
    return evaluate_graphs(keys, adj, num_nodes, bound, variants, dtype=dtype)


def evaluate(key: jax.Array, adj, num_nodes, *, variants=((None, "commute"),), max_steps: int | None = None,
             dtype=None, chunk: int = 256) -> Queries:
    """Run the navigator (for each embedding variant (dim, scale)) and the random baseline on every
    ordered pair of G graphs; host arrays out (nav fields `(V, G, N, N)`, the rest `(G, N, N)`).

    adj `(G, N, N)` bool and num_nodes `(G,)` as `check_graphs` wants. `max_steps`: the step bound
    of both walks (default n - 1 per graph, which for the deterministic navigator detects every
    cycle exactly). Graph g's random walk uses `fold_in(key, g)`, so results do not depend on
    `chunk`; all chunks and variants share one compiled program."""
    adj, num_nodes = check_graphs(adj, num_nodes)
    codes = jnp.asarray(variant_codes(variants))
    g = adj.shape[0]
    bound = (num_nodes - 1 if max_steps is None else np.full(g, max_steps)).astype(np.int32)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(g))
    dtype = _float_dtype(dtype)
    parts = []
    for start in range(0, g, chunk):
        stop = min(start + chunk, g)
        pad = chunk - (stop - start) if g > chunk else 0  # one compiled shape for every chunk
        idx = np.concatenate([np.arange(start, stop), np.full(pad, start)])
        out = _evaluate_jit(keys[idx], jnp.asarray(adj[idx]), jnp.asarray(num_nodes[idx]), jnp.asarray(bound[idx]),
                            codes, dtype=dtype)
        keep = stop - start
        parts.append(Queries(*[np.asarray(x)[:, :keep] if name in _VARIANT_FIELDS else np.asarray(x)[:keep]
                               for name, x in zip(Queries._fields, out)]))
    if not parts:
        raise ValueError("no graphs to evaluate")
    return Queries(*[np.concatenate(xs, axis=1 if name in _VARIANT_FIELDS else 0)
                     for name, xs in zip(Queries._fields, zip(*parts))])


def wilson_interval(successes, trials, z: float = _Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (default 95%) for a binomial proportion; NaN where trials = 0.

    (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), p = successes / trials."""
    k = np.asarray(successes, np.float64)
    n = np.asarray(trials, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1.0 + z * z / n
        center = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # rounding can put an endpoint a hair past p at p = 0 or 1; the interval always contains p
    return np.clip(np.minimum(center - half, p), 0.0, 1.0), np.clip(np.maximum(center + half, p), 0.0, 1.0)


def optimal_fraction_table(queries: Queries, by: str | None = "distance", variant: int = 0) -> dict[str, np.ndarray]:
    """Optimal-path counts and fractions with Wilson 95% intervals for embedding variant `variant`,
    grouped `by` "distance" (BFS distance of the pair), "num_nodes" (graph size), or None (one row,
    key -1).

    Columns: key, n_queries; nav_optimal, nav_frac, nav_lo, nav_hi, nav_suboptimal (reached t by a
    longer path), nav_failures (cycles), nav_tied (walks with a tied step); rw_optimal, rw_frac, rw_lo,
    rw_hi, rw_failures (not within the bound), rw_theory (mean exact optimal probability)."""
    valid = np.asarray(queries.valid, bool)
    dist = np.asarray(queries.distance)[valid]
    nav = np.asarray(queries.nav_length)[variant][valid]
    rw = np.asarray(queries.rw_length)[valid]
    if by == "distance":
        keys = dist
    elif by == "num_nodes":
        keys = np.broadcast_to(np.asarray(queries.num_nodes)[:, None, None], valid.shape)[valid]
    elif by is None:
        keys = np.full(dist.shape, -1)
    else:
        raise ValueError(f"unknown grouping {by!r}; use 'distance', 'num_nodes' or None")
    groups = np.unique(keys)
    rows: dict[str, list] = {c: [] for c in (
        "key", "n_queries", "nav_optimal", "nav_frac", "nav_lo", "nav_hi", "nav_suboptimal", "nav_failures",
        "nav_tied", "rw_optimal", "rw_frac", "rw_lo", "rw_hi", "rw_failures", "rw_theory")}
    tied = np.asarray(queries.nav_tied)[variant][valid]
    theory = np.asarray(queries.rw_optimal_prob)[valid]
    for key in groups:
        sel = keys == key
        total = int(sel.sum())
        nav_opt = int(np.sum(nav[sel] == dist[sel]))
        rw_opt = int(np.sum(rw[sel] == dist[sel]))
        (nlo,), (nhi,) = (np.atleast_1d(a) for a in wilson_interval(nav_opt, total))
        (rlo,), (rhi,) = (np.atleast_1d(a) for a in wilson_interval(rw_opt, total))
        for name, value in (("key", int(key)), ("n_queries", total), ("nav_optimal", nav_opt),
                            ("nav_frac", nav_opt / total), ("nav_lo", nlo), ("nav_hi", nhi),
                            ("nav_suboptimal", int(np.sum(nav[sel] > dist[sel]))),
                            ("nav_failures", int(np.sum(nav[sel] < 0))), ("nav_tied", int(tied[sel].sum())),
                            ("rw_optimal", rw_opt), ("rw_frac", rw_opt / total), ("rw_lo", rlo), ("rw_hi", rhi),
                            ("rw_failures", int(np.sum(rw[sel] < 0))), ("rw_theory", float(theory[sel].mean()))):
            rows[name].append(value)
    return {c: np.asarray(v) for c, v in rows.items()}
