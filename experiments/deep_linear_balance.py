"""Deep linear nets under SGD: layers balance and align, with isotropic and anisotropic input noise.

Setting (docs/dynamics.md, Setups, "Symmetry and noise", the Ziyin talk): f(x) = W_4 W_3 W_2 W_1 x, widths 4, teacher
V = O_1 diag(2, 1.67, 1.33, 1) O_2^T, label noise N(0, 2^2 I), online SGD with batch 1, lr 0.003,
40000 steps, no weight decay, float64; three unbalanced initializations (layer scales 0.6..1.8 in
different orders). Two input distributions: isotropic x ~ N(0, I) and anisotropic
x ~ N(0, diag(1.6, 1.23, 0.87, 0.5)^2). GD (full batch of 2048 samples) from the same starts for
comparison.

Theory (`spectrax.dynamics.deep_linear`): SGD's equilibrium has ||W_k||_F^2 = c for k = 2..L and
||W_1 Sigma_hat^1/2||_F^2 = c, c = d (||V Sigma_hat^1/2||_* / d)^(2/L) with Sigma_hat = Sigma_x at mean
eigenvalue 1; intermediate layers orthogonal (times a scalar); adjacent layers aligned. With
isotropic inputs all four layer norms equal c; with anisotropic inputs ||W_1||_F^2 moves to its own
predicted value while the other layers stay balanced. GD keeps each start's imbalance.

    python experiments/deep_linear_balance.py --out DIR [--steps 40000] [--lr 0.003]
                                              [--checkpoint CKPT] [--quiet]

Writes `metrics.json` (per setting and run: late-mean layer norms against the prediction,
whitened input norm, misalignment, orthogonality, noise-balance residual; GD's final values),
`layer_norms.csv`, `layer_norms.png` (per-layer ||W_k||_F^2 vs step, both settings, theory lines)
and `alignment.png`.
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
import numpy as np  # noqa: E402

from spectrax.dynamics import deep_linear as dl  # noqa: E402
from spectrax.dynamics import symmetry as sy  # noqa: E402

__all__ = ["main", "run"]


def _teacher(d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    o1, _ = np.linalg.qr(rng.normal(size=(d, d)))
    o2, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return o1 @ np.diag(np.linspace(2.0, 1.0, d)) @ o2.T


def _init_scales(layers: int) -> np.ndarray:
    up = np.linspace(0.6, 1.8, layers)
    return np.stack([up, up[::-1], np.roll(up, layers // 2)])


def run(out: str, *, steps: int = 40000, lr: float = 0.003, dim: int = 4, layers: int = 4,
        noise_std: float = 2.0, seed: int = 0, checkpoint: str | None = None, quiet: bool = False) -> dict:
    """Train both settings with SGD and GD and write metrics, table and figures into the new `out`."""
    if steps < 200 or steps % 100:
        raise ValueError("--steps must be a multiple of 100 (>= 200)")
    if dim < 2 or layers < 3:
        raise ValueError("need --dim >= 2 and --layers >= 3 (intermediate layers)")
    with output_folder(out, []) as folder:
        metrics, series = _run(steps, lr, dim, layers, noise_std, seed, checkpoint, None if quiet else "train")
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        table = {"step": series["step"]}
        for name, s in series["settings"].items():
            for r in range(s["sgd"].shape[1]):
                for k in range(s["sgd"].shape[2]):
                    table[f"{name}_sgd_run{r}_layer{k + 1}"] = s["sgd"][:, r, k]
                table[f"{name}_sgd_run{r}_whitened_input"] = s["whitened"][:, r]
        write_table(table, folder, "layer_norms")
        _plots(folder, series, metrics)
    if not quiet:
        print(f"Deep linear net, L = {layers}, d = {dim}, SGD lr {lr}, batch 1, {steps} steps, label noise {noise_std}")
        for name, m in metrics["settings"].items():
            late = np.asarray(m["sgd_late_layer_norms"])
            print(f"  {name}: predicted ||W_k||^2 = {np.round(m['predicted_layer_norms'], 3).tolist()} "
                  f"(c = {m['predicted_c']:.3f})")
            for r in range(late.shape[0]):
                print(f"    SGD run {r}: {np.round(late[r], 3).tolist()}  ||W_1 Sigma^1/2||^2 = "
                      f"{m['sgd_late_whitened_input_norm'][r]:.3f}")
            print(f"    GD final: {np.round(m['gd_final_layer_norms'], 2).tolist()}")
            print(f"    misalignment SGD {m['sgd_late_misalignment_mean']:.3f} vs GD {m['gd_final_misalignment_mean']:.3f}; "
                  f"orthogonality defect SGD {m['sgd_late_orthogonality_mean']:.3f} vs GD "
                  f"{m['gd_final_orthogonality_mean']:.3f}")
        print(f"results in {os.path.abspath(out)}")
    return metrics


def _run(steps, lr, dim, layers, noise_std, seed, checkpoint, progress):
    every = 100
    with jax.enable_x64(True):
        v = jnp.asarray(_teacher(dim, seed))
        key = jax.random.key(seed)
        inits = jax.vmap(lambda k, s: dl.init_layers(k, dim, s))(
            jax.random.split(jax.random.fold_in(key, 0), 3), jnp.asarray(_init_scales(layers)))
        metrics = {"setting": {"steps": steps, "lr": lr, "dim": dim, "layers": layers, "noise_std": noise_std,
                               "seed": seed, "batch": 1, "init_scales": _init_scales(layers).tolist(),
                               "teacher_singular_values": np.linspace(2.0, 1.0, dim).tolist(), "dtype": "float64"},
                   "settings": {}}
        series = {"step": np.arange(steps // every) * every, "settings": {}}
        for name, scales in (("isotropic", np.ones(dim)), ("anisotropic", np.linspace(1.6, 0.5, dim))):
            cov = jnp.asarray(np.diag(scales**2))
            gen = lambda k, b, s=jnp.asarray(scales): sy.teacher_data(k, b, v, input_scales=s, noise_std=noise_std)  # noqa: E731
            observe = dl.observe(cov, jnp.eye(dim, dtype=jnp.float64))
            common = dict(lr=lr, steps=steps, every=every, key=jax.random.fold_in(key, 1), observe=observe,
                          progress=progress)
            settings = {"seed": seed, "lr": lr, "dim": dim, "layers": layers, "noise_std": noise_std, "input": name,
                        "model": "deep_linear_balance_v1"}
            _, sgd = sy.train(sy.DEEP_LINEAR, inits, sy.online_batches(gen, 1),
                              directory=None if checkpoint is None else os.path.join(checkpoint, f"{name}_sgd"),
                              settings={**settings, "optimizer": "sgd"}, **common)
            x, y = gen(jax.random.fold_in(key, 2), 2048)
            _, gd = sy.train(sy.DEEP_LINEAR, inits, sy.full_batch(x, y),
                             directory=None if checkpoint is None else os.path.join(checkpoint, f"{name}_gd"),
                             settings={**settings, "optimizer": "gd"}, **common)
            predicted = np.asarray(dl.layer_norms(dl.balanced_solution(v, cov, layers)))
            c = float(dl.balanced_norm(v, cov, layers))
            half = slice(len(series["step"]) // 2, None)
            o, g = sgd.observed, gd.observed
            late = o["layer_norms"][half].mean(axis=0)
            metrics["settings"][name] = {
                "input_scales": scales.tolist(), "predicted_c": c, "predicted_layer_norms": predicted.tolist(),
                "sgd_initial_layer_norms": o["layer_norms"][0].tolist(),
                "sgd_late_layer_norms": late.tolist(),
                "sgd_late_relative_error": ((late - predicted) / predicted).tolist(),
                "sgd_late_spread_across_runs": np.ptp(late, axis=0).tolist(),
                "sgd_late_whitened_input_norm": o["whitened_input_norm"][half].mean(axis=0).tolist(),
                "sgd_late_misalignment_mean": float(o["misalignment"][half].mean()),
                "sgd_late_orthogonality_mean": float(o["orthogonality"][half].mean()),
                "sgd_late_noise_balance_mean": float(o["noise_balance"][half].mean()),
                "sgd_initial_misalignment_mean": float(o["misalignment"][0].mean()),
                "gd_final_layer_norms": g["layer_norms"][-1].tolist(),
                "gd_final_misalignment_mean": float(g["misalignment"][-1].mean()),
                "gd_final_orthogonality_mean": float(g["orthogonality"][-1].mean()),
                "gd_final_noise_balance_mean": float(g["noise_balance"][-1].mean()),
                "recursion_error_max": float(max(np.max(sgd.recursion_error), np.max(gd.recursion_error))),
            }
            series["settings"][name] = {"sgd": o["layer_norms"], "gd": g["layer_norms"],
                                        "whitened": o["whitened_input_norm"], "mis_sgd": o["misalignment"],
                                        "mis_gd": g["misalignment"], "orth_sgd": o["orthogonality"],
                                        "orth_gd": g["orthogonality"], "predicted": predicted, "c": c}
    return metrics, series


def _plots(folder, series, metrics) -> None:
    t = series["step"]
    colors = matplotlib.colormaps["tab10"](np.arange(10))
    styles = ["-", "--", ":"]
    fig, axes = subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, (name, s) in zip(axes, series["settings"].items()):
        num_layers = s["sgd"].shape[2]
        for r in range(s["sgd"].shape[1]):
            for k in range(num_layers):
                ax.plot(t, s["sgd"][:, r, k], color=colors[k], linestyle=styles[r % 3], linewidth=1.1, alpha=0.85)
        for k in range(num_layers):
            ax.plot([], [], color=colors[k], label=f"layer {k + 1}" + (" (input)" if k == 0 else ""))
        if name == "anisotropic":
            for r in range(s["whitened"].shape[1]):
                ax.plot(t, s["whitened"][:, r], color="k", linestyle=styles[r % 3], linewidth=0.9, alpha=0.6)
            ax.plot([], [], color="k", alpha=0.6, label=r"$\|W_1\hat\Sigma_x^{1/2}\|_F^2$")
            ax.axhline(s["predicted"][0], color=colors[0], linestyle="-.", linewidth=1.6,
                       label=rf"theory $\|W_1\|_F^2$ = {s['predicted'][0]:.2f}")
        ax.axhline(s["c"], color="k", linestyle="-.", linewidth=1.6, label=f"theory c = {s['c']:.2f}")
        ax.set_yscale("log")
        ax.set(xlabel="SGD step", title=f"{name} input noise" + (r" ($\Sigma_x = I$)" if name == "isotropic" else
                                                                   r" ($\Sigma_x$ = diag(1.6..0.5)$^2$)"))
        ax.legend(fontsize=7, ncol=2, loc="upper right")
    axes[0].set_ylabel(r"$\|W_k\|_F^2$ (line style = initialization)")
    fig.suptitle("Deep linear net under SGD: layer norms balance from unbalanced starts")
    save_figure(fig, os.path.join(folder, "layer_norms.png"))

    fig, axes = subplots(1, 2, figsize=(12, 4.2))
    for name, s in series["settings"].items():
        color = colors[0] if name == "isotropic" else colors[3]
        axes[0].plot(t, s["mis_sgd"].mean(axis=(1, 2)), color=color, label=f"SGD, {name}")
        axes[0].plot(t, s["mis_gd"].mean(axis=(1, 2)), color=color, linestyle="--", label=f"GD, {name}")
        axes[1].plot(t, s["orth_sgd"].mean(axis=(1, 2)), color=color, label=f"SGD, {name}")
        axes[1].plot(t, s["orth_gd"].mean(axis=(1, 2)), color=color, linestyle="--", label=f"GD, {name}")
    axes[0].set(xlabel="step", ylabel="misalignment (normalized commutator)",
                title=r"adjacent layers ($W_1\hat\Sigma_x^{1/2}$ as input layer): $\|[W_{k+1}^\top W_{k+1}, W_k W_k^\top]\|$")
    axes[1].set(xlabel="step", ylabel="orthogonality defect",
                title=r"intermediate layers: $\|W^\top W/(\|W\|^2/d) - I\|/\sqrt{d}$ (theory: 0)")
    for ax in axes:
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle("Alignment and orthogonality (mean over runs and layers)")
    save_figure(fig, os.path.join(folder, "alignment.png"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--steps", type=int, default=40000, help="steps, multiple of 100 (default 40000)")
    parser.add_argument("--lr", type=float, default=0.003, help="learning rate (default 0.003)")
    parser.add_argument("--dim", type=int, default=4, help="width of every layer (default 4)")
    parser.add_argument("--layers", type=int, default=4, help="number of layers L >= 3 (default 4)")
    parser.add_argument("--noise-std", type=float, default=2.0, help="label noise std (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    parser.add_argument("--checkpoint", default=None, help="folder for orbax checkpoints of the runs (resumable)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.lr <= 0 or args.noise_std <= 0:
            raise ValueError("--lr and --noise-std must be > 0")
        run(args.out, steps=args.steps, lr=args.lr, dim=args.dim, layers=args.layers, noise_std=args.noise_std,
            seed=args.seed, checkpoint=args.checkpoint, quiet=args.quiet)
        return 0

    return run_main("deep_linear_balance", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
