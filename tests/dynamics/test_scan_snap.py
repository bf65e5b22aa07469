"""Scan and Snap: the data and model are what docs/dynamics.md, Setups says, and each run obeys the theory.

Small sizes (batch 64, tens of steps) keep every test to seconds of CPU; the Fig. 4 setting is run
at its real size (M = 34), which is already small.
"""

import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectrax.dynamics import loop
from spectrax.dynamics import scan_snap as ss


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def fig4():
    """The Fig. 4 setting: 2 last tokens, K = 1, M = 34, zero init, both lrs 1, 100 iterations."""
    task = ss.make_task(2, 1)
    params, traj = ss.run(jax.random.key(0), task, ss.hyper(1.0, 1.0), steps=100, zero_init=True)
    return task, params, traj


def test_task_layout_follows_the_spec():
    task = ss.make_task(2, 1)
    assert task.probs.shape == (2, 34) and ss.num_tokens(2, 1) == 34 and ss.num_tokens(10, 2) == 240
    probs = np.asarray(task.probs)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    weights = np.concatenate([np.ones(10), np.linspace(0.1, 1, 10)])
    np.testing.assert_allclose(probs[1, np.r_[0:10, 20:30]], weights / weights.sum(), rtol=1e-6)
    assert probs[0, 20:].sum() == 0 and probs[1, 10:20].sum() == 0  # distinct tokens are the fact's own
    np.testing.assert_array_equal(task.last, [30, 31])
    np.testing.assert_array_equal(task.next, [32, 33])
    np.testing.assert_array_equal(task.distinct[1], np.arange(20, 30))
    assert np.all(np.asarray(task.support_cdf)[:, -1] == 1.0)
    assert ss.make_task(10, 2).probs.shape == (20, 240)


def test_refuses_bad_configuration():
    with pytest.raises(ValueError):
        ss.make_task(0, 1)
    with pytest.raises(ValueError):
        ss.make_task(1, 0)


def test_batches_follow_the_distribution():
    task = ss.make_task(2, 2)
    batch = ss.sample_batch(jax.random.key(1), task, batch_size=4000, seq_len=128)
    counts = np.asarray(batch.counts)
    np.testing.assert_array_equal(counts.sum(axis=1), 127)
    facts = np.searchsorted(np.asarray(task.next), np.asarray(batch.target))
    np.testing.assert_array_equal(np.asarray(task.last)[facts], batch.query)
    assert np.abs(np.bincount(facts, minlength=4) / 4000 - 0.25).max() < 0.03  # facts uniform
    for f in range(4):
        rows = counts[facts == f]
        freq = rows.sum(axis=0) / rows.sum()
        p = np.asarray(task.probs[f])
        assert np.all(freq[p == 0] == 0)
        # ~127k draws per fact: binomial std of a frequency <= 0.0007
        assert np.abs(freq - p).max() < 0.004


def test_count_forward_equals_position_forward():
    task = ss.make_task(2, 2)
    params = ss.init_params(jax.random.key(3), task)
    params = ss.Params(params.y * 5, params.z * 5)  # sharper attention than at init
    rng = np.random.default_rng(0)
    m = task.probs.shape[1]
    tokens = rng.integers(0, 50, size=(8, 127))
    query = np.asarray(task.last)[rng.integers(0, 4, size=8)]
    counts = np.stack([np.bincount(t, minlength=m) for t in tokens]).astype(np.float32)
    batch = ss.Batch(jnp.asarray(query), jnp.zeros(8, jnp.int32), jnp.asarray(counts))
    np.testing.assert_allclose(ss.apply(params, batch),
                               ss.apply_sequence(params, jnp.asarray(tokens), jnp.asarray(query)), rtol=2e-5, atol=2e-6)


def test_zero_init_loss_is_ln_m(fig4):
    _, _, traj = fig4
    assert abs(float(traj.loss[0]) - np.log(34)) < 1e-5


def test_common_tokens_suppressed_and_distinct_ordered_by_probability(fig4):
    task, params, traj = fig4
    z = np.asarray(params.z)
    for f in range(2):
        row = z[int(task.last[f])]
        assert row[:10].max() < 0, "common-token logits must end negative"
        distinct = np.asarray(task.distinct[f])
        p = np.asarray(task.probs[f])[distinct]
        assert spearman(row[distinct], p) > 0.9
        assert row[distinct[-1]] > 0.5  # the most likely distinct token has clearly won
    assert traj.z_common[-1] < 0 and np.all(np.diff(np.asarray(traj.z_distinct[-1])[2:]) > 0)
    assert traj.entropy[-1] < traj.entropy[0] - 0.1
    assert traj.loss[-1] < 1e-3


