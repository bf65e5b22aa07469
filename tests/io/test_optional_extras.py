"""The `hub` and `gguf` extras are optional: spectrax imports and reads safetensors without them, and
using one that is missing is one line naming the extra to install (exit code 2 from the command)."""

import subprocess
import sys

import pytest

from spectrax import cli
from tests.conftest import CHECKPOINTS


def test_spectrax_imports_and_reads_safetensors_without_the_extras():
    code = ("import sys; sys.modules['gguf'] = None; sys.modules['huggingface_hub'] = None\n"
            "import spectrax, spectrax.cli, spectrax.run.analysis, spectrax.models, spectrax.dynamics\n"
            f"m = spectrax.load({str(CHECKPOINTS / 'llama')!r}); assert m.layer(0)['attn']['q'].ndim == 3\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("module, extra", [("gguf", "gguf"), ("huggingface_hub", "hub")])
def test_a_missing_extra_is_one_line_naming_it(module, extra, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    monkeypatch.chdir(tmp_path)
    if module == "gguf":
        (tmp_path / "model.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(64))
        target = "model.gguf"
    else:
        target = "SomeOrg/some-model"   # not a local path: a Hub repo id
    assert cli.main(["inspect", target]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pip install 'spectrax[{extra}]'" in err, err
