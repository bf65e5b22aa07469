"""Spectral line navigator: line graph and Laplacian against hand-built cases and a float64 loop
reference, BFS, the walks against what is provable (Fiedler order on paths, degree-only distances of
the full unscaled embedding, cycles reported rather than looped), the random baseline against its
closed form and against brute-force path enumeration, and Wilson intervals against published values.

One evaluate() call (one compiled program, float64) on a fixed sample serves the walk tests.
"""

import itertools
from collections import deque

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectrax.dynamics import navigator as nv

N = 10  # padding size of the shared sample


# ----------------------------------------------------------------------------- references


def bfs_reference(adj: np.ndarray) -> np.ndarray:
    n = len(adj)
    dist = np.full((n, n), -1)
    for s in range(n):
        dist[s, s] = 0
        queue = deque([s])
        while queue:
            a = queue.popleft()
            for b in np.flatnonzero(adj[a]):
                if dist[s, b] < 0:
                    dist[s, b] = dist[s, a] + 1
                    queue.append(b)
    return dist


def line_laplacian_reference(adj: np.ndarray):
    """Edges in (u < v) lexicographic order, the line graph by explicit loops, Chung's L."""
    n = len(adj)
    edges = [(a, b) for a in range(n) for b in range(a + 1, n) if adj[a, b]]
    m = len(edges)
    line = np.zeros((m, m))
    for i, j in itertools.product(range(m), range(m)):
        if i != j and set(edges[i]) & set(edges[j]):
            line[i, j] = 1.0
    deg = line.sum(1)
    lap = np.zeros((m, m))
    for i, j in itertools.product(range(m), range(m)):
        if i == j:
            lap[i, j] = 1.0 if deg[i] > 0 else 0.0
        elif line[i, j]:
            lap[i, j] = -1.0 / np.sqrt(deg[i] * deg[j])
    return edges, line, lap


def greedy_reference(adj: np.ndarray, x: np.ndarray, s: int, t: int, rtol: float) -> int:
    """The navigator step by step with explicit loops and a visited set: length, or -1 on a revisit."""
    n = len(adj)
    slot = {e: k for k, e in enumerate(zip(*np.triu_indices(n, 1)))}

    def emb(a, b):
        return x[slot[(min(a, b), max(a, b))]]

    scale = max(1.0, float(np.max(np.sum(x * x, axis=1))))
    targets = [emb(k, t) for k in np.flatnonzero(adj[t])]
    node, seen, steps = s, {s}, 0
    while node != t:
        scores = [(min(float(np.sum((emb(node, j) - f) ** 2)) for f in targets), j) for j in np.flatnonzero(adj[node])]
        best = min(sc for sc, _ in scores)
        node = min(j for sc, j in scores if sc <= best + rtol * scale)  # ties: smallest index
        steps += 1
        if node in seen:
            return -1
        seen.add(node)
    return steps


def shortest_path_probability_reference(adj: np.ndarray, s: int, t: int) -> float:
    """Sum over every shortest s-t path of prod 1/deg: enumerate the paths."""
    dist = bfs_reference(adj)
    deg = adj.sum(1)

    def paths(a):
        if a == t:
            yield [a]
            return
        for b in np.flatnonzero(adj[a]):
            if dist[b, t] == dist[a, t] - 1:
                for rest in paths(b):
                    yield [a] + rest

    return sum(np.prod([1.0 / deg[a] for a in p[:-1]]) for p in paths(s))


def pad(adj: np.ndarray, n: int = N) -> np.ndarray:
    out = np.zeros((n, n), bool)
    out[: len(adj), : len(adj)] = adj
    return out


def from_edges(n: int, edges) -> np.ndarray:
    adj = np.zeros((n, n), bool)
    for a, b in edges:
        adj[a, b] = adj[b, a] = True
    return adj


def relabel(adj: np.ndarray, perm: np.ndarray) -> np.ndarray:
    return adj[np.ix_(perm, perm)]


# ----------------------------------------------------------------------------- the shared sample


def sample_graphs():
    """Randomly labelled paths P_3..P_10, the cycle C_8 (labels in cycle order), random G(n, 1/2)."""
    rng = np.random.default_rng(0)
    graphs, sizes, kinds = [], [], []
    for n in range(3, 11):
        perm = rng.permutation(n)
        graphs.append(pad(relabel(from_edges(n, [(i, i + 1) for i in range(n - 1)]), perm)))
        sizes.append(n)
        kinds.append("path")
    graphs.append(pad(from_edges(8, [(i, (i + 1) % 8) for i in range(8)])))
    sizes.append(8)
    kinds.append("cycle")
    for n in (6, 7, 8, 9):
        g = nv.random_connected_graphs(jax.random.key(n), 6, n, 0.5, max_nodes=N)
        graphs += list(g)
        sizes += [n] * len(g)
        kinds += ["random"] * len(g)
    return np.stack(graphs), np.asarray(sizes, np.int32), np.asarray(kinds)


