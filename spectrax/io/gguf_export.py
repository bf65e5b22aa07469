"""Write a Hugging Face safetensors checkpoint as GGUF, the way llama.cpp's converter does.

For tests and benchmarks of the GGUF reader (`spectrax.io.gguf`), and for asking what a given
quantization does to a model's statistics. It follows `convert_hf_to_gguf.py` (ggml-org/llama.cpp)
for the architectures spectrax reads: tensor names from `gguf.TensorNameMap` (llama.cpp's own
table), `LlamaModel.permute` on llama q/k rows, `1 + w` for gemma norms, the metadata keys its
`set_gguf_parameters` writes, 1-D tensors in F32 and 2-D weights in the requested type (quantized
with `gguf.quants.quantize`). Two keys the converter does not write are added where llama.cpp's
built-in defaults would not reproduce the config (gemma2/gemma3 `attention.scale` when
`query_pre_attn_scalar` is not the head dim, gemma3 `attention.sliding_window_pattern` when the
layer types are not every sixth layer global). No tokenizer is written.
"""

from __future__ import annotations

import os

import gguf
import numpy as np

from spectrax.io.checkpoint import open_checkpoint
from spectrax.io.config import parse_config
from spectrax.io.safetensors import read_tensor

__all__ = ["write_gguf"]

# spectrax model_type -> (GGUF architecture, whether the converter permutes q/k rows)
_ARCHES = {
    "llama": (gguf.MODEL_ARCH.LLAMA, True), "mistral": (gguf.MODEL_ARCH.LLAMA, True),
    "qwen2": (gguf.MODEL_ARCH.QWEN2, False), "qwen3": (gguf.MODEL_ARCH.QWEN3, False),
    "gemma": (gguf.MODEL_ARCH.GEMMA, False), "gemma2": (gguf.MODEL_ARCH.GEMMA2, False),
    "gemma3_text": (gguf.MODEL_ARCH.GEMMA3, False), "phi3": (gguf.MODEL_ARCH.PHI3, False),
}


def write_gguf(checkpoint: str | os.PathLike, out: str | os.PathLike, *, qtype: str = "F32") -> str:
    """Convert the safetensors checkpoint at `checkpoint` to the new GGUF file `out`.

    Args:
      qtype: ggml type of the 2-D weights (`"F32"`, `"F16"`, `"BF16"`, `"Q8_0"`, `"Q4_0"`, ... any
        type `gguf.quants.quantize` implements). A weight whose rows are not a whole number of
        the type's blocks is written in F32, as llama.cpp falls back for such tensors.
    Returns:
      The absolute path of `out`.
    """
    out = os.path.abspath(os.fspath(out))
    files = open_checkpoint(checkpoint)
    spec = parse_config(files.config, source=files.config_source)
    if spec.model_type not in _ARCHES or spec.wrapper:
        raise ValueError(f"{files.path}: write_gguf converts {', '.join(_ARCHES)} (text-only checkpoints), not {spec.model_type}")
    arch, permute = _ARCHES[spec.model_type]
    kind = gguf.GGMLQuantizationType[qtype]
    names = gguf.get_tensor_name_map(arch, spec.num_layers)
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[arch])
    _metadata(writer, spec, files.config)
    for name, info in sorted(files.tensors.items()):
        if name == "lm_head.weight" and spec.model_type in ("gemma", "gemma2"):
            continue  # the converter skips it (tied)
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"{files.path}: llama.cpp has no GGUF name for tensor {name!r}")
        data = np.asarray(read_tensor(info), np.float32)
        if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute(data, spec.num_heads)
        if permute and name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute(data, spec.num_kv_heads)
        if spec.norm_offset and name.endswith("norm.weight"):
            data = data + np.float32(spec.norm_offset)
        block = gguf.GGML_QUANT_SIZES[kind][0]
        stored = kind if data.ndim == 2 and data.shape[-1] % block == 0 else gguf.GGMLQuantizationType.F32
        writer.add_tensor(new_name, _quantize(data, stored), raw_dtype=stored)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _quantize(data: np.ndarray, kind: gguf.GGMLQuantizationType) -> np.ndarray:
    return gguf.quants.quantize(data, kind)


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: each head's half-split rows to adjacent rotary pairs."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _metadata(writer: gguf.GGUFWriter, spec, config) -> None:
    """The keys `set_gguf_parameters` writes for these architectures."""
    E, H, D = spec.hidden_size, spec.num_heads, spec.head_dim
    rope = dict(config.get("rope_parameters") or {})
    full, local = rope.get("full_attention", rope), rope.get("sliding_attention", {})
    writer.add_block_count(spec.num_layers)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(E)
    writer.add_feed_forward_length(spec.intermediate_size)
    writer.add_head_count(H)
    writer.add_head_count_kv(spec.num_kv_heads)
    writer.add_layer_norm_rms_eps(spec.norm_eps)
    writer.add_rope_freq_base(full.get("rope_theta", config.get("rope_theta", 10000.0)))
    if "rope_theta" in local:
        writer.add_rope_freq_base_swa(local["rope_theta"])
    if "head_dim" in config:
        writer.add_key_length(D)
        writer.add_value_length(D)
    if spec.model_type in ("llama", "mistral"):
        writer.add_vocab_size(spec.vocab_size)
        writer.add_rope_dimension_count(D)
    if spec.model_type == "phi3":
        fraction = full.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
        writer.add_rope_dimension_count(int(fraction * E) // H)
        writer.add_rope_scaling_orig_ctx_len(config.get("original_max_position_embeddings", 4096))
        writer.add_sliding_window(config.get("sliding_window") or 0)
    if spec.model_type in ("gemma2", "gemma3_text"):
        for key, add in (("attn_logit_softcapping", writer.add_attn_logit_softcapping),
                         ("final_logit_softcapping", writer.add_final_logit_softcapping)):
            if config.get(key):
                add(config[key])
        writer.add_sliding_window(config["sliding_window"])
        if config.get("query_pre_attn_scalar", D) != D:
            writer.add_attention_scale(config["query_pre_attn_scalar"] ** -0.5)
        period = 2 if spec.model_type == "gemma2" else 6  # llama.cpp's built-in sliding-window periods
        sliding = [kind == "sliding_attention" for kind in spec.layer_types]
        if sliding != [i % period < period - 1 for i in range(spec.num_layers)]:
            writer.add_sliding_window_pattern(sliding)
