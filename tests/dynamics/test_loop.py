"""The chunked training loop: same numbers in one go, in chunks, and after an interruption."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spectrax.dynamics.loop import run_steps, saved_settings


def make_step(lr=0.1, key=jax.random.PRNGKey(0)):
    opt = optax.sgd(lr, momentum=0.9)

    def loss(w, x):
        return jnp.mean((x @ w - x @ jnp.array([1.0, -2.0, 0.5])) ** 2)

    def step(state, t):
        w, opt_state = state
        x = jax.random.normal(jax.random.fold_in(key, t), (8, 3))
        value, grad = jax.value_and_grad(loss)(w, x)
        updates, opt_state = opt.update(grad, opt_state, w)
        return (optax.apply_updates(w, updates), opt_state), {"loss": value, "w": w}

    w0 = jnp.zeros(3)
    return step, (w0, opt.init(w0))


def test_chunks_match_one_scan():
    step, state = make_step()
    whole, traj = run_steps(step, state, 50, chunk=50)
    parts, traj_parts = run_steps(step, state, 50, chunk=7)
    assert traj["loss"].shape == (50,) and traj["w"].shape == (50, 3)
    np.testing.assert_allclose(traj_parts["loss"], traj["loss"], rtol=1e-6)
    np.testing.assert_allclose(parts[0], whole[0], rtol=1e-6)
    assert traj["loss"][-1] < traj["loss"][0]


def test_resume_after_interruption_gives_the_same_run(tmp_path):
    step, state = make_step()
    reference, ref_traj = run_steps(step, state, 40, chunk=10)
    directory = tmp_path / "run"
    settings = {"lr": 0.1, "seed": 0}
    run_steps(step, state, 40, chunk=10, directory=directory, settings=settings)
    # fake a crash before the last save: keep only the step-30 one
    steps = directory / "steps"
    for saved in steps.iterdir():
        if saved.name.isdigit() and saved.name != "30":
            shutil.rmtree(saved)
    assert sorted(p.name for p in steps.iterdir() if p.name.isdigit()) == ["30"]
    resumed, traj = run_steps(step, state, 40, chunk=10, directory=directory, settings=settings)
    np.testing.assert_allclose(traj["loss"], ref_traj["loss"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(resumed[0]), np.asarray(reference[0]), rtol=1e-6)
    assert saved_settings(directory) == {"chunk": 10, "num_steps": 40, **settings}


def test_other_settings_and_foreign_folders_are_refused(tmp_path):
    step, state = make_step()
    run_steps(step, state, 10, chunk=5, directory=tmp_path / "a", settings={"lr": 0.1})
    with pytest.raises(ValueError, match="lr"):
        run_steps(step, state, 10, chunk=5, directory=tmp_path / "a", settings={"lr": 0.2})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="foreign"):
        run_steps(step, state, 10, directory=foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
