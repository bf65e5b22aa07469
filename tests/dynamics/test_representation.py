"""Representation alignment simulation: per-sample neuron gradients, the SGD + weight-decay update,
the chain-rule identities of the measured matrices, and a short run held against the theory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectrax.dynamics import representation as rp
from spectrax.dynamics.loop import run_steps
from spectrax.spectral import alignment as al

DIMS = rp.layer_dims(6, 10, 2, 3)


@pytest.fixture(scope="module")
def task():
    return rp.make_task(jax.random.key(0), 6, 3, teacher_width=2, noise=0.5, eval_size=256)


def test_task_labels_carry_the_stated_noise():
    t = rp.make_task(jax.random.key(1), 6, 3, noise=0.5, eval_size=4000)
    resid = np.asarray(t.eval_y - rp.apply(t.teacher, t.eval_x))
    assert abs(resid.std() - 0.5) < 0.02 and abs(np.asarray(t.eval_x).std() - 1) < 0.03
    with pytest.raises(ValueError):
        rp.layer_dims(6, 10, 0, 3)


def test_neuron_gradients_are_per_sample_and_give_the_weight_gradient(task):
    params = rp.init_mlp(jax.random.key(2), DIMS)
    x, y = task.eval_x[:32], task.eval_y[:32]
    h_a, g_b = rp.neuron_gradients(params, x, y)
    # sample i alone, differentiated through its own preactivation offsets
    def one(xi, yi):
        loss = lambda off: jnp.sum((rp.apply(params, xi[None], off) - yi[None]) ** 2) / 2  # noqa: E731
        return jax.grad(loss)([jnp.zeros((1, w.shape[0])) for w in params])

    ref = jax.jit(jax.vmap(one))(x, y)
    for layer in range(len(params)):
        np.testing.assert_allclose(g_b[layer], ref[layer][:, 0], rtol=1e-5, atol=1e-6)
    # dL/dW = E[g_b h_aᵀ]: the neuron gradients and activations reproduce the weight gradient
    grads = jax.grad(rp.loss_fn)(params, x, y)
    for layer in range(len(params)):
        np.testing.assert_allclose(g_b[layer].T @ h_a[layer] / x.shape[0], grads[layer], rtol=1e-4, atol=1e-6)


def test_measured_matrices_obey_the_chain_rule(task):
    params = rp.init_mlp(jax.random.key(3), DIMS)
    for w, m in zip(params, rp.measure(params, task.eval_x, task.eval_y)):
        # h_b = W h_a and g_a = Wᵀ g_b, so H_b = W H_a Wᵀ and G_a = Wᵀ G_b W exactly
        np.testing.assert_allclose(m.h_b, w @ m.h_a @ w.T, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(m.g_a, w.T @ m.g_b @ w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(m.z_b, w @ w.T, rtol=1e-5)


def test_step_is_sgd_with_weight_decay(task):
    hyper = rp.sweep([0.0, 0.1], 1, 0.05)
    state = rp.init_state(jax.random.key(4), DIMS, 2, 1)
    np.testing.assert_array_equal(state[0][0], state[0][1])  # one seed: the same init at every γ
    key = jax.random.key(5)
    step = rp.make_step(task, hyper, key, 1, record_every=1, batch_size=8)
    new, rec = jax.jit(step)(state, jnp.int32(3))
    x, y = rp.sample_batch(jax.random.fold_in(jax.random.fold_in(key, 0), 3), task, 8)
    p0 = tuple(w[0] for w in state)
    grads = jax.grad(rp.loss_fn)(p0, x, y)
    for c, wd in enumerate((0.0, 0.1)):
        for layer in range(len(DIMS) - 1):
            want = p0[layer] - 0.05 * (grads[layer] + wd * p0[layer])  # Δθ = -η(∇l + γθ)
            np.testing.assert_allclose(new[layer][c], want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rec.loss[0], rp.loss_fn(p0, x, y), rtol=1e-5)
    assert rec.layers[1].h_a.shape == (2, 10, 10) and rec.layers[2].h_b.shape == (2, 3, 3)


def test_weight_decay_aligns_weights_with_representation_and_gradient(task):
    """A short run of the theory's setting: with γ > 0 the weight alignments (H-Z, G-Z) of the
    hidden layer rise far above the random-basis null and above the γ = 0 run; H-G aligns anyway."""
    seeds, wds = 2, (0.0, 0.02)
    dims = rp.layer_dims(6, 16, 2, 3)
    hyper = rp.sweep(wds, seeds, 0.05)
    state = rp.init_state(jax.random.key(6), dims, len(wds), seeds)
    step = rp.make_step(task, hyper, jax.random.key(7), seeds, record_every=500, batch_size=16)
    _, traj = run_steps(step, state, 6, chunk=6)
    floor = 0.5 * 0.5**2 * 3  # E[½||σε||²]: the loss of the teacher itself
    init = float(rp.loss_fn(tuple(w[0] for w in state), task.eval_x, task.eval_y))
    assert init > 2 * floor and np.all(np.abs(traj.eval_loss[-1] / floor - 1) < 0.2), traj.eval_loss[-1]
    final = al.LayerMatrices(*[jnp.asarray(x[-1]) for x in traj.layers[1]])
    obs = {k: np.asarray(v) for k, v in al.six_alignments(final).items()}
    null = al.random_basis_null(jax.random.key(8), final, al.six_alignments, num_draws=16)
    z = {k: (obs[k] - np.asarray(null.mean[k])) / np.asarray(null.std[k]) for k in obs}
    decayed, plain = slice(seeds, 2 * seeds), slice(0, seeds)
    for name in ("hz_a", "gz_a", "hz_b", "gz_b"):
        assert np.all(z[name][decayed] > 5) and np.all(obs[name][decayed] > 0.85), (name, obs[name], z[name])
        assert obs[name][decayed].mean() > obs[name][plain].mean() + 0.2, (name, obs[name])
    assert np.all(z["hg_b"] > 3)


def test_summarize_judges_made_up_alignments():
    """Two weight decays x one seed, one layer, three records: weight decay raises every alignment
    to 0.9 against a null of 0.1 ± 0.02; without it they end at 0.3."""
    config = rp.Config(weight_decays=(0.0, 0.01), seeds=1, depth=1, steps=2, record_every=1)
    assert config.headline_layer == 0
    ends = np.array([[0.2, 0.2], [0.25, 0.5], [0.3, 0.9]])  # (records, configurations)
    align = {n: ends for n in al.ALIGNMENTS}
    mean = {n: np.full((3, 2), 0.1) for n in al.ALIGNMENTS}
    std = {n: np.full((3, 2), 0.02) for n in al.ALIGNMENTS}
    final = {name: np.array([1.0, 2.0]) for name in ("fdt_b_z", "fdt_b_g", "fdt_b_r2", "fdt_a_z", "fdt_a_h",
                                                     "fdt_a_r2", "rank_alpha_hg_b", "rank_alpha_r2_hg_b",
                                                     "alpha_hg_b", "alpha_r2_hg_b", "alpha_r2_hg_b_null_mean")}
    final["fdt_b_g"] = np.array([0.5, -0.3])  # eq. 7's G coefficient turns negative with weight decay
    stats = rp.Alignments([align], [mean], [std], np.array([0, 2]), [final])
    result = rp.Sweep([], np.array([[2.0, 2.0], [1.5, 1.0], [1.4, 0.5]]), np.full((3, 2), np.nan), np.array([2.0, 2.0]))
    verdict = rp.summarize(stats, result, config)
    head, checks = verdict["headline_layer"], verdict["checks"]
    assert set(head) == {"wd=0", "wd=0.01"} and head["wd=0.01"]["eval_loss_final"] == 0.5
    assert head["wd=0.01"]["hg_b"]["final"] == 0.9 and head["wd=0.01"]["hg_b"]["z_final"] == pytest.approx(40.0)
    assert head["wd=0"]["hg_b"]["z_init"] == pytest.approx(5.0) and head["wd=0.01"]["fdt_b_g"] == -0.3
    assert checks["largest_wd"] == "wd=0.01" and checks["all_six_above_null_z3_largest_wd"]
    assert checks["min_final_alignment_largest_wd"] == 0.9 and not checks["fdt_coefficients_positive_largest_wd"]
    assert checks["mean_final_alignment_gain_largest_wd_over_wd0"] == pytest.approx(0.6)
    assert checks["alignments_higher_with_wd"] == list(al.ALIGNMENTS) and checks["min_final_alignment_wd0"] == 0.3


def test_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="multiple"):
        rp.Config(steps=1000, record_every=300)
    with pytest.raises(ValueError, match=">= 0"):
        rp.Config(weight_decays=(-1.0,))
    with pytest.raises(ValueError, match="layer"):
        rp.Config(layer=5)
