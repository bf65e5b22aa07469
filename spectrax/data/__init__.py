"""Small checkpoints shipped with spectrax.

`TINY_LLAMA`: a 4-layer llama (E=64, H=4, KV=2, D=16, F=128, V=64, bf16, ~0.3 MB) trained by
`experiments/train_embedded.py` on a copy task; its `TRAINING.md` records how. Load it with
`spectrax.load(spectrax.data.TINY_LLAMA)`.
"""

import pathlib

__all__ = ["DATA_DIR", "TINY_LLAMA"]

DATA_DIR = pathlib.Path(__file__).parent
TINY_LLAMA = DATA_DIR / "tiny-llama"