VARIANTS = [(None, "commute"), (None, "none"), (1, "none"), (None, "inverse_sqrt"), (1, "commute")]


@pytest.fixture(scope="module")
def sample():
    adj, sizes, kinds = sample_graphs()
    with jax.enable_x64(True):
        queries = nv.evaluate(jax.random.key(7), adj, sizes, variants=VARIANTS)
        embeddings = [np.asarray(nv.edge_embedding(jnp.asarray(adj), dim=d, scale=sc).x) for d, sc in VARIANTS]
    return adj, sizes, kinds, queries, embeddings


# ----------------------------------------------------------------------------- graphs and spectra


def test_line_graph_and_laplacian_of_hand_built_graphs():
    path = from_edges(4, [(0, 1), (1, 2), (2, 3)])
    present, line = nv.line_graph(jnp.asarray(path))
    # slots of N = 4: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    np.testing.assert_array_equal(present, [1, 0, 0, 1, 0, 1])
    expected = np.zeros((6, 6), bool)
    expected[0, 3] = expected[3, 0] = expected[3, 5] = expected[5, 3] = True
    np.testing.assert_array_equal(line, expected)
    lap = np.asarray(nv.normalized_laplacian(line, present))
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(lap[np.ix_([0, 3, 5], [0, 3, 5])], [[1, -r, 0], [-r, 1, -r], [0, -r, 1]], atol=1e-6)
    np.testing.assert_allclose(np.diag(lap)[[1, 2, 4]], 4.0)  # absent slots sit outside the spectrum
    # L(P4) = P3: eigenvalues 0, 1, 2 (then the padding)
    np.testing.assert_allclose(np.linalg.eigvalsh(lap), [0, 1, 2, 4, 4, 4], atol=1e-5)

    triangle = from_edges(3, [(0, 1), (1, 2), (0, 2)])
    star = from_edges(4, [(0, 1), (0, 2), (0, 3)])
    for graph in (triangle, star):  # both line graphs are K3: L = I - A/2, eigenvalues 0, 3/2, 3/2
        present, line = nv.line_graph(jnp.asarray(graph))
        idx = np.flatnonzero(present)
        assert len(idx) == 3 and np.asarray(line)[np.ix_(idx, idx)].sum() == 6
        lap = np.asarray(nv.normalized_laplacian(line, present))[np.ix_(idx, idx)]
        np.testing.assert_allclose(lap, np.eye(3) - (1 - np.eye(3)) / 2, atol=1e-6)
        np.testing.assert_allclose(np.linalg.eigvalsh(lap), [0, 1.5, 1.5], atol=1e-5)


def test_isolated_vertex_follows_chung():
    a = jnp.asarray(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], bool))
    np.testing.assert_allclose(nv.normalized_laplacian(a), [[1, -1, 0], [-1, 1, 0], [0, 0, 0]], atol=1e-6)


def test_laplacian_and_spectrum_match_float64_reference():
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        for trial in range(6):
            n = int(rng.integers(4, 9))
            adj = np.triu(rng.random((n, n)) < 0.45, 1)
            adj = adj | adj.T  # possibly disconnected, possibly with isolated vertices
            edges, line_ref, lap_ref = line_laplacian_reference(adj)
            adj = pad(adj, 8)  # one shape for every trial: compiled once
            present, line = nv.line_graph(jnp.asarray(adj))
            idx = np.flatnonzero(present)
            assert [tuple(e) for e in np.stack(nv.edge_slots(8), 1)[idx]] == edges
            np.testing.assert_array_equal(np.asarray(line)[np.ix_(idx, idx)], line_ref)
            lap = np.asarray(nv.normalized_laplacian(line, present))
            assert lap.dtype == np.float64
            np.testing.assert_allclose(lap[np.ix_(idx, idx)], lap_ref, atol=1e-14)
            emb = nv.edge_embedding(jnp.asarray(adj), scale="none")
            w = np.asarray(emb.eigenvalues)
            np.testing.assert_allclose(w[: len(idx)], np.linalg.eigvalsh(lap_ref), atol=1e-12)
            # kept = the nonzero eigenvalues; the zero ones are the line graph's components
            components = len(idx) - np.linalg.matrix_rank(lap_ref, tol=1e-9)
            assert int(np.asarray(emb.kept).sum()) == len(idx) - components


