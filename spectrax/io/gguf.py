"""Read a GGUF file (llama.cpp, ollama, LM Studio) as a spectrax checkpoint.

The `gguf` package (llama.cpp's own Python reader) parses the file and dequantizes its tensors.
This module only translates: GGUF metadata to the Hugging Face `config.json` keys that
`parse_config` understands, and llama.cpp's tensor names (`blk.0.attn_q.weight`) to the Hugging
Face names the adapters already convert (`model.layers.0.self_attn.q_proj.weight`). Nothing else
is new, so a GGUF goes through the same layout checks, adapters and shape checks as safetensors.

llama.cpp's converter (`convert_hf_to_gguf.py` in ggml-org/llama.cpp) changes values in two
places, and both are undone on read:

- `llama` files (Llama, Mistral, SmolLM, ... all written as `llama`): `LlamaModel.permute`
  reorders each q and k head's rows (weights and biases) from Hugging Face's half-split rotary
  layout to the adjacent-pairs layout of llama.cpp's `LLAMA_ROPE_TYPE_NORM`. The inverse
  permutation is applied on read. qwen2, qwen3, gemma* and phi3 use the half-split (NeoX) rotary
  in llama.cpp and are written unpermuted. A wrong choice here keeps every singular value but
  scrambles q/k vectors and the forward pass.
- gemma, gemma2, gemma3: every `*norm.weight` is written as `1 + w` (llama.cpp multiplies by the
  stored gain); the `1` is subtracted on read, so the tree holds `w` with `spec.norm_offset = 1`
  exactly as the safetensors release does.

Quantized tensors (Q8_0, Q4_K, IQ2_XS, ... every type `gguf.quants.dequantize` implements) come
back as float32; F32/F16/BF16 keep their stored dtype. `TensorInfo.dtype` is the ggml type, which
`inspect` shows. The file is memory-mapped read-only and each tensor is dequantized only when an
adapter asks for it, so streaming holds one layer at a time as with safetensors.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from spectrax.io.errors import CheckpointError, ConfigError, UnsupportedCheckpointError
from spectrax.io.safetensors import TensorInfo

if TYPE_CHECKING:  # imported when a file is read: an optional extra, and slow to import
    import gguf

__all__ = ["GGUF_ARCHITECTURES", "GGUFTensorInfo", "find_gguf", "read_gguf", "quantize_roundtrip"]

# GGUF `general.architecture` -> spectrax model_type.
GGUF_ARCHITECTURES: Mapping[str, str] = {
    "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma", "gemma2": "gemma2",
    "gemma3": "gemma3_text", "phi3": "phi3",
}
_GEMMA = ("gemma", "gemma2", "gemma3")
_ACTIVATIONS = {"gemma": "gelu_pytorch_tanh", "gemma2": "gelu_pytorch_tanh", "gemma3": "gelu_pytorch_tanh"}

_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# llama.cpp's per-block tensors -> names under `model.layers.{i}.` (the inverse of gguf.TensorNameMap).
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GEMMA2_NORMS = {
    "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_LAYER_NAMES_BY_ARCH = {
    "gemma2": {**_LAYER_NAMES, **_GEMMA2_NORMS},
    "gemma3": {**_LAYER_NAMES, **_GEMMA2_NORMS},
    # phi3 keeps its fused projections: qkv, and gate|up stored as one ffn_up of 2F rows.
    "phi3": {**_LAYER_NAMES, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)\.(weight|bias)$")
_FLOATS = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16), "F64": np.dtype("<f8")}


@dataclasses.dataclass(frozen=True, eq=False)
class GGUFTensorInfo(TensorInfo):
    """One tensor of a GGUF file, under the Hugging Face name it stands for.

    Attributes (beyond `TensorInfo`'s):
      name: the name stored in the file (`"blk.0.attn_q.weight"`), quoted in errors.
      dtype: the ggml storage type (`"F32"`, `"Q4_K"`, ...).
      shape: `[out, in]` (numpy order; GGUF lists dimensions innermost first).
      tensor: the `gguf.ReaderTensor` (its `data` is a read-only memory map).
      unpermute_heads: for llama q/k, the number of heads whose rows llama.cpp permuted (else 0).
      norm_shift: 1.0 for gemma norms, stored as `1 + w` (else 0).
    """

    tensor: Any = dataclasses.field(default=None, repr=False)
    unpermute_heads: int = 0
    norm_shift: float = 0.0

    @property
    def is_quantized(self) -> bool:
        """False: ggml block formats are decoded on read (`dtype` names the storage format). The
        layout refuses quantized tensors only where they are codes spectrax cannot decode."""
        return False

    def numpy_dtype(self) -> np.dtype:
        """The dtype `read` returns: the stored float dtype, or float32 for quantized types."""
        return _FLOATS.get(self.dtype, np.dtype(np.float32))

    def read(self) -> np.ndarray:
        """The tensor as a new numpy array of `shape`: dequantized, unpermuted, norm shift removed."""
        data = self.tensor.data
        if self.dtype in _FLOATS:
            array = np.array(data).view(_FLOATS[self.dtype])  # a copy out of the memory map
        else:
            array = _gguf().quants.dequantize(data, self.tensor.tensor_type)
        array = array.reshape(self.shape)
        if self.unpermute_heads:
            array = _unpermute_rows(array, self.unpermute_heads)
        if self.norm_shift:
            array = array - np.asarray(self.norm_shift, array.dtype)
        return array


def _unpermute_rows(array: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `LlamaModel.permute`: within each head, row `2i + j` goes back to `j*D/2 + i`."""
    half = array.shape[0] // heads // 2
    return array.reshape(heads, half, 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)


def find_gguf(path: str) -> str | None:
    """The GGUF file `path` names: the file itself, or the one `.gguf` in a folder without safetensors.

    A folder may also hold llama.cpp's vision projector (`mmproj*.gguf`), which is not the model.
    Raises `CheckpointError` for a folder with several model `.gguf` files.
    """
    if os.path.isfile(path):
        return path if path.endswith(".gguf") else None
    if not os.path.isdir(path) or glob.glob(os.path.join(path, "*.safetensors")):
        return None
    found = sorted(p for p in glob.glob(os.path.join(path, "*.gguf")) if not os.path.basename(p).startswith("mmproj"))
    if len(found) > 1:
        raise CheckpointError(
            f"{path}: holds {len(found)} GGUF files ({', '.join(os.path.basename(p) for p in found)}); pass the one to read"
        )
    return found[0] if found else None


def read_gguf(path: str) -> tuple[dict[str, Any], dict[str, GGUFTensorInfo]]:
    """Parse a GGUF file into a Hugging Face style config and tensors by Hugging Face name.

    Reads the header and metadata only (tensor data stays memory-mapped until read).

    Raises:
      CheckpointError for a truncated file, a bad magic number or an unknown version;
      UnsupportedCheckpointError for an architecture or ggml type spectrax does not read.
    """
    reader = _open_reader(path)
    meta = _Metadata(reader, path)
    arch = meta.arch
    stored = {t.name: t for t in reader.tensors}
    for t in reader.tensors:
        if not _readable(t.tensor_type):
            raise UnsupportedCheckpointError(
                f"{path}: tensor {t.name!r} is stored as {t.tensor_type.name}, which gguf {_gguf_version()} cannot "
                "dequantize; spectrax reads F32, F16, BF16, F64 and the quantized types gguf.quants decodes"
            )
    config = _config(meta, stored, path)
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    tensors: dict[str, GGUFTensorInfo] = {}
    for name, t in stored.items():
        hf_name, base = _hf_name(name, arch)
        info = GGUFTensorInfo(
            name=name,
            file=path,
            dtype=t.tensor_type.name,
            shape=tuple(int(d) for d in reversed(t.shape.tolist())),
            start=int(t.data_offset),
            end=int(t.data_offset) + int(t.n_bytes),
            tensor=t,
            unpermute_heads=heads.get(base, 0) if arch == "llama" else 0,
            norm_shift=1.0 if arch in _GEMMA and hf_name.endswith("norm.weight") else 0.0,
        )
        tensors[hf_name] = info
    return config, tensors


def _hf_name(name: str, arch: str) -> tuple[str, str]:
    """`(Hugging Face name, llama.cpp base name)`; unknown names keep their GGUF spelling, so a block
    tensor no adapter takes is reported by name instead of dropped."""
    block = _BLOCK.match(name)
    if block:
        layer, base, kind = block.groups()
        names = _LAYER_NAMES_BY_ARCH.get(arch, _LAYER_NAMES)
        return f"model.layers.{layer}.{names.get(base, base)}.{kind}", base
    base, _, kind = name.rpartition(".")
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{kind}", base
    return name, base


def _open_reader(path: str) -> gguf.GGUFReader:
    gguf = _gguf()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise CheckpointError(f"{path}: file is {size} bytes, too short to be GGUF (truncated?)")
    if head[:4] != b"GGUF":
        raise CheckpointError(f"{path}: not a GGUF file (starts with {head[:4]!r}, expected b'GGUF')")
    version = int.from_bytes(head[4:8], "little")
    if int.from_bytes(head[4:8], "big") in gguf.gguf_reader.READER_SUPPORTED_VERSIONS:
        raise UnsupportedCheckpointError(f"{path}: a big-endian GGUF file; spectrax reads little-endian GGUF only")
    if version not in gguf.gguf_reader.READER_SUPPORTED_VERSIONS:
        raise CheckpointError(
            f"{path}: GGUF version {version}; gguf {_gguf_version()} reads versions "
            f"{', '.join(map(str, gguf.gguf_reader.READER_SUPPORTED_VERSIONS))}"
        )
    try:
        reader = gguf.GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, MemoryError) as e:
        # The reader slices its memory map as the header says; a short file ends in a failed
        # reshape or index, an unknown ggml type id in a ValueError naming the id.
        raise CheckpointError(f"{path}: truncated or malformed GGUF file of {size} bytes ({type(e).__name__}: {e})") from None
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise CheckpointError(f"{path}: tensor {t.name!r} ends at byte {t.data_offset + t.n_bytes} but the file has {size} (truncated file)")
    return reader


