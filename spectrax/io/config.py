"""Parse a Hugging Face `config.json` into a `ModelSpec`, refusing what spectrax does not understand.

Every key of a config falls in one of three classes, per family:

- read: a field of the spec (`num_hidden_layers`, ...) or an option the converter or the forward
  pass acts on (`rope_interleaved`, `sliding_window`, `rope_scaling`, ...);
- ignored: known not to change the weights or how spectrax uses them (token ids, dropout rates,
  generation defaults, runtime hints such as `transformers.js_config`); listed in
  `ModelSpec.ignored_keys`, so the inspect output and `summary.json` say what was not used;
- anything else is refused with an error naming it, because an unknown option may change how the
  weights must be split, and a wrong split silently corrupts every statistic. `strict=False` loads
  anyway and lists those keys in `ModelSpec.unknown_keys`.

Values are checked by type and range before anything is derived from them, with one-line errors
naming the field: `"false"` is not a boolean, `"abc"` is not an epsilon, a 5000-digit number is not
a layer count.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from spectrax.io.errors import ConfigError, UnsupportedCheckpointError

__all__ = ["ModelSpec", "parse_config", "parse_config_json", "SUPPORTED_MODEL_TYPES", "MAX_LAYERS"]

# Far above any published model (the largest have ~130 layers), low enough that per-layer
# bookkeeping of a bogus count costs nothing before the tensors contradict it.
MAX_LAYERS = 65536
_MAX_DIM = 2**31 - 1
_MAX_INT_DIGITS = 30  # longer integer literals are kept as text and refused by name


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint is, in the terms the converter and the kernels need.

    Attributes:
      model_type: the text family (`"llama"`, `"gpt2"`, ...); for a multimodal wrapper the
        family of its language tower.
      num_layers, hidden_size, num_heads, num_kv_heads, intermediate_size, vocab_size: L, E, H,
        KV, F, V.
      head_dims: D per layer, length L (equal unless the family varies it per layer).
      norm: `"rms"` or `"layer"`; `norm_offset` is 1.0 where the stored gain w acts as (1 + w).
      qk_norm: None, `"head"` (a (D,) gain applied per head) or `"projection"` (a (H*D,) gain over
        the whole projection, OLMo-2).
      layer_types: per-layer attention kind as the config states it (`"full_attention"`,
        `"sliding_attention"`), or all `"full_attention"`.
      tie_word_embeddings: what the config says; the converter checks it against the tensors.
      rope_interleaved: the stored q/k rows of each head pair features (2i, 2i+1) for rotary
        (GPT-J / nanotron layout) instead of (i, i + D/2); the converter reorders them.
      wrapper: the outer model_type when the text config was nested (e.g. `"gemma3"`), else None.
      config: the (text) config as read, for forward passes that need more options.
      ignored_keys: keys present and known not to matter (`text_config.`-prefixed when nested).
      unknown_keys: keys accepted under `strict=False` without being understood.
    """

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dims: tuple[int, ...]
    intermediate_size: int
    vocab_size: int
    norm: str
    norm_eps: float
    norm_offset: float
    qk_norm: str | None
    layer_types: tuple[str, ...]
    tie_word_embeddings: bool
    rope_interleaved: bool = False
    wrapper: str | None = None
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    ignored_keys: tuple[str, ...] = ()
    unknown_keys: tuple[str, ...] = ()

    @property
    def head_dim(self) -> int:
        """D when every layer has the same head dim; raises otherwise."""
        if len(set(self.head_dims)) != 1:
            raise ValueError(f"head_dim varies per layer: {self.head_dims}")
        return self.head_dims[0]

    @property
    def group_size(self) -> int:
        """Query heads per key/value head, H // KV; query head h uses KV head h // group_size."""
        return self.num_heads // self.num_kv_heads

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("config")
        d["head_dim"] = self.head_dims[0] if len(set(self.head_dims)) == 1 else None
        return d


# ----------------------------------------------------------------------------------------------
# Reading the JSON text.


class _LongInteger(str):
    """An integer literal too long to be a size; kept as its digits so the error can name the field."""


def _parse_int(text: str) -> int | _LongInteger:
    return int(text) if len(text.lstrip("-")) <= _MAX_INT_DIGITS else _LongInteger(text)


