"""Optax transformations that spectrax adds: GaLore (gradient low-rank projection)."""

from spectrax.optim.galore import (
    GaLoreState,
    adam_state_bytes,
    galore,
    galore_adam,
    project,
    project_back,
    projection_side,
    projector_shape,
    state_bytes,
    top_projector,
    vmap_axes,
)

__all__ = [
    "GaLoreState",
    "adam_state_bytes",
    "galore",
    "galore_adam",
    "project",
    "project_back",
    "projection_side",
    "projector_shape",
    "state_bytes",
    "top_projector",
    "vmap_axes",
]
