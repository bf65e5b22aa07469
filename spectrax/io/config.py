"""Parse a Hugging Face `config.json` into a `ModelSpec`, refusing what spectrax does not understand.

Each family lists the config keys it understands: the fields spectrax reads, and keys known
not to change the layout of the weights (dropout rates, token ids, rotary settings, ...).
Any other key is refused with an error naming it, because an unknown option may change how
the weights must be split, and a wrong split silently corrupts every statistic. Pass
`strict=False` to load anyway; the ignored keys are then recorded in `ModelSpec.ignored_keys`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from spectrax.io.errors import ConfigError, UnsupportedCheckpointError

__all__ = ["ModelSpec", "parse_config", "SUPPORTED_MODEL_TYPES"]


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
      wrapper: the outer model_type when the text config was nested (e.g. `"gemma3"`), else None.
      config: the (text) config as read, for forward passes that need more options.
      ignored_keys: keys accepted under `strict=False` without being understood.
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
    wrapper: str | None = None
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    ignored_keys: tuple[str, ...] = ()

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


# Keys any family may carry that do not change the weights' layout: bookkeeping, generation
# defaults written by older transformers versions, token ids, dropout, rotary/positional settings.
_COMMON_KEYS = frozenset(
    """
    _name_or_path architectures model_type transformers_version torch_dtype dtype auto_map
    tokenizer_class task_specific_params id2label label2id problem_type finetuning_task
    return_dict output_attentions output_hidden_states torchscript use_bfloat16 use_return_dict
    chunk_size_feed_forward is_encoder_decoder tie_encoder_decoder prefix tf_legacy_loss
    cross_attention_hidden_size decoder_start_token_id sep_token_id unk_token_id
    bos_token_id eos_token_id pad_token_id
    max_length min_length do_sample early_stopping num_beams num_beam_groups diversity_penalty
    temperature top_k top_p typical_p repetition_penalty length_penalty no_repeat_ngram_size
    encoder_no_repeat_ngram_size bad_words_ids num_return_sequences output_scores
    return_dict_in_generate forced_bos_token_id forced_eos_token_id remove_invalid_values
    exponential_decay_length_penalty suppress_tokens begin_suppress_tokens
    use_cache initializer_range init_std gradient_checkpointing
    attention_dropout attn_pdrop hidden_dropout hidden_dropout_prob attention_probs_dropout_prob
    resid_pdrop embd_pdrop dropout classifier_dropout layerdrop activation_dropout
    _attn_implementation_autoset
    max_position_embeddings rope_theta rope_scaling rope_parameters
    hidden_act hidden_activation activation_function
    tie_word_embeddings pruned_heads is_decoder add_cross_attention
    """.split()
)

# How each family names the spec's fields in config.json: spec field -> (config keys tried in order).
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
_LLAMA_KEYS = frozenset({"attention_bias", "mlp_bias", "pretraining_tp", "head_dim"})
_SLIDING_KEYS = frozenset({"sliding_window", "use_sliding_window", "max_window_layers", "layer_types"})
_GEMMA_KEYS = frozenset(
    {
        "attention_bias", "head_dim", "query_pre_attn_scalar", "attn_logit_softcapping",
        "final_logit_softcapping", "sliding_window", "sliding_window_pattern", "_sliding_window_pattern",
        "layer_types", "cache_implementation", "rope_local_base_freq", "use_bidirectional_attention",
        "final_w", "sliding_window_size",
    }
)


@dataclasses.dataclass(frozen=True)
class _FamilyConfig:
    fields: Mapping[str, Sequence[str]]
    keys: frozenset[str]
    norm: str
    norm_offset: float = 0.0
    qk_norm: str | None = None
    # (config key, accepted values): other values change the weights' layout in ways spectrax
    # does not convert, so they are refused.
    accepted_values: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)


_FAMILIES: Mapping[str, _FamilyConfig] = {
    "llama": _FamilyConfig(_LLAMA_FIELDS, _LLAMA_KEYS, "rms"),
    "mistral": _FamilyConfig(_LLAMA_FIELDS, _LLAMA_KEYS | _SLIDING_KEYS, "rms"),
    "qwen2": _FamilyConfig(_LLAMA_FIELDS, _SLIDING_KEYS, "rms"),
    "qwen3": _FamilyConfig(_LLAMA_FIELDS, _LLAMA_KEYS | _SLIDING_KEYS, "rms", qk_norm="head"),
    "gemma": _FamilyConfig(_LLAMA_FIELDS, _GEMMA_KEYS, "rms", norm_offset=1.0),
    "gemma2": _FamilyConfig(_LLAMA_FIELDS, _GEMMA_KEYS, "rms", norm_offset=1.0),
    "gemma3_text": _FamilyConfig(_LLAMA_FIELDS, _GEMMA_KEYS, "rms", norm_offset=1.0, qk_norm="head"),
    "phi3": _FamilyConfig(
        _LLAMA_FIELDS,
        frozenset({"original_max_position_embeddings", "partial_rotary_factor", "sliding_window", "attention_bias"}),
        "rms",
    ),
    "olmo2": _FamilyConfig(_LLAMA_FIELDS, frozenset({"attention_bias"}), "rms", qk_norm="projection"),
    "gpt2": _FamilyConfig(
        {
            "num_layers": ("n_layer", "num_hidden_layers"),
            "hidden_size": ("n_embd", "hidden_size"),
            "num_heads": ("n_head", "num_attention_heads"),
            "intermediate_size": ("n_inner",),
            "vocab_size": ("vocab_size",),
            "norm_eps": ("layer_norm_epsilon",),
        },
        frozenset(
            """n_positions n_ctx n_inner scale_attn_weights scale_attn_by_inverse_layer_idx
            reorder_and_upcast_attn summary_activation summary_first_dropout summary_proj_to_labels
            summary_type summary_use_proj""".split()
        ),
        "layer",
        accepted_values={"add_cross_attention": (False,)},
    ),
    "gpt_neox": _FamilyConfig(
        {
            "num_layers": ("num_hidden_layers",),
            "hidden_size": ("hidden_size",),
            "num_heads": ("num_attention_heads",),
            "intermediate_size": ("intermediate_size",),
            "vocab_size": ("vocab_size",),
            "norm_eps": ("layer_norm_eps",),
        },
        frozenset({"rotary_pct", "rotary_emb_base", "use_parallel_residual", "attention_bias", "partial_rotary_factor"}),
        "layer",
    ),
    "bloom": _FamilyConfig(
        {
            "num_layers": ("n_layer", "num_hidden_layers"),
            "hidden_size": ("hidden_size", "n_embed"),
            "num_heads": ("n_head", "num_attention_heads"),
            "vocab_size": ("vocab_size",),
            "norm_eps": ("layer_norm_epsilon",),
        },
        frozenset(
            """n_embed n_inner apply_residual_connection_post_layernorm pretraining_tp slow_but_exact
            masked_softmax_fusion offset_alibi skip_bias_add skip_bias_add_qkv seq_length
            attention_softmax_in_fp32 bias_dropout_fusion""".split()
        ),
        "layer",
    ),
    "opt": _FamilyConfig(
        {
            "num_layers": ("num_hidden_layers",),
            "hidden_size": ("hidden_size",),
            "num_heads": ("num_attention_heads",),
            "intermediate_size": ("ffn_dim",),
            "vocab_size": ("vocab_size",),
        },
        frozenset(
            """ffn_dim word_embed_proj_dim do_layer_norm_before _remove_final_layer_norm enable_bias
            layer_norm_elementwise_affine scale_embedding""".split()
        ),
        "layer",
    ),
    "bert": _FamilyConfig(
        {
            "num_layers": ("num_hidden_layers",),
            "hidden_size": ("hidden_size",),
            "num_heads": ("num_attention_heads",),
            "intermediate_size": ("intermediate_size",),
            "vocab_size": ("vocab_size",),
            "norm_eps": ("layer_norm_eps",),
        },
        frozenset({"type_vocab_size", "position_embedding_type"}),
        "layer",
        accepted_values={
            "position_embedding_type": ("absolute",),
            "is_decoder": (False,),
            "add_cross_attention": (False,),
        },
    ),
}

# Multimodal wrappers whose `text_config` holds the language tower.
_WRAPPERS: Mapping[str, tuple[str, frozenset[str]]] = {
    "gemma3": (
        "gemma3_text",
        frozenset(
            """text_config vision_config mm_tokens_per_image boi_token_index eoi_token_index
            image_token_index image_token_id boi_token_id eoi_token_id""".split()
        ),
    ),
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_FAMILIES))


def parse_config(config: Mapping[str, Any], *, source: str = "config.json", strict: bool = True) -> ModelSpec:
    """Read a `config.json` dict into a `ModelSpec`.

    Args:
      config: the parsed `config.json`.
      source: the file name to quote in errors.
      strict: refuse config keys this family does not know (default); with False they are
        ignored and listed in `ModelSpec.ignored_keys`.

    Raises:
      ConfigError naming `source` and the field when a field is missing or inconsistent, the
        model_type is unknown, or a key/value is not understood.
      UnsupportedCheckpointError for quantized checkpoints.
    """
    if "quantization_config" in config:
        method = (config.get("quantization_config") or {}).get("quant_method", "unknown")
        raise UnsupportedCheckpointError(
            f"{source}: quantized checkpoint (quantization_config, quant_method={method!r}); spectrax "
            "analyzes full-precision weights only. Use the unquantized release of this model."
        )
    model_type = config.get("model_type")
    wrapper = None
    if model_type in _WRAPPERS:
        text_type, wrapper_keys = _WRAPPERS[model_type]
        ignored = _check_keys(config, wrapper_keys | _COMMON_KEYS, source, model_type, strict)
        text = config.get("text_config")
        if not isinstance(text, Mapping):
            raise ConfigError(f"{source}: model_type {model_type!r} needs a 'text_config' object")
        tied = {"tie_word_embeddings": config["tie_word_embeddings"]} if "tie_word_embeddings" in config else {}
        wrapper, config = model_type, {"model_type": text_type, **tied, **text}
        source = f"{source} (text_config)"
        model_type = config["model_type"]
    else:
        ignored = ()
    if model_type not in _FAMILIES:
        raise ConfigError(
            f"{source}: model_type {model_type!r} is not supported; spectrax converts "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} and the multimodal wrappers {', '.join(_WRAPPERS)}"
        )
    family = _FAMILIES[model_type]
    read = frozenset(key for keys in family.fields.values() for key in keys)
    ignored += _check_keys(config, family.keys | read | _COMMON_KEYS, source, model_type, strict)
    _check_layout_options(config, family, source, model_type)

    def field(name: str, default: Any = None) -> Any:
        for key in family.fields.get(name, ()):
            if config.get(key) is not None:
                return config[key]
        if default is None:
            raise ConfigError(f"{source}: missing field {family.fields.get(name, (name,))[0]!r} for {model_type}")
        return default

    num_layers = _positive_int(field("num_layers"), "num_layers", source)
    hidden = _positive_int(field("hidden_size"), "hidden_size", source)
    heads = _positive_int(field("num_heads"), "num_heads", source)
    kv_heads = _positive_int(field("num_kv_heads", heads), "num_key_value_heads", source)
    if heads % kv_heads:
        raise ConfigError(f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    if "head_dim" not in family.fields and hidden % heads:
        raise ConfigError(f"{source}: hidden_size={hidden} is not divisible by num_attention_heads={heads}")
    head_dim = _positive_int(field("head_dim", hidden // heads), "head_dim", source)
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
        intermediate_size=_positive_int(field("intermediate_size", 4 * hidden), "intermediate_size", source),
        vocab_size=_positive_int(field("vocab_size"), "vocab_size", source),
        norm=family.norm,
        norm_eps=float(field("norm_eps", 1e-5)),
        norm_offset=family.norm_offset,
        qk_norm=family.qk_norm,
        layer_types=tuple(layer_types),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
        wrapper=wrapper,
        config=dict(config),
        ignored_keys=tuple(ignored),
    )


def _check_keys(config: Mapping[str, Any], known: frozenset[str], source: str, model_type: str, strict: bool) -> tuple[str, ...]:
    unknown = tuple(sorted(set(config) - known))
    if unknown and strict:
        raise ConfigError(
            f"{source}: option(s) {', '.join(repr(k) for k in unknown)} not understood for model_type "
            f"{model_type!r}; spectrax refuses rather than guess how they change the weights. If you know "
            "they do not, load with strict=False (command line: --allow-unknown-config)."
        )
    return unknown


def _check_layout_options(config: Mapping[str, Any], family: _FamilyConfig, source: str, model_type: str) -> None:
    if config.get("pruned_heads"):
        raise ConfigError(f"{source}: pruned_heads={config['pruned_heads']!r}: pruned attention heads are not supported")
    for key, accepted in family.accepted_values.items():
        value = config.get(key, accepted[0])
        if value not in accepted:
            raise ConfigError(f"{source}: {key}={value!r} is not supported for {model_type} (supported: {accepted})")


def _positive_int(value: Any, name: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{source}: field {name!r} must be a positive integer, got {value!r}")
    return value