@functools.cache
def _readable(kind: gguf.GGMLQuantizationType) -> bool:
    """Whether `read` can return `kind` as floats: a float type, or one `gguf.quants` decodes
    (integer types and types without a decoder raise NotImplementedError there)."""
    if kind.name in _FLOATS:
        return True
    gguf = _gguf()
    try:
        gguf.quants.dequantize(np.zeros((1, gguf.GGML_QUANT_SIZES[kind][1]), np.uint8), kind)
    except NotImplementedError:
        return False
    return True


def quantize_roundtrip(x: np.ndarray, ggml_type: str) -> np.ndarray | None:
    """`x (..., n)` quantized to `ggml_type` and dequantized again by `gguf.quants`, as float32.

    None where that is not a block type `gguf` can quantize (float and integer types, and the
    K- and IQ-types, for which it has decoders only) or `n` is not a whole number of blocks.
    """
    if ggml_type in _FLOATS:
        return None
    try:
        import gguf
    except ImportError:  # then no matrix was read from a GGUF file
        return None
    kind = getattr(gguf.GGMLQuantizationType, ggml_type, None)
    if kind is None or not _quantizable(kind):
        return None
    if x.shape[-1] % gguf.GGML_QUANT_SIZES[kind][0]:
        return None
    return gguf.quants.dequantize(gguf.quants.quantize(np.asarray(x, np.float32), kind), kind).reshape(x.shape)