def test_bfs_distances_match_reference():
    rng = np.random.default_rng(5)
    adjs = []
    for _ in range(8):
        a = np.triu(rng.random((9, 9)) < 0.3, 1)
        adjs.append(a | a.T)
    adjs = np.stack(adjs)
    got = np.asarray(nv.shortest_path_lengths(jnp.asarray(adjs)))
    for a, d in zip(adjs, got):
        np.testing.assert_array_equal(d, bfs_reference(a))
    assert (got < 0).any()  # the sample does contain unreachable pairs


def test_random_connected_graphs_are_the_conditioned_model():
    key = jax.random.key(11)
    graphs = nv.random_connected_graphs(key, 2000, 3, 0.5, max_nodes=5)
    assert graphs.shape == (2000, 5, 5)
    np.testing.assert_array_equal(graphs, np.swapaxes(graphs, 1, 2))
    assert not graphs[:, np.arange(5), np.arange(5)].any() and not graphs[:, 3:].any()
    assert (np.asarray(nv.shortest_path_lengths(jnp.asarray(graphs[:, :3, :3]))) >= 0).all()
    # G(3, 1/2) given connected is uniform over the 3 paths and the triangle: mean 9/4 edges
    edges = graphs.sum(axis=(1, 2)) / 2
    assert abs(edges.mean() - 2.25) < 4 * np.sqrt(3 / 16 / 2000)
    np.testing.assert_array_equal(graphs, nv.random_connected_graphs(key, 2000, 3, 0.5, max_nodes=5))
    with pytest.raises(ValueError):
        nv.random_connected_graphs(key, 5, 4, 0.0)


# ----------------------------------------------------------------------------- embeddings


def test_full_unscaled_embedding_sees_only_degrees():
    """All nonzero eigenvectors, unscaled: ||x_e - x_f||^2 = 2 - (sqrt d_e - sqrt d_f)^2 / vol exactly."""
    with jax.enable_x64(True):
        for n in (5, 7, 9):
            adj = nv.random_connected_graphs(jax.random.key(n), 1, n, 0.5, max_nodes=9)[0]
            emb = nv.edge_embedding(jnp.asarray(adj), scale="none")
            present, line = nv.line_graph(jnp.asarray(adj))
            idx = np.flatnonzero(present)
            x = np.asarray(emb.x)[idx]
            deg = np.asarray(line).sum(1)[idx].astype(float)
            sq = np.sum((x[:, None] - x[None]) ** 2, axis=-1)
            expected = 2 - (np.sqrt(deg)[:, None] - np.sqrt(deg)[None]) ** 2 / deg.sum()
            np.fill_diagonal(expected, 0.0)
            np.testing.assert_allclose(sq, expected, atol=1e-10)


def test_commute_scaling_is_the_commute_time():
    """scale="commute": vol(L(G)) * ||x_e - x_f||^2 equals the random walk's commute time between
    edges e and f on the line graph, computed here from hitting times by linear solves."""
    adj = from_edges(5, [(0, 1), (1, 2), (2, 3), (3, 0), (1, 3), (3, 4)])
    _, line_ref, _ = line_laplacian_reference(adj)
    m = len(line_ref)
    deg = line_ref.sum(1)
    walk = line_ref / deg[:, None]
    hitting = np.zeros((m, m))  # hitting[a, b]: expected steps from a to first reach b
    for b in range(m):
        rest = [a for a in range(m) if a != b]
        sub = np.eye(m - 1) - walk[np.ix_(rest, rest)]
        hitting[rest, b] = np.linalg.solve(sub, np.ones(m - 1))
    commute = hitting + hitting.T
    with jax.enable_x64(True):
        emb = nv.edge_embedding(jnp.asarray(adj), scale="commute")
    x = np.asarray(emb.x)[np.asarray(emb.present)]
    sq = np.sum((x[:, None] - x[None]) ** 2, axis=-1)
    np.testing.assert_allclose(deg.sum() * sq, commute, rtol=1e-10, atol=1e-10)


