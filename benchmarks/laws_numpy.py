"""The attention laws the way a numpy research script computes them: the peer of `spectrax analyze
--analyses laws` in `bench_coldstart.py`'s `laws14b` case.

For every layer of a Llama-format safetensors checkpoint: read `q_proj`, `k_proj`, `v_proj`
(bfloat16, float16 or float32) into float32, split them into heads `(D, E)`, take each head's thin
SVD one head at a time (`np.linalg.svd`, vectors included: the laws' singular-vector statistics
need them), and compute each query head's Pearson correlation of its Q and K spectra and their
SSR (mean absolute difference of the unit-norm spectra) against the K head it reads. With
`--num-draws N` also the random baseline spectrax reports beside them: N Gaussian matrices of the
head shape per head of each matrix, singular values only (spectrax draws the same number of
spectra, in law, from Bartlett factors).

    python benchmarks/laws_numpy.py CHECKPOINT [--num-draws 16]

Prints one JSON line: seconds, layers, heads, SVDs computed, and the median Pearson and SSR.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import time

import numpy as np

__all__ = ["head_spectra", "main", "read_tensors"]

_DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}


def read_tensors(path: str, names: set[str]) -> dict[str, np.ndarray]:
    """`{name: float32 array}` of the named tensors of one `.safetensors` file that it holds."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        out = {}
        for name, info in header.items():
            if name not in names:
                continue
            start, end = info["data_offsets"]
            f.seek(8 + size + start)
            raw = np.frombuffer(f.read(end - start), _DTYPES[info["dtype"]]).reshape(info["shape"])
            out[name] = (raw.astype(np.uint32) << 16).view(np.float32) if info["dtype"] == "BF16" else raw.astype(np.float32)
    return out


def head_spectra(w: np.ndarray, head_dim: int) -> list[np.ndarray]:
    """Singular values of each `(head_dim, E)` head of a projection `(heads * head_dim, E)`."""
    return [np.linalg.svd(w[h * head_dim:(h + 1) * head_dim], full_matrices=False)[1] for h in range(len(w) // head_dim)]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--num-draws", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with open(os.path.join(args.checkpoint, "config.json")) as f:
        config = json.load(f)
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    files = sorted(n for n in os.listdir(args.checkpoint) if n.endswith(".safetensors"))
    rng = np.random.default_rng(0)
    pearson, ssr, svds = [], [], 0
    for layer in range(layers):
        prefix = f"model.layers.{layer}.self_attn."
        wanted = {prefix + f"{m}_proj.weight" for m in "qkv"}
        weights = {}
        for name in files:
            weights.update(read_tensors(os.path.join(args.checkpoint, name), wanted))
        spectra = {m: head_spectra(weights[prefix + f"{m}_proj.weight"], head_dim) for m in "qkv"}
        svds += sum(len(s) for s in spectra.values())
        group = len(spectra["q"]) // len(spectra["k"])
        for h, s_q in enumerate(spectra["q"]):
            s_k = spectra["k"][h // group]
            pearson.append(np.corrcoef(s_q, s_k)[0, 1])
            ssr.append(np.mean(np.abs(s_q / np.linalg.norm(s_q) - s_k / np.linalg.norm(s_k))))
        for m in "qkv":
            for _ in range(args.num_draws * len(spectra[m])):
                shape = (head_dim, weights[prefix + f"{m}_proj.weight"].shape[1])
                np.linalg.svd(rng.standard_normal(shape, dtype=np.float32), compute_uv=False)
                svds += 1
    result = {"seconds": time.perf_counter() - started, "layers": layers, "query_heads": len(pearson),
              "svds": svds, "num_draws": args.num_draws, "median_pearson": float(np.median(pearson)),
              "median_ssr": float(np.median(ssr))}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
