"""Checkpoints in: safetensors reading, config parsing, architecture adapters, streaming, orbax."""

from spectrax.io.checkpoint import CheckpointFiles, open_checkpoint
from spectrax.io.config import SUPPORTED_MODEL_TYPES, ModelSpec, parse_config
from spectrax.io.errors import CheckpointError, ConfigError, UnsupportedCheckpointError
from spectrax.io.inspect import inspect
from spectrax.io.load import (
    LAYER_PARTS, LayerBlock, Model, Source, convert_globals, convert_layer, layer, load, open_source, stream_layers,
)
from spectrax.io.orbax import abstract_like, restore_params, save_params
from spectrax.io.safetensors import SafetensorsFile, TensorInfo, read_header, read_rows, read_tensor

__all__ = [
    "CheckpointError",
    "CheckpointFiles",
    "ConfigError",
    "LAYER_PARTS",
    "LayerBlock",
    "Model",
    "ModelSpec",
    "SUPPORTED_MODEL_TYPES",
    "SafetensorsFile",
    "Source",
    "TensorInfo",
    "UnsupportedCheckpointError",
    "abstract_like",
    "convert_globals",
    "convert_layer",
    "inspect",
    "layer",
    "load",
    "open_checkpoint",
    "open_source",
    "parse_config",
    "read_header",
    "read_rows",
    "read_tensor",
    "restore_params",
    "save_params",
    "stream_layers",
]
