"""GaLore as an optax transformation, held against the paper's algorithm (docs/dynamics.md, Setups).

Small matrices, a tall (12, 5) and a wide (4, 9) one plus a vector, a few steps each: every test
runs in well under a second after compilation.

optax's Adam is not clean under strict dtype promotion (its bias correction raises a Python float
to an int32 count), so the tests that run it do so under `numpy_dtype_promotion("standard")`;
GaLore's own code runs strict (the SGD tests).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest

import spectrax.optim as gl

TALL, WIDE, VEC = (12, 5), (4, 9), (7,)


def make_params(key, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"tall": jax.random.normal(k1, TALL, dtype), "wide": jax.random.normal(k2, WIDE, dtype),
            "b": jax.random.normal(k3, VEC, dtype)}


def loss(params, x):
    """A nonlinear loss whose gradients turn from step to step (fresh x each step)."""
    h = jnp.tanh(x @ params["tall"] + params["b"][:5])  # (B, 5)
    y = jnp.tanh(h[:, :4] @ params["wide"])  # (B, 9)
    return jnp.mean(jnp.square(y - 0.5)) + jnp.mean(jnp.square(params["b"]))


def trajectory(opt, params, steps, key, dtype=jnp.float32):
    """Params after each of `steps` updates of `opt` (one fresh batch per step)."""
    @jax.jit
    def step(params, state, t):
        x = jax.random.normal(jax.random.fold_in(key, t), (16, 12), dtype)
        updates, state = opt.update(jax.grad(loss)(params, x), state, params)
        return optax.apply_updates(params, updates), state

    state, out = opt.init(params), []
    for t in range(steps):
        params, state = step(params, state, t)
        out.append(params)
    return out, state


def random_grads(key, dtype=jnp.float32):
    return make_params(key, dtype)


def test_full_rank_sgd_is_sgd():
    """Rank min(m, n), scale 1, base SGD: the same parameters as SGD at every step, refreshes
    (every 3 steps) and the steps between them alike, for tall, wide and vector parameters."""
    params = make_params(jax.random.key(0))
    ours, _ = trajectory(gl.galore(5, base=optax.sgd(0.3), update_proj_gap=3, scale=1.0), params, 8,
                         jax.random.key(1))
    sgd, _ = trajectory(optax.sgd(0.3), params, 8, jax.random.key(1))
    for a, b in zip(ours, sgd):
        for name in params:
            np.testing.assert_allclose(a[name], b[name], atol=1e-6, rtol=0)
    # the run moved: equality is not the trivial one of two optimizers that do nothing
    assert float(jnp.abs(sgd[-1]["tall"] - params["tall"]).max()) > 1e-2


def test_optax_contrib_projects_the_larger_side_and_drifts_from_sgd():
    """optax 0.2.8 has `optax.contrib.scale_by_galore`. For a tall matrix it keeps a `(m, r)`
    projector of left singular vectors (the larger side), ours keeps `(n, r)` right ones. At full
    rank its U Uᵀ only spans the column space of the refresh step's gradient, so at the next
    step GaLore(SGD) is no longer SGD; ours still is."""
    assert hasattr(optax.contrib, "scale_by_galore")
    w = {"tall": make_params(jax.random.key(2))["tall"]}
    theirs = optax.contrib.scale_by_galore(rank=5, update_proj_gap=100, scale=1.0, base_optimizer=optax.sgd(0.3))
    ours = gl.galore(5, base=optax.sgd(0.3), update_proj_gap=100, scale=1.0)
    assert jax.tree.leaves(theirs.init(w).projector)[0].shape == (12, 5)  # larger side
    assert ours.init(w).projectors["tall"].shape == (5, 5)  # smaller side

    def tall_loss(p, x):
        return jnp.mean(jnp.square(jnp.tanh(x @ p["tall"]) - 0.5))

    def run(opt):
        @jax.jit
        def step(p, state, t):
            x = jax.random.normal(jax.random.fold_in(jax.random.key(3), t), (16, 12))
            updates, state = opt.update(jax.grad(tall_loss)(p, x), state, p)
            return optax.apply_updates(p, updates), state

        p, state, out = w, opt.init(w), []
        for t in range(2):
            p, state = step(p, state, t)
            out.append(p["tall"])
        return out

    sgd, mine, contrib = run(optax.sgd(0.3)), run(ours), run(theirs)
    np.testing.assert_allclose(contrib[0], sgd[0], atol=1e-6)  # a refresh step: both exact
    np.testing.assert_allclose(mine[1], sgd[1], atol=1e-6)
    assert float(jnp.abs(contrib[1] - sgd[1]).max()) > 1e-3


def test_projector_is_on_the_smaller_side():
    """Tall (m > n): R = G P with P the top-r RIGHT singular vectors `(n, r)`; wide (m < n):
    R = Pᵀ G with P the top-r LEFT singular vectors `(m, r)`; the base state has R's shape."""
    params = make_params(jax.random.key(4))
    state = gl.galore(3, base=optax.sgd(1.0, momentum=0.9)).init(params)
    assert state.projectors["tall"].shape == (5, 3) and state.projectors["wide"].shape == (4, 3)
    assert isinstance(state.projectors["b"], optax.MaskedNode)
    trace = state.base_state[0].trace  # momentum buffer of sgd = the low-rank space
    assert trace["tall"].shape == (12, 3) and trace["wide"].shape == (3, 9) and trace["b"].shape == VEC
    assert gl.projection_side(TALL) == "right" and gl.projection_side(WIDE) == "left"

    opt = gl.galore(3, base=optax.sgd(1.0), update_proj_gap=10, scale=0.5)
    update = jax.jit(opt.update)
    g1, g2 = random_grads(jax.random.key(5)), random_grads(jax.random.key(6))
    updates, state = update(g1, opt.init(params))
    second, state = update(g2, state)  # no refresh: the step-0 projector applied to another gradient
    for name, side in (("tall", "right"), ("wide", "left")):
        g = np.asarray(g1[name], np.float64)
        u, _, vt = np.linalg.svd(g, full_matrices=False)
        want, other = (vt[:3].T, u[:, :3]) if side == "right" else (u[:, :3], vt[:3].T)
        p = np.asarray(state.projectors[name], np.float64)
        # the same subspace, column by column up to sign
        np.testing.assert_allclose(np.abs(np.sum(p * want, axis=0)), 1.0, atol=1e-5)
        # at the refresh step both sides give the rank-3 truncation of G: α U_r S_r V_rᵀ
        np.testing.assert_allclose(updates[name], -0.5 * u[:, :3] * np.linalg.svd(g)[1][:3] @ vt[:3], atol=1e-5)
        # at the next step they differ: G₂ P Pᵀ (right) vs P Pᵀ G₂ (left)
        g = np.asarray(g2[name], np.float64)
        on_side = (g @ want @ want.T) if side == "right" else (want @ want.T @ g)
        off_side = (other @ other.T @ g) if side == "right" else (g @ other @ other.T)
        np.testing.assert_allclose(second[name], -0.5 * on_side, atol=1e-5)
        assert np.abs(-0.5 * off_side - np.asarray(second[name])).max() > 1e-2
    np.testing.assert_allclose(updates["b"], -g1["b"], atol=1e-6)  # full size, no α


