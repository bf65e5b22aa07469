"""JoMA's nonlinear picture: attention first gets sparser, then denser again.

The talk's toy (reference `joma/draw_figure_4.py`): v <- v + lr (mu - v) ∘ softmax(v^2 / T) with
lr = 0.02, T = 3, targets mu = sorted U(1, 4) (10 components), from v = 0.05 everywhere, 5000
steps. The most salient component (largest mu) grows first, so the entropy of softmax(v^2 / T)
falls; the others then catch up and it rises again towards the entropy of softmax(mu^2 / T).

    python experiments/joma_entropy.py --out DIR [--steps 5000] [--seed 0]

Writes `metrics.json` (initial, minimum, step of the minimum, final and limiting entropy),
`trajectory.csv` (entropy and v per step, every 10th step) and `entropy.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from spectrax.report.plots import save_figure, subplots  # noqa: E402
from experiments._common import output_folder, run_main, write_table  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import matplotlib.colors  # noqa: E402
import matplotlib.cm  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.dynamics import joma  # noqa: E402

__all__ = ["main", "run"]


def run(out: str, *, steps: int = 5000, seed: int = 0, lr: float = 0.02, temperature: float = 3.0,
        v0: float = 0.05, quiet: bool = False) -> dict:
    if steps < 10:
        raise ValueError("--steps must be >= 10")
    with output_folder(out, []) as folder:
        mu = joma.entropy_toy_target(jax.random.key(seed))
        vs, hs = joma.entropy_toy(mu, jnp.full(mu.shape, v0, jnp.float32), lr=lr, temperature=temperature,
                                  steps=steps)
        vs, hs, mu = np.asarray(vs), np.asarray(hs), np.asarray(mu)
        a = np.exp(mu**2 / temperature - np.max(mu**2 / temperature))
        a /= a.sum()
        i = int(np.argmin(hs))
        metrics = {"setting": {"lr": lr, "temperature": temperature, "v0": v0, "steps": steps, "seed": seed,
                               "mu": mu.tolist()},
                   "entropy_initial": float(hs[0]), "entropy_min": float(hs[i]), "argmin": i,
                   "entropy_final": float(hs[-1]), "entropy_limit_softmax_mu2": float(-(a * np.log(a)).sum()),
                   "interior_minimum": bool(0 < i < steps - 1 and hs[-1] > hs[i])}
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        idx = np.arange(0, steps, 10)
        write_table({"step": idx, "entropy": hs[idx], **{f"v{j}": vs[idx, j] for j in range(vs.shape[1])}},
                    folder, "trajectory")
        _plot(os.path.join(folder, "entropy.png"), vs, hs, mu, i)
    if not quiet:
        print(f"entropy of softmax(v^2/{temperature:g}): {hs[0]:.4f} at t=0 -> minimum {hs[i]:.4f} at t={i} -> "
              f"{hs[-1]:.4f} at t={steps - 1} (limit {metrics['entropy_limit_softmax_mu2']:.4f})")
        print(f"results in {os.path.abspath(out)}")
    return metrics


def _plot(path, vs, hs, mu, i) -> None:
    fig, (a, b) = subplots(1, 2, figsize=(11, 3.8))
    steps = len(hs)
    cmap = matplotlib.colormaps["rainbow"]
    every = max(1, steps // 50)
    for t in range(0, steps, every):
        a.plot(vs[t], color=cmap(t / steps), linewidth=0.8)
    a.plot(mu, "k--", linewidth=1.5, label="target μ")
    sm = matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0, steps))
    fig.colorbar(sm, ax=a, label="step")
    a.set(xlabel="sorted index of v components", ylabel="v", title="v(t) (colour = step) and target μ")
    a.legend(fontsize=7)
    b.plot(hs, label="entropy")
    b.axvline(i, color="0.5", linestyle=":", label=f"minimum at t = {i}")
    b.set(xlabel="step", ylabel="entropy of softmax(v²/T) (nats)",
          title="Attention gets sparser, then denser")
    b.legend(fontsize=7)
    save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--steps", type=int, default=5000, help="iterations (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of the targets mu (default 0)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        run(args.out, steps=args.steps, seed=args.seed, quiet=args.quiet)
        return 0

    return run_main("joma_entropy", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