def test_entropy_decreases_with_lr_z():
    lrs = (0.5, 1.0, 2.0, 3.0)
    hypers = ss.stack([ss.hyper(lr, 1.0) for lr in lrs])
    keys = jax.random.split(jax.random.key(4), len(lrs) * 8).reshape(len(lrs), 8)
    ((_, traj),) = ss.run_grid([keys], [ss.make_task(1, 2)], [hypers], steps=40, batch_size=64)
    final = np.asarray(traj.entropy[:, :, -1]).mean(axis=1)
    assert np.all(np.diff(final) < 0), final
    assert final[0] - final[-1] > 0.2


def grid_case():
    """Two groups of different sizes (M = 33 and 56), two configurations x two seeds each."""
    tasks = [ss.make_task(1, 2), ss.make_task(2, 2)]
    hypers = [ss.stack([ss.hyper(1.0, 2.0), ss.hyper(2.0, 1.0, momentum=0.0)]),
              ss.stack([ss.hyper(0.5, 5.0), ss.hyper(3.0, 1.0)])]
    keys = list(jax.random.split(jax.random.key(5), 8).reshape(2, 2, 2))
    return keys, tasks, hypers


def test_grid_entry_equals_its_single_run():
    keys, tasks, hypers = grid_case()
    out = ss.run_grid(keys, tasks, hypers, steps=8, batch_size=32)
    assert [o[0].z.shape for o in out] == [(2, 2, 33, 33), (2, 2, 56, 56)]  # each group at its own size
    for g, (params, traj) in enumerate(out):
        for c in range(2):
            for r in range(2):
                h = jax.tree.map(lambda a, c=c: a[c], hypers[g])
                p1, t1 = ss.run(keys[g][c, r], tasks[g], h, steps=8, batch_size=32)
                np.testing.assert_allclose(params.z[c, r], p1.z, rtol=1e-4, atol=1e-6)
                np.testing.assert_allclose(params.y[c, r], p1.y, rtol=1e-4, atol=1e-6)
                np.testing.assert_allclose(traj.loss[c, r], t1.loss, rtol=1e-5)
                np.testing.assert_allclose(traj.entropy[c, r], t1.entropy, rtol=1e-5)


def test_grid_refuses_mismatched_groups():
    keys, tasks, hypers = grid_case()
    with pytest.raises(ValueError):
        ss.run_grid(keys, tasks[:1], hypers, steps=2, batch_size=8)
    with pytest.raises(AssertionError):  # 2 configurations of keys, 1 of learning rates
        ss.run_grid(keys[:1], tasks[:1], [ss.stack([ss.hyper(1.0)])], steps=2, batch_size=8)


def test_optimizer_is_torch_sgd_with_momentum():
    task = ss.make_task(1, 1)
    p0 = ss.init_params(jax.random.key(8), task)
    key = jax.random.key(9)
    lr_z, ratio, mu = 0.7, 3.0, 0.9
    p2, _ = ss.train(p0, key, task, ss.hyper(lr_z, ratio, mu), steps=2, batch_size=16)
    # By hand: buf = mu * buf + g; p -= lr * buf, with the batches train draws.
    k0, k1 = jax.random.split(key, 2)
    grad = jax.grad(ss.loss_fn)
    g0 = grad(p0, ss.sample_batch(k0, task, batch_size=16))
    p1 = ss.Params(p0.y - lr_z * ratio * g0.y, p0.z - lr_z * g0.z)
    g1 = grad(p1, ss.sample_batch(k1, task, batch_size=16))
    expect_y = p1.y - lr_z * ratio * (mu * g0.y + g1.y)
    expect_z = p1.z - lr_z * (mu * g0.z + g1.z)
    np.testing.assert_allclose(p2.y, expect_y, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p2.z, expect_z, rtol=1e-5, atol=1e-7)
    # momentum 0 is plain SGD
    q1, _ = ss.train(p0, key, task, ss.hyper(lr_z, ratio, 0.0), steps=1, batch_size=16)
    np.testing.assert_allclose(q1.z, p1.z, rtol=1e-6, atol=1e-8)


def test_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        task = ss.make_task(2, 1)
        task = task._replace(probs=task.probs.astype(jnp.float64))
        batch = ss.sample_batch(jax.random.key(10), task, batch_size=8)
        batch = batch._replace(counts=batch.counts.astype(jnp.float64))
        p = ss.init_params(jax.random.key(11), task)
        p = ss.Params(p.y.astype(jnp.float64) * 3, p.z.astype(jnp.float64) * 3)
        loss = jax.jit(lambda q: ss.loss_fn(q, batch))
        g = jax.grad(loss)(p)
        rng = np.random.default_rng(1)
        for _ in range(4):
            d = ss.Params(*(jnp.asarray(rng.standard_normal(p.y.shape)) for _ in range(2)))
            eps = 1e-5
            plus = jax.tree.map(lambda a, b, e=eps: a + e * b, p, d)
            minus = jax.tree.map(lambda a, b, e=eps: a - e * b, p, d)
            fd = (loss(plus) - loss(minus)) / (2 * eps)
            analytic = jnp.sum(g.y * d.y) + jnp.sum(g.z * d.z)
            assert abs(float(fd - analytic)) < 1e-7 * max(1.0, abs(float(analytic)))
        assert float(jnp.abs(g.z).max()) > 1e-3  # the check exercises the attention path too