def test_degenerate_eigenspace_is_kept_whole():
    """C_6's line graph is C_6: its smallest nonzero eigenvalue has multiplicity 2, so dim=1 keeps
    both eigenvectors and the embedding is rotation-symmetric (every edge equally far from its
    neighbours), whatever basis eigh returned."""
    cycle = from_edges(6, [(i, (i + 1) % 6) for i in range(6)])
    with jax.enable_x64(True):
        emb = nv.edge_embedding(jnp.asarray(cycle), dim=1, scale="none")
        assert int(np.asarray(emb.kept).sum()) == 2
        np.testing.assert_allclose(np.asarray(emb.eigenvalues)[np.asarray(emb.kept)], 1 - np.cos(np.pi / 3), atol=1e-12)
        slot = {e: k for k, e in enumerate(zip(*nv.edge_slots(6)))}
        ring = [slot[tuple(sorted((i, (i + 1) % 6)))] for i in range(6)]
        x = np.asarray(emb.x)[ring]
        gaps = np.sum((x - np.roll(x, 1, axis=0)) ** 2, axis=1)
        np.testing.assert_allclose(gaps, gaps[0], rtol=1e-10)
        assert gaps[0] > 0.1
    with pytest.raises(ValueError):
        nv.edge_embedding(jnp.asarray(cycle), scale="bogus")
    with pytest.raises(ValueError):
        nv.edge_embedding(jnp.asarray(cycle), dim=0)


# ----------------------------------------------------------------------------- walks


def test_navigator_matches_a_step_by_step_reference(sample):
    adj, sizes, kinds, queries, embeddings = sample
    rtol = float(np.sqrt(np.finfo(np.float64).eps))
    checked = 0
    for v in range(len(VARIANTS)):
        for g in np.flatnonzero(kinds != "path")[::3]:
            n = sizes[g]
            a = adj[g, :n, :n]
            u, w = nv.edge_slots(N)
            keep = (u < n) & (w < n)
            x = embeddings[v][g][keep]  # slots of N restricted to pairs among the first n nodes
            for s, t in itertools.permutations(range(n), 2):
                assert queries.nav_length[v, g, s, t] == greedy_reference(a, x, s, t, rtol), (VARIANTS[v], g, s, t)
                checked += 1
    assert checked > 500


def test_fiedler_navigator_is_optimal_on_paths(sample):
    """The line graph of P_n is the path P_m (m = n - 1 edges). Its normalized Laplacian's Fiedler
    vector is u_j = sqrt(d_j) cos(pi j / (m - 1)) (endpoints have d = 1, the rest d = 2): the
    random-walk form f = D^{-1/2} u is strictly monotone, so with dim=1 and the commute scaling
    (rows times d^{-1/2}) every greedy step moves toward the target and every query is optimal,
    whatever the labels. u itself is not strictly monotone for m >= 5 (m = 5: u = (1, 1, 0, -1, -1),
    a tie; m >= 6: u_0 = 1 < u_1 = sqrt(2) cos(pi / (m - 1))), and the unscaled dim=1 navigator
    fails on exactly those paths."""
    _, sizes, kinds, queries, _ = sample
    paths = kinds == "path"
    valid = queries.valid[paths]
    commute, plain = VARIANTS.index((1, "commute")), VARIANTS.index((1, "none"))
    np.testing.assert_array_equal(queries.nav_length[commute][paths][valid], queries.distance[paths][valid])
    for g in np.flatnonzero(paths):
        n = sizes[g]
        optimal = queries.nav_length[plain, g] == queries.distance[g]
        assert optimal[queries.valid[g]].all() == (n - 1 <= 4), n
    # the closed form of the Fiedler vector, on P_8 (m = 7)
    m = 7
    j = np.arange(m)
    u = np.sqrt(np.where((j == 0) | (j == m - 1), 1.0, 2.0)) * np.cos(np.pi * j / (m - 1))
    with jax.enable_x64(True):
        emb = nv.edge_embedding(jnp.asarray(from_edges(8, [(i, i + 1) for i in range(7)])), dim=1, scale="none")
    slot = {e: k for k, e in enumerate(zip(*nv.edge_slots(8)))}
    got = np.asarray(emb.x)[[slot[(i, i + 1)] for i in range(7)]][:, np.asarray(emb.kept)][:, 0]
    np.testing.assert_allclose(np.abs(got @ u) / (np.linalg.norm(got) * np.linalg.norm(u)), 1.0, atol=1e-12)


def test_adjacent_targets_are_always_reached_in_one_step(sample):
    """With every nonzero eigenvector kept, only the edge (i, t) itself is at distance 0 from a
    target edge, so distance-1 queries are optimal for every scaling."""
    _, _, _, queries, _ = sample
    one = queries.valid & (queries.distance == 1)
    for v, (dim, _) in enumerate(VARIANTS):
        if dim is None:
            assert (queries.nav_length[v][one] == 1).all()


