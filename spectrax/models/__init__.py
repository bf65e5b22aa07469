"""Forward passes from converted pytrees (logits, captured activations and their gradients), random
init, and export back to Hugging Face checkpoints.

`spectrax.models.nnx.Decoder` is the same forward pass as a Flax NNX module over the loaded arrays
(for training with `nnx.Optimizer`); that submodule imports flax, this package does not."""

from spectrax.models.decoder import (
    SUPPORTED_FAMILIES,
    Activations,
    DecoderOptions,
    Taps,
    activation_grads,
    apply_norm,
    capture,
    decoder_options,
    forward,
    merge_layer_ids,
    split_layer_ids,
    zero_taps,
)
from spectrax.models.export import LLAMA_LIKE, save_hf_checkpoint, to_hf_llama
from spectrax.models.init import init_llama
from spectrax.models.layers import (
    apply_rope,
    attention,
    causal_mask,
    dense_mlp,
    gated_mlp,
    layer_norm,
    rms_norm,
    rope_tables,
)

__all__ = [
    "Activations",
    "DecoderOptions",
    "Taps",
    "activation_grads",
    "apply_norm",
    "capture",
    "dense_mlp",
    "layer_norm",
    "zero_taps",
    "LLAMA_LIKE",
    "SUPPORTED_FAMILIES",
    "apply_rope",
    "attention",
    "causal_mask",
    "decoder_options",
    "forward",
    "gated_mlp",
    "init_llama",
    "merge_layer_ids",
    "rms_norm",
    "rope_tables",
    "save_hf_checkpoint",
    "split_layer_ids",
    "to_hf_llama",
]