def test_adam_state_lives_in_the_low_rank_space():
    """First GaLore-Adam step: Adam's m / (√v + ε) is the sign of R = G P, so the update is
    -lr α sign(G P) Pᵀ (tall) and -lr α P sign(Pᵀ G) (wide)."""
    params = make_params(jax.random.key(6))
    grads = random_grads(jax.random.key(7))
    opt = gl.galore_adam(0.01, 3, scale=0.25, eps=0.0)
    with jax.numpy_dtype_promotion("standard"):
        updates, state = jax.jit(opt.update)(grads, opt.init(params))
    p = state.projectors
    tall = -0.01 * 0.25 * jnp.sign(grads["tall"] @ p["tall"]) @ p["tall"].T
    wide = -0.01 * 0.25 * p["wide"] @ jnp.sign(p["wide"].T @ grads["wide"])
    np.testing.assert_allclose(updates["tall"], tall, atol=1e-6)
    np.testing.assert_allclose(updates["wide"], wide, atol=1e-6)
    np.testing.assert_allclose(updates["b"], -0.01 * jnp.sign(grads["b"]), atol=1e-6)
    assert state.base_state[0].mu["tall"].shape == (12, 3)


def test_refresh_exactly_every_T_steps():
    """T = 3: the projectors change at steps 0, 3, 6, 9 (to the SVD of that step's gradient) and
    stay fixed in between; one trace for all ten steps."""
    params = make_params(jax.random.key(8))
    opt = gl.galore(2, base=optax.sgd(0.1), update_proj_gap=3)
    state = opt.init(params)
    update = jax.jit(chex.assert_max_traces(opt.update, n=1))
    previous = state.projectors
    for t in range(10):
        grads = random_grads(jax.random.fold_in(jax.random.key(9), t))
        _, state = update(grads, state)
        for name in ("tall", "wide"):
            now = np.asarray(state.projectors[name])
            if t % 3 == 0:
                fresh = np.asarray(gl.top_projector(grads[name], 2))
                np.testing.assert_allclose(now, fresh, atol=1e-6)
                assert np.abs(now - np.asarray(previous[name])).max() > 1e-3
            else:
                np.testing.assert_array_equal(now, np.asarray(previous[name]))
        previous = state.projectors
        assert int(state.count) == t + 1