def parse_config_json(raw: str | bytes, *, source: str = "config.json") -> dict[str, Any]:
    """Decode a `config.json` text into a dict, refusing malformed text in one line naming `source`.

    Integer literals longer than 30 digits are kept as text and refused later by the field that
    holds them (Python would otherwise refuse them, or spend quadratic time, without a name).
    """
    try:
        config = json.loads(raw, parse_int=_parse_int)
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a config") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ConfigError(f"{source}: not valid JSON ({_short(str(e), 120)})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(config).__name__}")
    return config


# ----------------------------------------------------------------------------------------------
# Value checks: key -> (description, predicate). Applied to every key present that spectrax reads.


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _nullable(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_LAYERS = (f"an integer from 1 to {MAX_LAYERS}", lambda v: _is_int(v) and 1 <= v <= MAX_LAYERS)
_DIM = ("a positive integer", lambda v: _is_int(v) and 1 <= v <= _MAX_DIM)
_NULLABLE_DIM = ("a positive integer or null", _nullable(_DIM[1]))
_COUNT = ("a non-negative integer", lambda v: _is_int(v) and 0 <= v <= _MAX_DIM)
_POSITIVE = ("a positive finite number", lambda v: _is_number(v) and v > 0)
_NULLABLE_POSITIVE = ("a positive finite number or null", _nullable(_POSITIVE[1]))
_FRACTION = ("a number in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1)
_BOOL = ("true or false", lambda v: isinstance(v, bool))
_NULLABLE_BOOL = ("true, false or null", _nullable(_BOOL[1]))
_STR = ("a string", lambda v: isinstance(v, str))
_NULLABLE_STR = ("a string or null", _nullable(_STR[1]))
_OBJECT = ("an object", lambda v: isinstance(v, dict))
_NULLABLE_OBJECT = ("an object or null", _nullable(_OBJECT[1]))
_STR_LIST = ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))

_VALUE_CHECKS: Mapping[str, tuple[str, Callable[[Any], bool]]] = {
    **dict.fromkeys(("num_hidden_layers", "n_layer"), _LAYERS),
    **dict.fromkeys(
        ("hidden_size", "n_embd", "n_embed", "num_attention_heads", "n_head", "num_key_value_heads", "head_dim",
         "intermediate_size", "ffn_dim", "vocab_size", "word_embed_proj_dim", "sliding_window_pattern",
         "_sliding_window_pattern"), _DIM),
    **dict.fromkeys(("n_inner", "sliding_window"), _NULLABLE_DIM),
    "max_window_layers": _COUNT,
    **dict.fromkeys(
        ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "rope_theta", "rotary_emb_base",
         "rope_local_base_freq", "query_pre_attn_scalar"), _POSITIVE),
    **dict.fromkeys(("attn_logit_softcapping", "final_logit_softcapping"), _NULLABLE_POSITIVE),
    **dict.fromkeys(("partial_rotary_factor", "rotary_pct"), _FRACTION),
    **dict.fromkeys(("tie_word_embeddings", "rope_interleaved"), _BOOL),
    # null stands for the library default in configs transformers saves
    **dict.fromkeys(
        ("use_sliding_window", "use_parallel_residual", "use_bidirectional_attention", "scale_attn_weights",
         "scale_attn_by_inverse_layer_idx", "add_cross_attention", "is_decoder", "is_encoder_decoder",
         "layer_norm_elementwise_affine", "use_mrope", "attention_bias", "mlp_bias", "lm_head_bias"),
        _NULLABLE_BOOL),
    "model_type": _STR,
    "position_embedding_type": _STR,
    **dict.fromkeys(("hidden_act", "hidden_activation", "activation_function", "torch_dtype", "dtype"),
                    _NULLABLE_STR),
    **dict.fromkeys(("rope_scaling", "rope_parameters"), _NULLABLE_OBJECT),
    **dict.fromkeys(("text_config", "quantization_config", "pruned_heads"), _OBJECT),
    "layer_types": _STR_LIST,
}


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: Any) -> str:
    if isinstance(value, _LongInteger):
        return f"an integer with {len(value.lstrip('-'))} digits"
    if isinstance(value, (dict, list)):
        return f"{'an object' if isinstance(value, dict) else 'a list'} ({_short(json.dumps(value, default=str))})"
    return _short(repr(value))


