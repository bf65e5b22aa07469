"""Training-dynamics simulations: data generators, toy models and explicit `jax.grad` loops.

Each module is one paper's toy (docs/dynamics.md, Setups) and exposes the quantities its theory predicts as
per-step trajectories, so a test can hold the theory against the run:

- `scan_snap`: Scan and Snap's 1-layer (Y, Z) transformer on facts with common/distinct tokens;
- `joma`: JoMA's attention + linear layer toy with its invariants, and the entropy toy;
- `symmetry`: Noether charges of rescaling/rotation symmetries, their exact (S)GD recursion,
  GD conservation and the SGD noise equilibrium;
- `deep_linear`: balance and alignment of deep linear networks under SGD noise;
- `stability`: sharpness of a rank-1 factorization during GD, and learning-rate warm-up;
- `collapse`: weight-decay collapse of symmetric toy losses, thresholds and closed forms;
- `representation`: H/G/Z alignment of a trained MLP's layers (canonical representations);
- `galore_lm`: GaLore against full Adam on an MLP language model of an order-2 Markov chain;
- `modular`: CoGO modular addition and the Fourier analysis of its solutions;
- `prime_gaps`: the prime-gap regression transformer and its attention's zero gradients;
- `navigator`: the spectral line navigator on random graphs;
- `loop`: the chunked `lax.scan` training loop with orbax checkpoints that the others run on.
"""

from spectrax.dynamics import (
    collapse,
    deep_linear,
    galore_lm,
    joma,
    loop,
    modular,
    navigator,
    prime_gaps,
    representation,
    scan_snap,
    stability,
    symmetry,
)

__all__ = [
    "collapse",
    "deep_linear",
    "galore_lm",
    "joma",
    "loop",
    "modular",
    "navigator",
    "prime_gaps",
    "representation",
    "scan_snap",
    "stability",
    "symmetry",
]