def test_one_compile_and_refresh_inside_cond():
    """The update traces once over many steps (chex), and the SVD sits inside a `cond`."""
    params = make_params(jax.random.key(10))
    opt = gl.galore(3, base=optax.sgd(0.1), update_proj_gap=2)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, s, key):
        grads = jax.grad(loss)(p, jax.random.normal(key, (16, 12)))
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    state = opt.init(params)
    for t in range(5):
        params, state = step(params, state, jax.random.key(t))
    jaxpr = str(jax.make_jaxpr(opt.update)(random_grads(jax.random.key(0)), state))
    assert "cond" in jaxpr and "svd" in jaxpr


def test_vmap_over_seeds_keeps_the_refresh_a_branch():
    """`vmap_axes`: a seed-batched update equals per-seed updates, and the count stays unbatched
    so the SVD stays inside a cond instead of becoming a select that always runs it."""
    opt = gl.galore(2, base=optax.sgd(0.1, momentum=0.9), update_proj_gap=2)
    seeds = [make_params(jax.random.key(s)) for s in (11, 12)]
    states = [opt.init(p) for p in seeds]
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
    state = opt.init(seeds[0])
    state = state._replace(projectors=stack([s.projectors for s in states]),
                           base_state=stack([s.base_state for s in states]))
    axes = gl.vmap_axes(state)
    batched = jax.jit(jax.vmap(opt.update, in_axes=(0, axes), out_axes=(0, axes)))
    update = jax.jit(opt.update)
    for t in range(3):
        grads = [random_grads(jax.random.fold_in(jax.random.key(s), t)) for s in (13, 14)]
        updates, state = batched(stack(grads), state)
        for i in range(2):
            single, states[i] = update(grads[i], states[i])
            np.testing.assert_allclose(updates["tall"][i], single["tall"], atol=1e-6)
            np.testing.assert_allclose(updates["wide"][i], single["wide"], atol=1e-6)
    assert state.count.shape == () and int(state.count) == 3
    jaxpr = str(jax.make_jaxpr(jax.vmap(opt.update, in_axes=(0, axes), out_axes=(0, axes)))(stack(grads), state))
    assert "cond" in jaxpr


