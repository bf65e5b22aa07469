"""Training-dynamics simulations: data generators, toy models and explicit `jax.grad` loops.

Each module is one paper's toy (SPEC.md §5) and exposes the quantities its theory predicts as
per-step trajectories, so a test can hold the theory against the run:

- `scan_snap`: Scan and Snap's 1-layer (Y, Z) transformer on facts with common/distinct tokens;
- `joma`: JoMA's attention + linear layer toy with its invariants, and the entropy toy.
"""

from spectrax.dynamics import joma, scan_snap

__all__ = ["joma", "scan_snap"]
