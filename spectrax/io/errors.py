"""Errors raised while reading checkpoints: each names the file, tensor or field at fault."""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "UnsupportedCheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, malformed or inconsistent."""


class ConfigError(CheckpointError):
    """`config.json` is missing a field, holds an option spectrax does not understand,
    or disagrees with the tensors on disk."""


class UnsupportedCheckpointError(CheckpointError):
    """The checkpoint is well formed but not something spectrax will read
    (quantized weights, pickle-only files, unknown architectures)."""