def test_reproducible_from_a_seed():
    task = ss.make_task(1, 2)
    a = ss.run(jax.random.key(12), task, ss.hyper(1.0), steps=5, batch_size=16)
    b = ss.run(jax.random.key(12), task, ss.hyper(1.0), steps=5, batch_size=16)
    c = ss.run(jax.random.key(13), task, ss.hyper(1.0), steps=5, batch_size=16)
    chex.assert_trees_all_equal(a, b)
    assert not np.allclose(a[0].z, c[0].z)


def test_compiles_once_per_shape():
    task = ss.make_task(1, 1)
    ss.train(ss.init_params(jax.random.key(9), task), jax.random.key(9), task, ss.hyper(0.1, 2.0), steps=3,
             batch_size=8)
    before = loop._scan._cache_size()
    for seed, lr in ((0, 0.5), (1, 1.0), (2, 3.0)):
        p = ss.init_params(jax.random.key(seed), task)
        ss.train(p, jax.random.key(seed), task, ss.hyper(lr, 2.0), steps=3, batch_size=8)
    assert loop._scan._cache_size() == before  # other seeds and learning rates: no new program
    # the layout of test_grid_entry_equals_its_single_run: at most one new compile for three sweeps
    # with other seeds and learning rates (groups of several sizes still make one program)
    keys, tasks, hypers = grid_case()
    before = loop._scan._cache_size()
    for seed in range(3):
        keys = list(jax.random.split(jax.random.key(seed), 8).reshape(2, 2, 2))
        hypers = [jax.tree.map(lambda a, s=seed: a + s, h) for h in hypers]
        ss.run_grid(keys, tasks, hypers, steps=8, batch_size=32)
    assert loop._scan._cache_size() - before <= 1


def _keep_only_first_save(directory):
    """Fake a crash after the first chunk: drop every later save."""
    saves = sorted((p for p in (directory / "steps").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for saved in saves[1:]:
        shutil.rmtree(saved)


@pytest.mark.slow
def test_run_and_grid_resume_after_an_interruption(tmp_path):
    task = ss.make_task(1, 2)
    ref_params, ref = ss.run(jax.random.key(12), task, ss.hyper(1.0), steps=6, batch_size=16, chunk=3)
    directory = tmp_path / "run"
    ss.run(jax.random.key(12), task, ss.hyper(1.0), steps=6, batch_size=16, chunk=3, directory=directory)
    _keep_only_first_save(directory)
    params, traj = ss.run(jax.random.key(12), task, ss.hyper(1.0), steps=6, batch_size=16, chunk=3,
                          directory=directory)
    chex.assert_trees_all_close((params, traj), (ref_params, ref), rtol=1e-6)
    keys, tasks, hypers = grid_case()
    reference = ss.run_grid(keys, tasks, hypers, steps=4, batch_size=8, chunk=2)
    directory = tmp_path / "grid"
    ss.run_grid(keys, tasks, hypers, steps=4, batch_size=8, chunk=2, directory=directory)
    _keep_only_first_save(directory)
    resumed = ss.run_grid(keys, tasks, hypers, steps=4, batch_size=8, chunk=2, directory=directory)
    chex.assert_trees_all_close(resumed, reference, rtol=1e-6)


def test_summarize_holds_the_fig4_run_against_the_theory(fig4):
    task, params, traj = fig4
    facts, checks = ss.summarize(traj, task, params)
    assert [f["last_token"] for f in facts] == [int(x) for x in task.last]
    assert abs(checks["initial_loss_minus_ln_M"]) < 1e-5 and checks["ln_M"] == pytest.approx(np.log(34))
    assert checks["max_final_common_logit"] < 0 and checks["min_rank_correlation"] > 0.9
    assert checks["entropy_final"] < checks["entropy_initial"]
    row = np.asarray(params.z)[int(task.last[0])]
    assert facts[0]["distinct_logits"] == row[np.asarray(task.distinct[0])].tolist()


def test_summarize_grid_counts_cells_decreasing_in_lr_z():
    grid = {"num_last": (1, 2), "lr_z": (0.5, 1.0, 2.0), "ratio": (1.0,)}
    configs = [(n, lr, 1.0) for n in grid["num_last"] for lr in grid["lr_z"]]
    entropy = np.array([[3.0, 3.2], [2.0, 2.2], [1.0, 1.2],  # num_last 1: falls with lr_Z
                        [1.0, 1.0], [2.0, 2.0], [0.5, 0.5]])  # num_last 2: does not
    checks = ss.summarize_grid(configs, entropy, grid)
    assert checks["cells"] == 2 and checks["cells_decreasing_in_lr_z"] == 1
    assert -1 <= checks["spearman_lr_z_vs_entropy"] < 0
