"""Conventions every public kernel of `spectrax.spectral` keeps, checked over all of them so a new
one cannot skip them: each parameter and the return typed (arrays in as `jax.typing.ArrayLike`, or
numpy's for the host-only helpers; a bare `jax.Array` only for a PRNG key), and shapes checked at
entry with chex assertions or `check_min_rank`, both raising `ShapeError` (a `ValueError` and an
`AssertionError`)."""

import ast
import inspect
import pathlib
import typing

import jax
import numpy as np
import pytest

from spectrax import spectral as sp
from spectrax.spectral import alignment

SPECTRAL = pathlib.Path(sp.__file__).parent


def _public_functions():
    for module in (sp, alignment):
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and inspect.isfunction(inspect.unwrap(obj)):
                yield f"{module.__name__}.{name}", obj


PUBLIC = dict(_public_functions())


def test_the_public_kernels_are_found():
    assert len(PUBLIC) > 80
    assert {"spectrax.spectral.svd", "spectrax.spectral.pearson", "spectrax.spectral.alignment.alignment"} <= set(PUBLIC)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_parameter_and_the_return_are_typed(name):
    fn = PUBLIC[name]
    hints = typing.get_type_hints(fn)
    untyped = [p for p in inspect.signature(fn).parameters if p not in hints]
    assert not untyped, f"{name}: parameters {untyped} have no type annotation"
    assert "return" in hints, f"{name}: no return annotation"
    bare = [p for p, h in hints.items() if p not in ("return", "key") and h in (jax.Array, np.ndarray)]
    assert not bare, f"{name}: array inputs {bare} typed as an array class; use jax.typing.ArrayLike"


def _calls_and_raises():
    for path in sorted(SPECTRAL.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            yield path.name, node


def test_every_chex_assertion_raises_shape_error():
    missing = []
    for file, node in _calls_and_raises():
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("assert_")
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "chex"):
            kinds = [k.value.id for k in node.keywords if k.arg == "exception_type" and isinstance(k.value, ast.Name)]
            if kinds != ["ShapeError"]:
                missing.append(f"{file}:{node.lineno}")
    assert not missing, f"chex assertions without exception_type=ShapeError: {missing}"


def test_no_shape_error_is_raised_another_way():
    """A hand-written check whose message shows an array's shape (`{x.shape}`) raises `ShapeError`,
    never a bare ValueError or AssertionError; no `assert` statement checks an argument (python -O
    drops it)."""
    wrong = []
    for file, node in _calls_and_raises():
        if isinstance(node, ast.Assert):
            wrong.append(f"{file}:{node.lineno} assert")
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
            names_a_shape = any(isinstance(n, ast.FormattedValue) and isinstance(n.value, ast.Attribute)
                                and n.value.attr == "shape" for n in ast.walk(node.exc))
            if node.exc.func.id == "AssertionError" or (node.exc.func.id == "ValueError" and names_a_shape):
                wrong.append(f"{file}:{node.lineno} {node.exc.func.id}")
    assert not wrong, wrong


@pytest.mark.parametrize("bad", [
    lambda: sp.svd(np.ones(4, np.float32)),                                          # check_min_rank
    lambda: sp.grassmann(np.ones((4, 2), np.float32), np.ones((5, 2), np.float32)),  # chex
    lambda: sp.qk_kernel_svd(np.ones((2, 4, 8), np.float32), np.ones((1, 2, 4, 8), np.float32)),
    lambda: sp.mean_null_std(np.ones((3, 4)), np.zeros(5, int)),                     # by hand
], ids=["svd", "grassmann", "qk_kernel_svd", "mean_null_std"])
def test_a_shape_error_is_a_value_error_and_an_assertion_error(bad):
    with pytest.raises(sp.ShapeError) as raised:
        bad()
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, AssertionError)