@functools.cache
def _quantizable(kind: gguf.GGMLQuantizationType) -> bool:
    gguf = _gguf()
    block = gguf.GGML_QUANT_SIZES[kind][0]
    try:
        gguf.quants.quantize(np.zeros((1, block), np.float32), kind)
    except (NotImplementedError, ValueError):
        return False
    return True


def _gguf():
    """llama.cpp's `gguf` package, imported when a GGUF file is first read (the `gguf` extra)."""
    try:
        import gguf
    except ImportError:
        raise UnsupportedCheckpointError(
            "reading GGUF files needs llama.cpp's gguf package: pip install 'spectrax[gguf]'") from None
    return gguf


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


class _Metadata:
    """Typed access to `<arch>.<key>` metadata, with errors naming the file and key."""

    def __init__(self, reader: gguf.GGUFReader, path: str):
        self._reader, self.path = reader, path
        self.arch = self.get("general.architecture", prefixed=False)
        if self.arch is None:
            raise CheckpointError(f"{path}: GGUF metadata has no 'general.architecture'")
        if self.arch not in GGUF_ARCHITECTURES:
            raise UnsupportedCheckpointError(
                f"{path}: GGUF architecture {self.arch!r} is not supported; spectrax reads "
                f"{', '.join(GGUF_ARCHITECTURES)}"
            )
        if (self.get("split.count", prefixed=False) or 1) > 1:
            raise UnsupportedCheckpointError(
                f"{path}: one part of a split GGUF ({self.get('split.count', prefixed=False)} parts); merge the parts "
                "first (llama.cpp: llama-gguf-split --merge FIRST-PART OUT.gguf)"
            )

    def get(self, key: str, default: Any = None, *, prefixed: bool = True) -> Any:
        full = f"{self.arch}.{key}" if prefixed else key
        field = self._reader.get_field(full)
        if field is None:
            return default
        value = field.contents()
        if field.types and field.types[0] in (_gguf().GGUFValueType.FLOAT32,):
            # The shortest decimal that identifies the stored float32: what the source config said.
            value = float(str(np.float32(value)))
        return value

    def required(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ConfigError(f"{self.path}: GGUF metadata has no '{self.arch}.{key}'")
        return value

    def uniform(self, key: str, default: Any = None) -> Any:
        """A per-model value that some files store per layer: the one value, or an error if they differ."""
        value = self.get(key, default) if default is not None else self.required(key)
        if isinstance(value, list):
            if len(set(value)) != 1:
                raise UnsupportedCheckpointError(
                    f"{self.path}: '{self.arch}.{key}' differs per layer ({value}); spectrax reads uniform layers only"
                )
            value = value[0]
        return value


def _config(meta: _Metadata, stored: Mapping[str, Any], path: str) -> dict[str, Any]:
    """A Hugging Face `config.json` for the file, in the keys `parse_config` and the forward pass read."""
    arch = meta.arch
    if meta.get("expert_count", 0):
        raise UnsupportedCheckpointError(
            f"{path}: a mixture-of-experts GGUF ({meta.get('expert_count')} experts); spectrax reads dense models only"
        )
    if "token_embd.weight" not in stored:
        raise CheckpointError(f"{path}: GGUF file has no 'token_embd.weight'")
    layers = meta.required("block_count")
    hidden = meta.required("embedding_length")
    heads = meta.uniform("attention.head_count")
    head_dim = meta.get("attention.key_length") or hidden // heads
    if meta.get("attention.value_length", head_dim) != head_dim:
        raise UnsupportedCheckpointError(
            f"{path}: key_length {head_dim} != value_length {meta.get('attention.value_length')}; not supported"
        )
    config: dict[str, Any] = {
        "model_type": GGUF_ARCHITECTURES[arch],
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": meta.uniform("attention.head_count_kv", heads),
        "head_dim": head_dim,
        "intermediate_size": meta.uniform("feed_forward_length"),
        "vocab_size": int(stored["token_embd.weight"].shape[1]),  # GGUF dims are innermost first
        "rms_norm_eps": meta.required("attention.layer_norm_rms_epsilon"),
        "rope_theta": meta.get("rope.freq_base", 10000.0),
        "hidden_act": _ACTIVATIONS.get(arch, "silu"),
        "tie_word_embeddings": "output.weight" not in stored,
    }
    for key, gguf_key in (("max_position_embeddings", "context_length"),):
        if meta.get(gguf_key) is not None:
            config[key] = meta.get(gguf_key)
    for key in ("bos_token_id", "eos_token_id"):
        if meta.get(f"tokenizer.ggml.{key}", prefixed=False) is not None:
            config[key] = meta.get(f"tokenizer.ggml.{key}", prefixed=False)
    rotary = meta.get("rope.dimension_count", head_dim)
    if rotary != head_dim:
        if arch != "phi3":
            raise UnsupportedCheckpointError(
                f"{path}: '{arch}.rope.dimension_count' = {rotary} but the head dim is {head_dim} (partial rotary); "
                f"not supported for {arch}"
            )
        config["partial_rotary_factor"] = rotary / head_dim
    scaling = _rope_scaling(meta, stored)
    if scaling:
        config["rope_scaling"] = scaling
    if arch in ("gemma2", "gemma3"):
        config.update(_gemma_options(meta, config))
    if arch == "phi3":
        config["sliding_window"] = meta.get("attention.sliding_window") or None
        if meta.get("rope.scaling.original_context_length"):
            config["original_max_position_embeddings"] = meta.get("rope.scaling.original_context_length")
    return config


def _rope_scaling(meta: _Metadata, stored: Mapping[str, Any]) -> dict[str, Any] | None:
    """Rotary scaling as Hugging Face configs spell it; the forward pass refuses all but the default."""
    kind = meta.get("rope.scaling.type")
    if "rope_freqs.weight" in stored:  # llama3-style per-frequency factors, kept as a tensor (not converted)
        return {"rope_type": "llama3"}
    if "rope_factors_long.weight" in stored:  # phi3 longrope
        long, short = (np.asarray(stored[f"rope_factors_{w}.weight"].data, np.float64).tolist() for w in ("long", "short"))
        return {"rope_type": "longrope", "long_factor": long, "short_factor": short}
    if kind in (None, "none"):
        return None
    scaling = {"rope_type": kind, "factor": meta.get("rope.scaling.factor")}
    if meta.get("rope.scaling.original_context_length"):
        scaling["original_max_position_embeddings"] = meta.get("rope.scaling.original_context_length")
    return scaling


def _gemma_options(meta: _Metadata, config: Mapping[str, Any]) -> dict[str, Any]:
    """gemma2/gemma3 attention options llama.cpp keeps as metadata or fixes in code (llama-model.cpp)."""
    arch, layers = meta.arch, config["num_hidden_layers"]
    options: dict[str, Any] = {"sliding_window": meta.get("attention.sliding_window")}
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if meta.get(key) is not None:
            options[key] = meta.get(key)
    # Query scale: `attention.scale` where the file has it; otherwise llama.cpp's rule, E/H for
    # the 27B models (46 layers gemma2, 62 layers gemma3) and 1/sqrt(head_dim) for the rest.
    scale = meta.get("attention.scale")
    if scale:
        scalar = 1.0 / scale**2
        options["query_pre_attn_scalar"] = round(scalar) if abs(scalar - round(scalar)) < 1e-3 else scalar
    elif (arch, layers) in (("gemma2", 46), ("gemma3", 62)):
        options["query_pre_attn_scalar"] = config["hidden_size"] // config["num_attention_heads"]
    else:
        options["query_pre_attn_scalar"] = config["head_dim"]
    # Sliding layers: `attention.sliding_window_pattern` (a period, or one flag per layer) where
    # the file has it; llama.cpp's fixed periods otherwise (every 2nd layer global in gemma2,
    # every 6th in gemma3).
    pattern = meta.get("attention.sliding_window_pattern", 2 if arch == "gemma2" else 6)
    if isinstance(pattern, list):
        flags = pattern
    else:  # llama.cpp's set_swa_pattern: period 0 means every layer slides
        flags = [pattern == 0 or i % pattern < pattern - 1 for i in range(layers)]
    if len(flags) != layers:
        raise ConfigError(f"{meta.path}: '{arch}.attention.sliding_window_pattern' has {len(flags)} flags for {layers} layers")
    options["layer_types"] = ["sliding_attention" if f else "full_attention" for f in flags]
    if arch == "gemma3":
        options["rope_local_base_freq"] = meta.get("rope.freq_base_swa", 10000.0)
    return options