# Inside rope_scaling / rope_parameters (and their per-layer-type entries): the values the rotary reads.
_ROPE_CHECKS: Mapping[str, tuple[str, Callable[[Any], bool]]] = {
    "rope_type": _STR, "type": _STR, "rope_theta": _POSITIVE, "factor": _POSITIVE,
    "partial_rotary_factor": _FRACTION,
}


def _check_values(config: Mapping[str, Any], source: str, *, checks=_VALUE_CHECKS, prefix: str = "") -> None:
    for key, value in config.items():
        if key in checks:
            what, ok = checks[key]
            if not ok(value):
                raise ConfigError(f"{source}: field {prefix + key!r} must be {what}, got {_describe(value)}")
        if key in ("rope_scaling", "rope_parameters") and isinstance(value, dict) and not prefix:
            _check_values(value, source, checks=_ROPE_CHECKS, prefix=key + ".")
            for kind, inner in value.items():  # gemma3: one entry per layer type
                if isinstance(inner, dict):
                    _check_values(inner, source, checks=_ROPE_CHECKS, prefix=f"{key}.{kind}.")


def _names(keys: Sequence[str], limit: int = 5) -> str:
    """`'a', 'b', 'c'` or `'a', 'b', ... (12 in all)`: short however many there are."""
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, ... ({len(keys)} in all)"


# ----------------------------------------------------------------------------------------------
# Which keys each family reads, ignores, or accepts only with certain values.

# Keys any family may carry that spectrax never uses and that cannot change the weights:
# bookkeeping, generation defaults written by older transformers versions, token ids, dropout,
# initialisation, caching, runtime hints of other libraries.
_IGNORED_ANYWHERE = frozenset(
    """
    _name_or_path architectures transformers_version torch_dtype dtype auto_map _commit_hash
    tokenizer_class task_specific_params id2label label2id problem_type finetuning_task
    return_dict output_attentions output_hidden_states torchscript use_bfloat16 use_return_dict
    chunk_size_feed_forward tie_encoder_decoder prefix tf_legacy_loss cross_attention_hidden_size
    decoder_start_token_id sep_token_id unk_token_id bos_token_id eos_token_id pad_token_id
    max_length min_length do_sample early_stopping num_beams num_beam_groups diversity_penalty
    temperature top_k top_p typical_p repetition_penalty length_penalty no_repeat_ngram_size
    encoder_no_repeat_ngram_size bad_words_ids num_return_sequences output_scores
    return_dict_in_generate forced_bos_token_id forced_eos_token_id remove_invalid_values
    exponential_decay_length_penalty suppress_tokens begin_suppress_tokens
    use_cache initializer_range init_std gradient_checkpointing _attn_implementation_autoset
    attention_dropout attn_pdrop hidden_dropout hidden_dropout_prob attention_probs_dropout_prob
    resid_pdrop embd_pdrop dropout classifier_dropout layerdrop activation_dropout
    max_position_embeddings transformers.js_config
    """.split()
)
# Keys every family reads (the forward pass, or a refusal when set).
_READ_ANYWHERE = frozenset(
    """
    model_type tie_word_embeddings rope_theta rope_scaling rope_parameters hidden_act hidden_activation
    activation_function layer_types sliding_window pruned_heads is_decoder add_cross_attention
    is_encoder_decoder
    """.split()
)
# Options whose other values change the layout or the model in ways spectrax does not convert.
_ACCEPTED_ANYWHERE: Mapping[str, tuple[Any, ...]] = {"is_encoder_decoder": (False,), "add_cross_attention": (False,)}

_LLAMA_FIELDS = {
    "num_layers": ("num_hidden_layers",),
    "hidden_size": ("hidden_size",),
    "num_heads": ("num_attention_heads",),
    "num_kv_heads": ("num_key_value_heads",),
    "head_dim": ("head_dim",),
    "intermediate_size": ("intermediate_size",),
    "vocab_size": ("vocab_size",),
    "norm_eps": ("rms_norm_eps",),
}
# Bias flags are ignored: the stored tensors decide which biases exist, and the converter
# refuses any stored tensor it does not take.
_BIAS_FLAGS = frozenset({"attention_bias", "mlp_bias"})