def test_mask_sends_excluded_matrices_to_the_base_at_full_size():
    params = make_params(jax.random.key(15))
    grads = random_grads(jax.random.key(16))
    for mask in ({"tall": False, "wide": True, "b": False}, lambda p: {"tall": False, "wide": True, "b": False}):
        opt = gl.galore(2, base=optax.sgd(0.5), scale=0.25, mask=mask)
        state = opt.init(params)
        assert isinstance(state.projectors["tall"], optax.MaskedNode) and state.projectors["wide"].shape == (4, 2)
        updates, state = jax.jit(opt.update)(grads, state)
        np.testing.assert_allclose(updates["tall"], -0.5 * grads["tall"], atol=1e-6)  # plain SGD, no α
        w = np.asarray(state.projectors["wide"])
        np.testing.assert_allclose(updates["wide"], -0.5 * 0.25 * w @ w.T @ np.asarray(grads["wide"]), atol=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        gl.galore(2, base=optax.sgd(0.5), mask={"tall": True, "wide": True, "b": True}).init(params)


def test_refuses_bad_configuration():
    for kwargs in ({"rank": 0}, {"rank": 2, "update_proj_gap": 0}, {"rank": 2.5}):
        with pytest.raises(ValueError):
            gl.galore(base=optax.sgd(0.1), **kwargs)
    with pytest.raises(ValueError):
        gl.galore(2, base=optax.sgd)  # a factory, not a transformation
    with pytest.raises(ValueError):
        gl.projection_side((3, 4, 5))


def test_state_memory_matches_the_paper_and_beats_adam():
    """GaLore-Adam stores, per `(m, n)` matrix, min(m, n) r (projector) + 2 max(m, n) r (moments),
    the paper's mr + 2nr; vectors cost 2 size as in Adam; two int32 counts (GaLore's and Adam's)."""
    params = {"a": jnp.zeros((64, 16)), "b": jnp.zeros((8, 40)), "c": jnp.zeros(10)}
    r = 4
    shaped = jax.eval_shape(gl.galore_adam(1e-3, r).init, params)
    expected = 4 * ((16 * r + 2 * 64 * r) + (8 * r + 2 * 40 * r) + 2 * 10) + 2 * 4
    assert gl.state_bytes(shaped) == expected
    assert gl.adam_state_bytes(params) == 4 * 2 * (64 * 16 + 8 * 40 + 10) + 4
    assert gl.state_bytes(shaped) < gl.adam_state_bytes(params)
    # the bytes of a real state equal those of its abstract shape
    assert gl.state_bytes(gl.galore_adam(1e-3, r).init(params)) == expected
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        assert gl.state_bytes(jax.eval_shape(gl.galore_adam(1e-3, r).init, p64)) == 2 * expected - 2 * 4


def test_a_stack_of_matrices_is_projected_matrix_by_matrix():
    """A selected `(s, t, m, n)` leaf gets one projector per matrix: the same updates as the s*t
    matrices given as separate 2-D leaves, across a projector refresh (tall and wide alike)."""
    stack = {"tall": jax.random.normal(jax.random.key(0), (2, 3, 6, 4)),
             "wide": jax.random.normal(jax.random.key(1), (3, 4, 7))}
    grads = [jax.tree.map(lambda x, i=i: x * (1 + 0.3 * i) + 0.1 * i, stack) for i in range(3)]
    split = lambda tree: {f"{name}{j}": m for name, x in tree.items()  # noqa: E731
                          for j, m in enumerate(x.reshape(-1, *x.shape[-2:]))}
    opt = gl.galore(2, base=optax.adam(0.1), update_proj_gap=2, scale=0.5, mask=lambda p: jax.tree.map(lambda _: True, p))
    stacked_state, separate_state = opt.init(stack), opt.init(split(stack))
    assert stacked_state.projectors["tall"].shape == (2, 3, 4, 2)  # right side, k = n = 4
    assert stacked_state.projectors["wide"].shape == (3, 4, 2)  # left side, k = m = 4
    for g in grads:
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam raises a float to the int32 count
            stacked, stacked_state = jax.jit(opt.update)(g, stacked_state)
            separate, separate_state = jax.jit(opt.update)(split(g), separate_state)
        for key, value in split(stacked).items():
            np.testing.assert_allclose(value, separate[key], atol=1e-5, err_msg=key)
    with pytest.raises(ValueError, match="2-D"):
        gl.galore(2, base=optax.sgd(0.1), mask={"v": True}).init({"v": jnp.zeros(3)})
