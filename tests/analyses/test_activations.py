"""Activation spectroscopy: spectra of the residual stream, subspace energy and projection alignments,
each against float64 numpy and against its null."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectrax as sx
from spectrax.analyses import activations as act
from spectrax.models import activation_grads, decoder_options
from spectrax.models import apply_norm
from tests.conftest import CHECKPOINTS


def test_centered_samples():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((3, 2, 5, 4)) + 7.0
    x = act.centered_samples(hidden)
    assert x.shape == (3, 10, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x, hidden.reshape(3, 10, 4) - hidden.reshape(3, 10, 4).mean(1, keepdims=True), atol=1e-5)


@pytest.mark.slow
def test_hidden_state_rows_against_numpy_and_null():
    """An isotropic stream sits inside its null; a rank-3 stream is far below it."""
    rng = np.random.default_rng(1)
    E, N = 32, 256
    iso = rng.standard_normal((N, E))
    low = rng.standard_normal((N, 3)) @ rng.standard_normal((3, E)) + 1e-3 * rng.standard_normal((N, E))
    hidden = np.stack([iso, low]).reshape(2, 4, N // 4, E)
    table = act.hidden_state_rows(hidden, jax.random.key(0), num_draws=16)
    assert list(table["stream"]) == [0, 1] and list(table["samples"]) == [N, N]
    for i, x in enumerate((iso, low)):
        s = np.linalg.svd(x - x.mean(0), compute_uv=False)
        p = s / s.sum()
        np.testing.assert_allclose(table["erank"][i], np.exp(-np.sum(p * np.log(p))), rtol=1e-4)
        np.testing.assert_allclose(table["stable_rank"][i], np.sum(s**2) / s[0] ** 2, rtol=1e-4)
    assert abs(table["erank_z"][0]) < 4
    assert table["erank_z"][1] < -20
    assert {"num_spikes", "num_spikes_null_mean", "alpha_z", "ks_mp_z"} <= set(table)
    assert table["num_spikes"][1] >= 3 > table["num_spikes"][0]  # the rank-3 stream's three directions stand out


def test_subspace_energy_and_its_nulls():
    rng = np.random.default_rng(2)
    E, k, N = 24, 4, 40
    basis, _ = np.linalg.qr(rng.standard_normal((E, k)))
    inside = rng.standard_normal((N, k)) @ basis.T
    outside = rng.standard_normal((N, E))
    outside -= outside @ basis @ basis.T
    iso = rng.standard_normal((N, E))
    # float64 reference
    ref = np.sum((iso @ basis) ** 2) / np.sum(iso**2)
    np.testing.assert_allclose(float(act.subspace_energy(jnp.asarray(iso, jnp.float32), jnp.asarray(basis, jnp.float32))),
                               ref, rtol=1e-5)
    table = act.subspace_energy_rows({"inside": inside, "outside": outside, "iso": iso}, {"B": basis},
                                     jax.random.key(3), num_draws=400)
    by = {d: i for i, d in enumerate(table["deltas"])}
    np.testing.assert_allclose(table["energy"][by["inside"]], 1.0, atol=1e-5)
    np.testing.assert_allclose(table["energy"][by["outside"]], 0.0, atol=1e-5)
    assert table["pct"][by["inside"]] == 1.0 and table["pct"][by["outside"]] == 0.0
    assert np.all(table["chance"] == k / E)
    # the Monte Carlo null agrees with the exact one (mean k/E, closed-form std) within its error
    for i in range(3):
        se = table["null_std"][i] / np.sqrt(400)
        assert abs(table["mc_mean"][i] - k / E) < 5 * se
        assert abs(table["mc_std"][i] / table["null_std"][i] - 1) < 0.2
    assert abs(table["z"][by["iso"]]) < 4
    with pytest.raises(ValueError, match="basis 'B'"):
        act.subspace_energy_rows({"iso": iso}, {"B": basis[:-1]}, jax.random.key(0))


@pytest.mark.slow
def test_projection_alignment_rows_on_a_checkpoint():
    model = sx.load(CHECKPOINTS / "qwen2")  # q/k/v biases: h_b must be passed, not h_a W^T
    ids = jnp.asarray(np.random.default_rng(4).integers(0, 120, (4, 12)))

    def loss_fn(logits):
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

    _, acts, grads = activation_grads(model.params, model.spec, ids, loss_fn, attention=False, projections=True)
    (group,) = model.params["layers"]
    options = decoder_options(model.spec)
    inputs = {}
    for layer in range(model.spec.num_layers):
        layer_params = jax.tree.map(lambda a: np.asarray(a)[layer], group)
        normed = apply_norm(acts.hidden[layer], layer_params["norms"]["attn_norm"], options)
        for name in ("q", "v"):
            h_a, h_b, g_b, w = act.projection_inputs(acts, grads, normed, layer_params["attn"], layer, name)
            bias = layer_params["attn"][f"{name}_bias"].reshape(-1)
            np.testing.assert_allclose(h_b, h_a @ w.T + bias, atol=1e-4)  # the captured projection is W h_a + b
            inputs[(layer, name)] = (h_a, h_b, g_b, w)
    table = act.projection_alignment_rows(inputs, jax.random.key(5), k=8, num_draws=8)
    assert list(table["layer"]) == [0, 0, 1, 1] and list(table["projection"]) == ["q", "v", "q", "v"]
    h_a, h_b, g_b, w = inputs[(1, "v")]
    # f-RWA (H_b vs Z_b = W W^T) by hand, float64
    H_b = h_b.astype(np.float64).T @ h_b / len(h_b)
    Z_b = w.astype(np.float64) @ w.T
    np.testing.assert_allclose(table["hz_b"][3], np.corrcoef(H_b.ravel(), Z_b.ravel())[0, 1], atol=1e-4)
    assert {"hz_b_null_mean", "hz_b_z", "gz_a_pct"} <= set(table)
