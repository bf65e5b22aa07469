"""Which stored tensor is which: find the language tower, and group tensor names by layer.

Prefixes differ between base and head models (`model.`, `transformer.`, `gpt_neox.`, `bert.`,
none) and multimodal checkpoints hold several towers with the same `layers.{i}.` names, so the
root is found by rule: every name is matched against `<root><pattern>.<i>.<rest>`; the distinct
roots are the towers; the language tower is chosen unless the caller names one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from spectrax.io.errors import CheckpointError, UnsupportedCheckpointError
from spectrax.io.safetensors import TensorInfo

__all__ = ["Layout", "find_layout"]

_NON_LANGUAGE = ("vision", "visual", "audio", "image", "speech", "multi_modal", "mm_projector")
# Names that betray a quantized checkpoint even when the dtype looks innocent (GPTQ, AWQ,
# bitsandbytes, compressed-tensors, FP8 scales).
_QUANTIZED_SUFFIXES = (
    ".qweight", ".qzeros", ".scales", ".g_idx", ".weight_scale", ".weight_scale_inv", ".input_scale",
    ".weight_packed", ".weight_zero_point", ".absmax", ".quant_map", ".quant_state.bitsandbytes__nf4",
    ".quant_state.bitsandbytes__fp4", ".SCB",
)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The tensors of one tower.

    Attributes:
      root: the prefix before the layer pattern, e.g. `"model."` or `"model.language_model."`.
      layers: per layer index, relative name (`"self_attn.q_proj.weight"`) -> tensor.
      globals: relative name -> tensor for names under the root and, closest first, its
        ancestors (so `lm_head.weight` beside `model.` is found), excluding layer tensors.
      other_towers: roots of towers not selected.
    """

    root: str
    layers: tuple[Mapping[str, TensorInfo], ...]
    globals: Mapping[str, TensorInfo]
    other_towers: tuple[str, ...]

    def layer_signature(self, layer: int) -> tuple:
        """Stored names, shapes and read dtypes of a layer: equal signatures convert to equal shapes
        (GGUF layers mixing Q4_K and Q6_K storage both read as float32)."""
        return tuple(sorted((n, i.shape, str(i.numpy_dtype())) for n, i in self.layers[layer].items()))


def find_layout(tensors: Mapping[str, TensorInfo], pattern: str, num_layers: int, *, tower: str | None = None) -> Layout:
    """Split `tensors` into layers and globals of the language tower.

    Args:
      tensors: every stored tensor by full name.
      pattern: the family's layer container, e.g. `"layers"`, `"h"`, `"encoder.layer"`.
      num_layers: L from the config; the tower must have layers 0..L-1 exactly.
      tower: a root to select explicitly (e.g. `"model.language_model."`).
    """
    regex = re.compile(r"^((?:[^.]+\.)*?)" + re.escape(pattern) + r"\.(\d+)\.(.+)$")
    towers: dict[str, dict[int, dict[str, TensorInfo]]] = {}
    for name, info in tensors.items():
        m = regex.match(name)
        if m:
            if m.group(2) != str(int(m.group(2))):  # "layers.00." would silently stand in for "layers.0."
                raise CheckpointError(f"{info.file}: tensor {name!r} writes its layer number {m.group(2)!r} "
                                      "non-canonically; no checkpoint writer does that")
            towers.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = info
    if not towers:
        raise CheckpointError(f"no tensor is named like '<prefix>{pattern}.<i>.<...>'; is model_type right?")
    root = _choose_tower(sorted(towers), tower)
    by_layer = towers[root]
    found = sorted(by_layer)
    if len(found) != num_layers or found[-1] != num_layers - 1:
        # Cost follows the tensors found, not the layer count claimed: a config may say 10^8.
        extra = [i for i in found if i >= num_layers]
        missing_count = num_layers - (len(found) - len(extra))
        missing = [i for i in range(min(num_layers, len(found) + 6)) if i not in by_layer][:5]
        raise CheckpointError(
            f"config says {num_layers} layers but tensors under '{root}{pattern}.' cover layers {found[0]}..{found[-1]}"
            + (f"; missing {_first(missing, missing_count)}" if missing_count else "")
            + (f"; unexpected {_first(extra, len(extra))}" if extra else "")
        )
    layer_names = {f"{root}{pattern}.{i}.{rel}" for i, rels in by_layer.items() for rel in rels}
    others = tuple(t for t in towers if t != root)
    ancestors = _ancestors(root)
    globals_: dict[str, TensorInfo] = {}
    for name, info in tensors.items():
        if name in layer_names or name.startswith(others):
            continue
        nearest = next(a for a in ancestors if name.startswith(a))  # "" always matches
        globals_.setdefault(name[len(nearest):], info)
    layout = Layout(root, tuple(by_layer[i] for i in range(num_layers)), globals_, others)
    _refuse_quantized(layout)
    return layout


def _first(items: list[int], count: int, limit: int = 5) -> str:
    """`[3, 4]`, or `[3, 4, 5, 6, 7, ...] (99997 in all)` when there are more than `limit`."""
    return f"{items[:limit]}" if count <= limit else f"[{', '.join(map(str, items[:limit]))}, ...] ({count} in all)"


def _choose_tower(roots: list[str], tower: str | None) -> str:
    if tower is not None:
        if tower not in roots:
            raise CheckpointError(f"tower {tower!r} not found; this checkpoint has towers {roots}")
        return tower
    if len(roots) == 1:
        return roots[0]
    language = [r for r in roots if "language_model" in r or "text_model" in r]
    if len(language) == 1:
        return language[0]
    plain = [r for r in roots if not any(marker in r for marker in _NON_LANGUAGE)]
    if len(plain) == 1:
        return plain[0]
    raise CheckpointError(f"several towers hold layers ({roots}); choose one with tower=...")


def _ancestors(root: str) -> list[str]:
    """`"a.b."` -> `["a.b.", "a.", ""]`: the root first, then each enclosing prefix."""
    parts = root.split(".")[:-1]
    return [".".join(parts[:k]) + ("." if k else "") for k in range(len(parts), -1, -1)]


def _refuse_quantized(layout: Layout) -> None:
    for where, named in [("", layout.globals)] + [(f"layer {i}: ", t) for i, t in enumerate(layout.layers)]:
        for rel, info in named.items():
            if info.is_quantized or rel.endswith(_QUANTIZED_SUFFIXES):
                raise UnsupportedCheckpointError(
                    f"{info.file}: {where}tensor {info.name!r} ({info.dtype}) belongs to a quantized checkpoint "
                    "(GPTQ/AWQ/bitsandbytes/FP8 packs are codes, not weights); spectrax analyzes full-precision "
                    "weights only. Use the unquantized release of this model."
                )
