"""GaLore against Adam on the Markov-chain language model: the verdict table (`summarize`) on made-up
runs, the chain's entropy floor, and the settings it refuses. The end-to-end run (training, memory,
resume) is tests/experiments/test_galore_experiment.py."""

import jax
import numpy as np
import pytest

from spectrax.dynamics import galore_lm as lm


def made_up_run(rank, eval_loss, state_bytes):
    loss = np.linspace(3.0, 1.0, 20)[:, None] * np.ones((1, 2))
    return lm.Run(rank, {"loss": loss, "floor": np.full((20, 2), 0.5)}, np.asarray(eval_loss), np.array([0.5, 0.5]),
                  state_bytes, 1000, {"projected_moments": 100, "other_moments": 50, "projectors": 20, "counts": 8},
                  1.0)


def test_summarize_pairs_each_run_with_adam():
    config = lm.Config(steps=20, ranks=(4,))
    runs = {"adam": made_up_run(None, [1.0, 1.2], 1000), "galore_r4": made_up_run(4, [1.1, 1.4], 250)}
    summary = lm.summarize(runs, config)
    assert summary["run"] == ["adam", "galore_r4"] and summary["rank"] == ["full", 4]
    assert summary["state_vs_adam"] == [1.0, 0.25] and summary["other_state_bytes"] == [58, 58]
    assert summary["train_loss_last10pct"][0] == pytest.approx(np.mean(np.linspace(3.0, 1.0, 20)[-2:]))
    assert summary["eval_excess_mean"] == pytest.approx([0.6, 0.75])
    assert summary["excess_vs_adam"] == pytest.approx([1.0, 1.25])
    assert summary["paired_diff_vs_adam_mean"] == pytest.approx([0.0, 0.15])
    assert summary["paired_diff_vs_adam_std"] == pytest.approx([0.0, 0.05])


def test_floor_is_the_mean_entropy_of_the_true_conditionals():
    chain = lm.make_chain(jax.random.key(0), 5)
    np.testing.assert_allclose(np.exp(np.asarray(chain.logits)).sum(-1), 1.0, rtol=1e-5)
    tokens = lm.sample_streams(jax.random.key(1), chain, 3, 6)
    assert tokens.shape == (3, 6) and 0 < float(lm.floor(chain, tokens)) < np.log(5)


def test_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="rank"):
        lm.Config(ranks=(0,))
    with pytest.raises(ValueError, match="project"):
        lm.Config(project="some")