@dataclasses.dataclass(frozen=True)
class _Family:
    fields: Mapping[str, Sequence[str]]
    norm: str
    read: frozenset[str] = frozenset()
    ignored: frozenset[str] = frozenset()
    norm_offset: float = 0.0
    qk_norm: str | None = None
    accepted_values: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)

    def known(self) -> frozenset[str]:
        fields = {key for keys in self.fields.values() for key in keys}
        return self.read | self.ignored | fields | _READ_ANYWHERE | _IGNORED_ANYWHERE | set(self.accepted_values)


_QWEN_SLIDING = frozenset({"use_sliding_window", "max_window_layers"})
_GEMMA = _Family(
    _LLAMA_FIELDS, "rms", norm_offset=1.0,
    read=frozenset(
        """query_pre_attn_scalar attn_logit_softcapping final_logit_softcapping sliding_window_pattern
        _sliding_window_pattern rope_local_base_freq use_bidirectional_attention""".split()
    ),
    # sliding_window_size duplicates sliding_window in gemma-2 configs; transformers does not read it.
    ignored=_BIAS_FLAGS | {"cache_implementation", "sliding_window_size", "final_w"},
)

_FAMILIES: Mapping[str, _Family] = {
    # nanotron (SmolLM2) writes is_llama_config (a marker) and rope_interleaved (a layout, read).
    "llama": _Family(_LLAMA_FIELDS, "rms", read=frozenset({"rope_interleaved"}),
                     ignored=_BIAS_FLAGS | {"pretraining_tp", "is_llama_config"}),
    # transformers' Mistral reads sliding_window only; the qwen-style switches are leftovers.
    "mistral": _Family(_LLAMA_FIELDS, "rms", ignored=_BIAS_FLAGS | _QWEN_SLIDING | {"pretraining_tp"}),
    # use_mrope=true is multimodal rotary (position sections per modality), not implemented.
    "qwen2": _Family(_LLAMA_FIELDS, "rms", read=_QWEN_SLIDING, ignored=_BIAS_FLAGS,
                     accepted_values={"use_mrope": (False,)}),
    "qwen3": _Family(_LLAMA_FIELDS, "rms", read=_QWEN_SLIDING, ignored=_BIAS_FLAGS | {"pretraining_tp"},
                     qk_norm="head"),
    "gemma": _GEMMA,
    "gemma2": _GEMMA,
    "gemma3_text": dataclasses.replace(_GEMMA, qk_norm="head"),
    # Phi-4-mini's remote-code keys are accepted only at their no-op values.
    "phi3": _Family(
        _LLAMA_FIELDS, "rms", read=frozenset({"partial_rotary_factor"}),
        ignored=_BIAS_FLAGS | {"original_max_position_embeddings", "sliding_window"},
        accepted_values={"lm_head_bias": (False,), "full_attn_mod": (1,), "interpolate_factor": (1,)},
    ),
    "olmo2": _Family(_LLAMA_FIELDS, "rms", ignored=_BIAS_FLAGS, qk_norm="projection"),
    "gpt2": _Family(
        {
            "num_layers": ("n_layer", "num_hidden_layers"),
            "hidden_size": ("n_embd", "hidden_size"),
            "num_heads": ("n_head", "num_attention_heads"),
            "intermediate_size": ("n_inner",),
            "vocab_size": ("vocab_size",),
            "norm_eps": ("layer_norm_epsilon",),
        },
        "layer",
        read=frozenset({"scale_attn_weights", "scale_attn_by_inverse_layer_idx"}),
        ignored=frozenset(
            """n_positions n_ctx reorder_and_upcast_attn summary_activation summary_first_dropout
            summary_proj_to_labels summary_type summary_use_proj""".split()
        ),
        accepted_values={"add_cross_attention": (False,)},
    ),
    "gpt_neox": _Family(
        {
            "num_layers": ("num_hidden_layers",),
            "hidden_size": ("hidden_size",),
            "num_heads": ("num_attention_heads",),
            "intermediate_size": ("intermediate_size",),
            "vocab_size": ("vocab_size",),
            "norm_eps": ("layer_norm_eps",),
        },
        "layer",
        read=frozenset({"rotary_pct", "rotary_emb_base", "use_parallel_residual", "partial_rotary_factor"}),
        ignored=_BIAS_FLAGS,
    ),
    # bloom has no forward pass in spectrax: its options that shape the computation (ALiBi,
    # residual placement, fused kernels) do not change the weights.
    "bloom": _Family(
        {
            "num_layers": ("n_layer", "num_hidden_layers"),
            "hidden_size": ("hidden_size", "n_embed"),
            "num_heads": ("n_head", "num_attention_heads"),
            "vocab_size": ("vocab_size",),
            "norm_eps": ("layer_norm_epsilon",),
        },
        "layer",
        ignored=frozenset(
            """n_inner apply_residual_connection_post_layernorm pretraining_tp slow_but_exact
            masked_softmax_fusion offset_alibi skip_bias_add skip_bias_add_qkv seq_length
            attention_softmax_in_fp32 bias_dropout_fusion""".split()
        ),
    ),
    # opt has no forward pass in spectrax; pre/post-LN placement and embedding scale do not change the weights.
    "opt": _Family(
        {
            "num_layers": ("num_hidden_layers",),
            "hidden_size": ("hidden_size",),
            "num_heads": ("num_attention_heads",),
            "intermediate_size": ("ffn_dim",),
            "vocab_size": ("vocab_size",),
        },
        "layer",
        read=frozenset({"word_embed_proj_dim", "layer_norm_elementwise_affine"}),
        ignored=frozenset({"do_layer_norm_before", "_remove_final_layer_norm", "enable_bias", "scale_embedding"}),
    ),
    "bert": _Family(
        {
            "num_layers": ("num_hidden_layers",),
            "hidden_size": ("hidden_size",),
            "num_heads": ("num_attention_heads",),
            "intermediate_size": ("intermediate_size",),
            "vocab_size": ("vocab_size",),
            "norm_eps": ("layer_norm_eps",),
        },
        "layer",
        ignored=frozenset({"type_vocab_size"}),
        accepted_values={"position_embedding_type": ("absolute",), "is_decoder": (False,), "add_cross_attention": (False,)},
    ),
}

