"""The decoders of `spectrax.models` as Flax NNX modules whose state is the converted pytree.

    model = sx.load("path/to/checkpoint", device=True)
    decoder = Decoder(model)                       # no copy: each nnx.Param holds the model's array
    logits = decoder(input_ids)                    # (B, T) int -> (B, T, V), `forward` itself
    optimizer = nnx.Optimizer(decoder, optax.adam(1e-3), wrt=nnx.Param)

`Decoder` adds no computation of its own: calling it runs `spectrax.models.forward` (and
`capture`) on the arrays its `nnx.Param`s hold, so its logits are those of the pure forward pass.
What NNX adds is the training side: `nnx.Optimizer`, `nnx.value_and_grad` and `nnx.jit` over a
mutable module, and shared parameters: a tied head (`lm_head.weight` the very array of
`embed.tokens`) is one `nnx.Param`, so a training step updates both uses together.

Every family `forward` runs is supported (`SUPPORTED_FAMILIES`). `decoder.model` is the `Model`
pytree with an `nnx.Param` at each leaf, in the tree's own nesting
(`decoder.model.params["layers"][0]["attn"]["q"]`, `(n, H, D, E)`); its spec, metadata and integer
`layer_ids` are static, as in the `Model` pytree, so `nnx.jit` compiles once per checkpoint config.
`decoder.arrays()` gives back a `spectrax.Model` over the current arrays, e.g. to save with
`spectrax.save_params`, export with `to_hf_llama` or analyze.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spectrax.io.load import Model
from spectrax.models.decoder import Activations, capture, decoder_options, forward

__all__ = ["Decoder"]


class Decoder(nnx.Module):
    """A decoder-only language model as an NNX module over a converted checkpoint, without a copy.

    Args:
      model: a `spectrax.Model` of one of `SUPPORTED_FAMILIES` (from `spectrax.load`, or a
        `jax.tree.map` of one, e.g. cast to float32 for training). Each of its leaves becomes the
        value of an `nnx.Param` as it is (numpy arrays stay numpy until a call moves them; load with
        `device=True` to keep one device copy); a tied head is one leaf of the `Model` pytree, so
        one `nnx.Param`.

    Attributes:
      model: the `Model` with an `nnx.Param` at each weight (`model.params["layers"][0]["attn"]["q"]`);
        its spec, metadata and `layer_ids` are static, as in the `Model` pytree.

    Raises:
      UnsupportedCheckpointError: a family or option the forward pass does not implement.

    Examples:
        >>> import numpy as np
        >>> import spectrax as sx
        >>> from spectrax.models.nnx import Decoder
        >>> model = sx.load(sx.data.TINY_LLAMA)
        >>> decoder = Decoder(model)
        >>> decoder.model.params["embed"]["tokens"].get_value() is model.params["embed"]["tokens"]
        True
        >>> decoder(np.array([[0, 5, 9, 1, 5]])).shape
        (1, 5, 64)
    """

    def __init__(self, model: Model):
        decoder_options(model.spec)  # refuse an unsupported family or option now, in one line
        self.model = nnx.data(jax.tree.map(nnx.Param, model))

    def arrays(self) -> Model:
        """The `Model` whose leaves are the arrays the parameters hold now (no copy)."""
        return jax.tree.map(lambda p: p.get_value(), self.model, is_leaf=lambda x: isinstance(x, nnx.Variable))

    def __call__(self, input_ids: jax.Array | np.ndarray, *, dtype: Any = jnp.float32) -> jax.Array:
        """`(B, T)` int token ids -> `(B, T, V)` next-token logits in `dtype`: `spectrax.models.forward`."""
        model = self.arrays()
        return forward(model.params, model.spec, input_ids, dtype=dtype)

    def capture(self, input_ids: jax.Array | np.ndarray, **options: Any) -> Activations:
        """Logits, hidden states and (optionally) attention maps and projections: `spectrax.models.capture`,
        whose keyword options (`attention`, `projections`, `taps`, `dtype`) it takes."""
        model = self.arrays()
        return capture(model.params, model.spec, input_ids, **options)