def test_ties_and_cycles_terminate_and_are_reported(sample):
    """C_8 has every line-graph degree 2: the full unscaled embedding makes every candidate a tie,
    the smallest-index rule sends walks round in circles, and they come back as failures (-1)."""
    _, _, kinds, queries, _ = sample
    v = VARIANTS.index((None, "none"))
    g = int(np.flatnonzero(kinds == "cycle")[0])
    far = queries.valid[g] & (queries.distance[g] >= 2)
    assert queries.nav_tied[v, g][far].all()
    lengths = queries.nav_length[v, g][far]
    assert (lengths == -1).sum() > 5 and set(np.unique(lengths)) <= {-1} | set(range(1, 8))
    table = nv.optimal_fraction_table(queries, None, v)
    assert table["nav_failures"][0] == (queries.nav_length[v][queries.valid] < 0).sum() > 0
    # a hand-made move table with a 2-cycle: the walk stops at the bound and says so
    nxt = jnp.asarray(np.array([[0, 2, 1], [0, 1, 0], [1, 1, 2]], np.int32))
    length, tie = nv.greedy_walk(nxt, jnp.zeros((3, 3), bool), 2)
    assert int(length[1, 2]) == -1 and int(length[0, 2]) == -1 and int(length[1, 0]) == 1 and not tie.any()


def test_random_walk_probability_closed_form_and_monte_carlo(sample):
    adj, sizes, kinds, queries, _ = sample
    rng = np.random.default_rng(4)
    for g in rng.choice(np.flatnonzero(kinds == "random"), 3, replace=False):
        n = sizes[g]
        for s, t in list(itertools.permutations(range(n), 2))[::5]:
            np.testing.assert_allclose(queries.rw_optimal_prob[g, s, t],
                                       shortest_path_probability_reference(adj[g, :n, :n], s, t), rtol=1e-12)
    # Monte Carlo: the sample's walks against the exact probabilities (z-score of the total)
    q = queries.rw_optimal_prob[queries.valid]
    hits = (queries.rw_length == queries.distance)[queries.valid]
    assert abs(hits.sum() - q.sum()) / np.sqrt(np.sum(q * (1 - q))) < 4
    # more walks on one graph: per-pair frequencies over 200 keys
    g = int(np.flatnonzero(kinds == "random")[0])
    a = jnp.asarray(adj[g])
    walks = jax.jit(jax.vmap(lambda k: nv.random_walk(k, a, sizes[g] - 1)))(jax.random.split(jax.random.key(3), 200))
    freq = np.mean(np.asarray(walks) == queries.distance[g], axis=0)
    p = queries.rw_optimal_prob[g]
    mask = queries.valid[g]
    assert np.all(np.abs(freq - p)[mask] <= 4.5 * np.sqrt(p * (1 - p) / 200)[mask] + 1e-9)


def test_baseline_is_worse_than_the_navigator(sample):
    _, _, kinds, queries, _ = sample
    sub = nv.Queries(*[x[:, kinds == "random"] if name in ("nav_length", "nav_tied") else x[kinds == "random"]
                       for name, x in zip(nv.Queries._fields, queries)])
    row = nv.optimal_fraction_table(sub, None, VARIANTS.index((None, "commute")))
    assert row["n_queries"][0] > 1000
    assert row["nav_frac"][0] > 0.95 and row["rw_frac"][0] < 0.4
    assert row["nav_lo"][0] > row["rw_hi"][0] + 0.5  # the intervals are far apart
    assert row["nav_failures"][0] == 0


def test_evaluate_refuses_bad_input():
    ok = pad(from_edges(3, [(0, 1), (1, 2)]))[None]
    with pytest.raises(ValueError):
        nv.check_graphs(pad(from_edges(4, [(0, 1), (2, 3)]))[None], [4])  # disconnected
    with pytest.raises(ValueError):
        nv.check_graphs(ok, [2])  # node 2 has an edge but is called padding
    bad = ok.copy()
    bad[0, 0, 2] = True
    with pytest.raises(ValueError):
        nv.check_graphs(bad, [3])  # not symmetric
    with pytest.raises(ValueError):
        nv.variant_codes([(None, "spectral")])


# ----------------------------------------------------------------------------- statistics


def test_wilson_interval_published_values():
    """Newcombe (1998), Stat. Med. 17:857, Table I, method 3 (score interval without continuity correction)."""
    for (k, n), (lo, hi) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605),
                             (0, 20): (0.0, 0.1611), (1, 29): (0.0061, 0.1718)}.items():
        got = nv.wilson_interval(k, n)
        np.testing.assert_allclose([float(got[0]), float(got[1])], [lo, hi], atol=6e-5)
    lo, hi = nv.wilson_interval(np.array([10, 0]), np.array([10, 0]))
    assert lo[0] < 1.0 == hi[0] and np.isnan(lo[1]) and np.isnan(hi[1])