# Multimodal wrappers: (text family, keys of the outer config that do not concern the language tower).
_WRAPPERS: Mapping[str, tuple[str, frozenset[str]]] = {
    "gemma3": (
        "gemma3_text",
        frozenset(
            """vision_config mm_tokens_per_image boi_token_index eoi_token_index image_token_index
            image_token_id boi_token_id eoi_token_id""".split()
        ),
    ),
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_FAMILIES))


def parse_config(config: Mapping[str, Any], *, source: str = "config.json", strict: bool = True) -> ModelSpec:
    """Read a `config.json` dict into a `ModelSpec`.

    Args:
      config: the parsed `config.json` (see `parse_config_json` for the text).
      source: the file name to quote in errors.
      strict: refuse config keys this family does not know (default); with False they are
        accepted and listed in `ModelSpec.unknown_keys`.

    Raises:
      ConfigError: naming `source` and the field, when a value has the wrong type or range, a
        field is missing or inconsistent, the model_type is unknown, or a key/value is not understood.
      UnsupportedCheckpointError: for quantized checkpoints.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source}: expected a JSON object, got {type(config).__name__}")
    _check_values(config, source)
    if "quantization_config" in config:
        method = config["quantization_config"].get("quant_method", "unknown")
        raise UnsupportedCheckpointError(
            f"{source}: quantized checkpoint (quantization_config, quant_method={_describe(method)}); spectrax "
            "analyzes full-precision weights only. Use the unquantized release of this model."
        )
    model_type = config.get("model_type")
    wrapper, ignored, unknown = None, [], []
    if model_type in _WRAPPERS:
        text_type, wrapper_keys = _WRAPPERS[model_type]
        outer = _Family({}, "", ignored=wrapper_keys, read=frozenset({"text_config"}))
        ignored, unknown = _classify(config, outer, source, model_type, strict)
        if "text_config" not in config:
            raise ConfigError(f"{source}: model_type {model_type!r} needs a 'text_config' object")
        text = config["text_config"]
        _check_values(text, f"{source} (text_config)")
        tied = {"tie_word_embeddings": config["tie_word_embeddings"]} if "tie_word_embeddings" in config else {}
        wrapper, config = model_type, {"model_type": text_type, **tied, **text}
        source = f"{source} (text_config)"
        model_type = config["model_type"]
    if model_type not in _FAMILIES:
        raise ConfigError(
            f"{source}: model_type {_describe(model_type)} is not supported; spectrax converts "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} and the multimodal wrappers {', '.join(_WRAPPERS)}"
        )
    family = _FAMILIES[model_type]
    text_ignored, text_unknown = _classify(config, family, source, model_type, strict)
    prefix = "text_config." if wrapper else ""
    ignored += [prefix + k for k in text_ignored]
    unknown += [prefix + k for k in text_unknown]
    _check_layout_options(config, family, source, model_type)

    def field(name: str, default: Any = None) -> Any:
        for key in family.fields.get(name, ()):
            if config.get(key) is not None:
                return config[key]
        if default is None:
            raise ConfigError(f"{source}: missing field {family.fields.get(name, (name,))[0]!r} for {model_type}")
        return default

    num_layers = field("num_layers")
    hidden = field("hidden_size")
    heads = field("num_heads")
    kv_heads = field("num_kv_heads", heads)
    if heads % kv_heads:
        raise ConfigError(f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    if "head_dim" not in family.fields and hidden % heads:
        raise ConfigError(f"{source}: hidden_size={hidden} is not divisible by num_attention_heads={heads}")
    head_dim = field("head_dim", hidden // heads)
    rope_interleaved = bool(config.get("rope_interleaved", False))
    if rope_interleaved and head_dim % 2:
        raise ConfigError(f"{source}: rope_interleaved=true needs an even head_dim, got {head_dim}")
    layer_types = config.get("layer_types") or ["full_attention"] * num_layers
    if len(layer_types) != num_layers:
        raise ConfigError(f"{source}: layer_types has {len(layer_types)} entries for {num_layers} layers")
    return ModelSpec(
        model_type=model_type,
        num_layers=num_layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dims=(head_dim,) * num_layers,
        intermediate_size=field("intermediate_size", 4 * hidden),
        vocab_size=field("vocab_size"),
        norm=family.norm,
        norm_eps=float(field("norm_eps", 1e-5)),
        norm_offset=family.norm_offset,
        qk_norm=family.qk_norm,
        layer_types=tuple(layer_types),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
        rope_interleaved=rope_interleaved,
        wrapper=wrapper,
        config=dict(config),
        ignored_keys=tuple(sorted(ignored)),
        unknown_keys=tuple(sorted(unknown)),
    )


def _classify(config: Mapping[str, Any], family: _Family, source: str, model_type: str,
              strict: bool) -> tuple[list[str], list[str]]:
    """(ignored, unknown) keys of `config`; unknown keys are refused when `strict`."""
    unknown = sorted(set(config) - family.known())
    if unknown and strict:
        raise ConfigError(
            f"{source}: option(s) {_names(unknown)} not understood for model_type {model_type!r}; spectrax "
            "refuses rather than guess how they change the weights. If you know they do not, load with "
            "strict=False (command line: --allow-unknown-config)."
        )
    ignored = sorted(k for k in config if k in (family.ignored | _IGNORED_ANYWHERE) and k not in family.read)
    return ignored, unknown


def _check_layout_options(config: Mapping[str, Any], family: _Family, source: str, model_type: str) -> None:
    if config.get("pruned_heads"):
        raise ConfigError(f"{source}: pruned_heads={_describe(config['pruned_heads'])}: pruned attention heads are not supported")
    for key, accepted in {**_ACCEPTED_ANYWHERE, **family.accepted_values}.items():
        value = config.get(key)
        if value is not None and not any(value == a and type(value) is type(a) for a in accepted):
            raise ConfigError(
                f"{source}: {key}={_describe(value)} is not supported for {model_type} (supported: "
                f"{', '.join(json.dumps(a) for a in accepted)})"
            )
