"""The `>>>` examples of the most-used public functions run, on the shipped tiny-llama, and print
what their docstrings say (`doctest`, ELLIPSIS and NORMALIZE_WHITESPACE)."""

import doctest
import importlib

import pytest

# The documented functions, by module: each must hold an example.
EXAMPLES = {
    "spectrax.io.load": ["load", "stream_layers"],
    "spectrax.io.inspect": ["inspect"],
    "spectrax.spectral.decompose": ["singular_values"],
    "spectrax.spectral.nulls": ["gaussian_spectrum_null"],
    "spectrax.models.decoder": ["forward", "capture"],
    "spectrax.models.nnx": ["Decoder"],
    "spectrax.run.streaming": ["collect"],
    "spectrax.run.analysis": ["analyze"],
    "spectrax.run.comparison": ["compare"],
}
# Whole analyses and comparisons: their reports draw figures (~10 s each), so they are `slow`.
END_TO_END = {"spectrax.run.analysis", "spectrax.run.comparison"}


def _run_examples(name: str) -> None:
    module = importlib.import_module(name)  # the module itself: `spectrax.io.load` the attribute is a function
    tests = {t.name.rsplit(".", 1)[-1]: t for t in doctest.DocTestFinder().find(module) if t.examples}
    missing = [f for f in EXAMPLES[name] if f not in tests]
    assert not missing, f"{name}: no example in {missing}"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests.values():
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} failing example(s) in {name} (printed above)"


@pytest.mark.parametrize("name", [n for n in EXAMPLES if n not in END_TO_END])
@pytest.mark.slow
def test_examples(name):
    _run_examples(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(END_TO_END))
def test_end_to_end_examples(name):
    _run_examples(name)


def test_ten_functions_have_examples():
    assert sum(len(functions) for functions in EXAMPLES.values()) >= 10
