"""Whole-matrix spectra computed once per layer: batching under a memory budget, equality with the
stacked decomposition they replace, and one computation shared by rank and esd."""

import jax
import ml_dtypes
import numpy as np
import pytest

from spectrax import spectral as sp
from spectrax.analyses import esd, rank, registry, spectra
from spectrax.analyses.base import Analysis, LayerOutput, Options
from spectrax.analyses.spectra import batches, shape_groups, whole_spectra


def _layer(seed=0):
    """A toy layer: two matrices per shape (q/o in bf16, gate in float32 and up in bf16), lone ones (k, down)."""
    rng = np.random.default_rng(seed)
    m = {"attn.q": rng.standard_normal((24, 16)), "attn.k": rng.standard_normal((8, 16)),
         "attn.o": rng.standard_normal((24, 16)), "mlp.gate": rng.standard_normal((40, 16)),
         "mlp.up": rng.standard_normal((40, 16)), "mlp.down": rng.standard_normal((16, 40))}
    m = {name: w.astype(np.float32) for name, w in m.items()}
    m["mlp.up"] = m["mlp.up"].astype(ml_dtypes.bfloat16)
    m["attn.q"], m["attn.o"] = m["attn.q"].astype(ml_dtypes.bfloat16), m["attn.o"].astype(ml_dtypes.bfloat16)
    return m


def test_shape_groups_sort_shapes_and_keep_name_order():
    groups = shape_groups({"b": (4, 3), "a": (2, 5), "c": (4, 3)})
    assert groups == [((2, 5), ["a"]), ((4, 3), ["b", "c"])]


def test_batches_keep_a_shape_whole_when_it_fits_else_one_matrix_each():
    shapes = {"q": (10, 10), "o": (10, 10), "gate": (30, 10), "up": (30, 10), "down": (10, 30)}
    f32 = dict.fromkeys(shapes, np.float32)
    assert batches(shapes, f32, budget_bytes=2 * 10 * 10 * 4) == [["q", "o"], ["down"], ["gate"], ["up"]]
    assert batches(shapes, f32, budget_bytes=10**9) == [["q", "o"], ["down"], ["gate", "up"]]
    # only matrices of one stored dtype are stacked; float64 copies count 8 bytes an entry
    mixed = {**f32, "o": np.float64, "up": ml_dtypes.bfloat16}
    assert batches(shapes, mixed, 10**9) == [["q"], ["o"], ["down"], ["gate"], ["up"]]
    pair = {"a": (10, 10), "b": (10, 10)}
    assert batches(pair, dict.fromkeys(pair, np.float32), 1000) == [["a", "b"]]
    assert batches(pair, dict.fromkeys(pair, np.float64), 1000) == [["a"], ["b"]]


def test_whole_spectra_are_the_stacked_decomposition_bit_for_bit_at_any_budget():
    layer = _layer()
    for budget in (0, 10**9):  # one matrix at a time, and every shape stacked
        got = whole_spectra(layer, budget_bytes=budget)
        assert list(got.s) == list(layer)
        for shape, names in shape_groups({n: w.shape for n, w in layer.items()}):
            stack = np.stack([np.asarray(layer[n], np.float32) for n in names])
            expected = np.asarray(sp.singular_values(stack, method="qr"))
            mean_square = np.mean(np.square(stack.astype(np.float64)), axis=(-2, -1))
            for j, name in enumerate(names):
                np.testing.assert_array_equal(got.s[name], expected[j])
                assert got.s[name].dtype == np.float32 and got.mean_square[name] == mean_square[j]


def test_whole_spectra_name_a_matrix_that_is_not_a_real_2d_array():
    with pytest.raises(TypeError, match="'attn.q'"):
        whole_spectra({"attn.q": np.ones((4, 4), np.int32)})
    with pytest.raises(ValueError, match="'mlp.up'"):
        whole_spectra({"mlp.up": np.ones(4, np.float32)})


def test_rank_and_esd_rows_are_the_same_from_shared_or_own_spectra():
    layer, key = _layer(1), jax.random.key(3)
    shared = whole_spectra(layer, budget_bytes=0)
    for rows in (rank.matrix_rank_rows, lambda *a, **k: esd.matrix_esd_rows(*a, shuffle_draws=0, **k)):
        own, given = rows(layer, key, num_draws=3), rows(layer, key, num_draws=3, spectra=shared)
        for name in layer:
            for column, value in own[name].items():
                np.testing.assert_array_equal(given[name][column], value, err_msg=f"{name} {column}")


def test_a_layer_is_decomposed_once_for_rank_and_esd_and_esd_keeps_that_spectrum(monkeypatch):
    layer = _layer(2)
    mlp = {n: w for n, w in layer.items() if n.startswith("mlp.")}
    expected = whole_spectra(mlp)
    decomposed = []

    def counted(x, *args, **kwargs):
        decomposed.append(np.shape(x))
        return singular_values(x, *args, **kwargs)

    singular_values = spectra.sp.singular_values
    monkeypatch.setattr(spectra.sp, "singular_values", counted)
    params = {"mlp": {n.split(".")[1]: w[None] for n, w in mlp.items()}}
    out = registry.layer_results(params, 0, registry.resolve(["rank", "esd"]), Options(num_draws=2, shuffle_draws=0))
    # each matrix once; gate is float32 and up bf16, so they are not stacked
    assert sorted(decomposed) == [(1, 16, 40), (1, 40, 16), (1, 40, 16)]
    np.testing.assert_array_equal(out["esd"]["spectrum"], expected.s[str(out["esd"]["matrix"])])


def test_only_analyses_that_declare_spectra_get_them():
    seen = []

    def rows(inputs, key, options):
        seen.append(inputs.spectra)
        return LayerOutput({"matrix": np.array(list(inputs.matrices), object), "rows": np.zeros(1, int),
                            "cols": np.zeros(1, int)})

    mine = Analysis("mine", "matrices", rows, summarize=None, render=None, key_id=99)
    matrices = {"lm_head": np.ones((4, 3), np.float32)}
    registry.global_results(matrices, [mine], Options(num_draws=2))
    registry.global_results(matrices, [mine._replace(spectra=True)], Options(num_draws=2))
    assert seen[0] is None
    np.testing.assert_array_equal(seen[1].s["lm_head"], whole_spectra(matrices).s["lm_head"])
