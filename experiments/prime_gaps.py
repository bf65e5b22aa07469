"""Prime gaps (the prime-gap project): with one token per sequence, W_Q and W_K never learn.

Setting (docs/dynamics.md, Setups): the first N primes, gaps g_n = p_{n+1} - p_n z-scored, a pre-LN transformer
encoder (PyTorch defaults of the source's modules, no dropout), MSE, AdamW with global-norm
clipping and a cosine learning-rate decay. Two variants are trained on the same train/test split:

- single: the index n as ONE token (learned table row or fixed sinusoidal encoding), the source's
  model. The softmax over one key is 1, so dL/dW_Q = dL/dW_K = 0 exactly (biases too) and under
  AdamW W_Q(t) = W_Q(0) prod_s (1 - lr_s wd): its spectrum is the initialization's, shrunk.
- window: the previous w gaps as w tokens (learned projection + position encoding), predicting the
  next gap. Attention has w keys; W_Q and W_K get gradients and move beyond the decay.

The source read its low-rank "structure" off layer 0's W_Q (the top-left 256 x 256 block of the
fused in_proj_weight) of the single-token model.

    python experiments/prime_gaps.py --out DIR [--primes 100000] [--layers 2] [--encoding learned]
        [--window 16] [--steps 3000] [--checkpoint DIR]

Writes `metrics.json` (settings, losses and R^2 against the predict-the-mean and log-trend
baselines, the zero-gradient check at init and after training, the weight-decay identity, the
attention entropies, the QK-kernel effective ranks), `trajectory.csv` (per step and variant),
`gradients.csv`, `rank_statistics.csv` (every weight matrix trained vs init vs a shape- and
scale-matched Gaussian null), `qk_kernel.csv`, and `loss.png`, `excess.png`, `rank.png`.
With `--checkpoint DIR` training is saved every `--chunk` steps into DIR/single and DIR/window
and a rerun with the same settings resumes there.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from spectrax.report.plots import save_figure, subplots  # noqa: E402
from experiments._common import output_folder, run_main, write_table  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.analyses.rank import matrix_rank_rows  # noqa: E402
from spectrax.dynamics import prime_gaps as pg  # noqa: E402
from spectrax.dynamics.loop import run_steps  # noqa: E402

__all__ = ["main", "run", "train_variant"]

VARIANTS = ("single", "window")
RANK_STATS = ("erank", "stable_rank", "max_mean", "ks_mp")
PROBE = 2048  # held-out gaps evaluated inside the training loop


def train_variant(data: pg.Data, cfg: pg.Config, *, steps: int, lr: float, weight_decay: float, batch_size: int,
                  seed: int, eval_every: int, chunk: int, checkpoint: str | None, settings: dict,
                  quiet: bool) -> dict:
    """Train one variant; returns its params (init, final), trajectory and checks (host values)."""
    name = VARIANTS[min(cfg.window, 1)]
    params0 = pg.init_params(jax.random.fold_in(jax.random.key(seed), cfg.window), cfg)
    opt, schedule = pg.optimizer(lr, weight_decay, steps)
    step, state = pg.make_step(data, cfg, opt, schedule, weight_decay, params0,
                               jax.random.fold_in(jax.random.key(seed + 1), cfg.window),
                               batch_size=batch_size, eval_every=eval_every, eval_size=PROBE)
    directory = None if checkpoint is None else os.path.join(checkpoint, name)
    t0 = time.perf_counter()
    final, traj = run_steps(step, state, steps, chunk=chunk, directory=directory,
                            settings={**settings, "variant": name}, progress=None if quiet else name)
    seconds = time.perf_counter() - t0
    params = final.params
    # jax.grad of the real loss on the step's batch, recorded by the step: at the initialization
    # (step 0) and after training (the last step's gradient, taken before its update)
    grads = {when: {n: float(v[t]) for n, v in traj["grad_max"].items()} for when, t in (("init", 0), ("trained", -1))}

    # W(T) against W(0) prod (1 - lr_t wd), with the lrs the run actually used, in float64.
    factor = float(pg.decay_factors(traj["lr"], weight_decay)[-1])
    decay = {}
    for n in ("q", "k", "v", "o"):
        w0 = np.asarray(params0["layers"][n], np.float64)
        w = np.asarray(params["layers"][n], np.float64)
        decay[n] = {"max_abs_error_over_max_abs_w0": float(np.abs(w - factor * w0).max() / np.abs(w0).max()),
                    "relative_excess_change": float(np.linalg.norm(w - factor * w0) / np.linalg.norm(w0))}
    for n in ("q_bias", "k_bias"):
        decay[n] = {"max_abs": float(np.abs(np.asarray(params["layers"][n])).max())}

    entropy, mse, r2 = {}, {}, {}
    entropy["init"] = pg.evaluate(params0, data, data.test, cfg)["entropy"]
    for split in ("train", "test"):
        idx = getattr(data, split)
        result = pg.evaluate(params, data, idx, cfg)
        mse[split] = result["mse"]
        if split == "test":
            entropy["trained"] = result["entropy"]
        baseline = float(jnp.mean(jnp.square(data.target[idx])))  # targets are z-scored by the training mean
        r2[split] = 1.0 - mse[split] / baseline
    entropy["uniform"] = float(np.log(cfg.tokens))
    return {"name": name, "cfg": cfg, "params0": params0, "params": params, "traj": traj, "seconds": seconds,
            "grads": grads, "decay_factor": factor, "decay": decay, "entropy": entropy, "mse": mse, "r2": r2,
            "qk_erank": {"init": np.asarray(pg.qk_kernel_erank(params0)),
                         "trained": np.asarray(pg.qk_kernel_erank(params))}}


def _rank_table(runs: list[dict], key: jax.Array, num_draws: int) -> dict[str, np.ndarray]:
    rows: dict[str, list] = {c: [] for c in ("variant", "matrix", "rows", "cols")}
    for i, r in enumerate(runs):
        k_trained, k_init = jax.random.split(jax.random.fold_in(key, i))
        mats = {"trained": pg.weight_matrices(r["params"], r["cfg"]), "init": pg.weight_matrices(r["params0"], r["cfg"])}
        stats = {"trained": matrix_rank_rows(mats["trained"], k_trained, num_draws=num_draws),
                 "init": matrix_rank_rows(mats["init"], k_init, num_draws=num_draws)}
        for name, w in mats["trained"].items():
            rows["variant"].append(r["name"])
            rows["matrix"].append(name)
            rows["rows"].append(w.shape[0])
            rows["cols"].append(w.shape[1])
            for stat in RANK_STATS:
                s = stats["trained"][name]
                for col, value in ((stat, s[stat]), (f"{stat}_init", stats["init"][name][stat]),
                                   (f"{stat}_null_mean", s[f"{stat}_null_mean"]),
                                   (f"{stat}_null_std", s[f"{stat}_null_std"]), (f"{stat}_z", s[f"{stat}_z"]),
                                   (f"{stat}_init_z", stats["init"][name][f"{stat}_z"])):
                    rows.setdefault(col, []).append(float(value))
    return {c: np.asarray(v, dtype=object if c in ("variant", "matrix") else None) for c, v in rows.items()}


def run(out: str, *, primes: int = 100_000, layers: int = 2, width: int = 64, heads: int = 4, mlp: int | None = None,
        encoding: str = "learned", window: int = 16, steps: int = 3000, batch_size: int = 256, lr: float = 1e-3,
        weight_decay: float = 0.01, seed: int = 0, eval_every: int = 100, chunk: int = 500,
        null_draws: int = 16, checkpoint: str | None = None, quiet: bool = False) -> dict:
    """Train both variants and write metrics, tables and figures into the new folder `out`."""
    if checkpoint is not None and os.path.abspath(checkpoint).startswith(os.path.abspath(out) + os.sep):
        raise ValueError("--checkpoint must not be inside --out")
    t_start = time.perf_counter()
    mlp = 4 * width if mlp is None else mlp
    cfgs = [pg.Config(num_layers=layers, width=width, heads=heads, mlp=mlp, encoding=encoding, window=w,
                      num_index=1).check() for w in (0, window)]  # refuse a bad model before any work
    with output_folder(out, []) as folder:
        data = pg.make_data(primes, window=window, seed=seed)
        trend = pg.log_trend_baseline(data)
        settings = {"primes": primes, "layers": layers, "width": width, "heads": heads, "mlp": mlp,
                    "encoding": encoding, "window": window, "steps": steps, "batch_size": batch_size, "lr": lr,
                    "final_lr": lr * 0.01, "weight_decay": weight_decay, "clip": 5.0, "seed": seed,
                    "eval_every": eval_every, "test_fraction": 0.1, "gaps": int(data.gaps.shape[0])}
        runs = []
        for cfg in cfgs:
            cfg = cfg._replace(num_index=int(data.gaps.shape[0]))
            runs.append(train_variant(data, cfg, steps=steps, lr=lr, weight_decay=weight_decay,
                                      batch_size=batch_size, seed=seed, eval_every=eval_every, chunk=chunk,
                                      checkpoint=checkpoint, settings=settings, quiet=quiet))
        rank = _rank_table(runs, jax.random.key(seed + 2), null_draws)

        zero = [n for n in pg.ATTENTION_QK]
        single = runs[0]
        checks = {
            "single_qk_grad_exactly_zero": all(single["grads"][w][n] == 0.0 for w in ("init", "trained") for n in zero),
            "single_other_grads_nonzero": all(single["grads"][w][n] > 0 for w in ("init", "trained")
                                              for n in ("v", "o", "up", "down")),
            "single_qk_grad_zero_every_step": bool(np.all(single["traj"]["qk_grad"] == 0.0)),
            "single_q_decay_identity_error": single["decay"]["q"]["max_abs_error_over_max_abs_w0"],
            "single_k_decay_identity_error": single["decay"]["k"]["max_abs_error_over_max_abs_w0"],
            "window_q_excess_change": runs[1]["decay"]["q"]["relative_excess_change"],
            "window_k_excess_change": runs[1]["decay"]["k"]["relative_excess_change"],
            "window_qk_grad_max": float(np.max(runs[1]["traj"]["qk_grad"])),
        }
        metrics = {
            "setting": settings, "checks": checks, "log_trend_baseline": trend,
            "data": {"gaps": int(data.gaps.shape[0]), "train": int(data.train.shape[0]), "test": int(data.test.shape[0]),
                     "gap_mean": data.mean, "gap_std": data.std, "largest_prime": int(data.primes[-1] + data.gaps[-1])},
            "variants": {r["name"]: {
                "tokens": r["cfg"].tokens, "train_mse": r["mse"]["train"], "test_mse": r["mse"]["test"],
                "train_r2": r["r2"]["train"], "test_r2": r["r2"]["test"], "seconds": r["seconds"],
                "gradients_max_abs": r["grads"], "decay_factor": r["decay_factor"], "decay_identity": r["decay"],
                "attention_entropy": r["entropy"],
                "qk_kernel_erank": {k: v.tolist() for k, v in r["qk_erank"].items()},
                "final_excess_change": {n: float(r["traj"]["excess"][n][-1]) for n in "qkvo"},
            } for r in runs},
        }
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        _write_tables(folder, runs, rank)
        _plots(folder, runs, rank, data, trend)
    if not quiet:
        _summary(metrics, rank, time.perf_counter() - t_start, out)
    return metrics


def _write_tables(folder: str, runs: list[dict], rank: dict) -> None:
    traj_cols: dict[str, list] = {}
    for r in runs:
        t = r["traj"]
        n = len(t["loss"])
        cols = {"variant": np.full(n, r["name"], dtype=object), "step": np.arange(n), "loss": t["loss"],
                "test_mse": t["test_mse"], "lr": t["lr"], "attention_entropy": t["entropy"], "qk_grad_max": t["qk_grad"],
                "v_grad_norm": t["v_grad"], "o_grad_norm": t["o_grad"], "mlp_grad_norm": t["mlp_grad"],
                **{f"excess_{k}": t["excess"][k] for k in "qkvo"}}
        for c, v in cols.items():
            traj_cols.setdefault(c, []).append(np.asarray(v))
    write_table({c: np.concatenate(v) for c, v in traj_cols.items()}, folder, "trajectory")
    g: dict[str, list] = {"variant": [], "when": [], "parameter": [], "max_abs_grad": [], "zero_by_theory": []}
    for r in runs:
        for when, mags in r["grads"].items():
            for name, value in mags.items():
                g["variant"].append(r["name"])
                g["when"].append(when)
                g["parameter"].append(name)
                g["max_abs_grad"].append(value)
                g["zero_by_theory"].append(int(r["cfg"].window == 0 and name in pg.ATTENTION_QK))
    write_table({c: np.asarray(v, dtype=object if c in ("variant", "when", "parameter") else None)
                 for c, v in g.items()}, folder, "gradients")
    write_table(rank, folder, "rank_statistics")
    q: dict[str, list] = {"variant": [], "layer": [], "head": [], "erank_init": [], "erank_trained": []}
    for r in runs:
        for (layer, head), e0 in np.ndenumerate(r["qk_erank"]["init"]):
            q["variant"].append(r["name"])
            q["layer"].append(layer)
            q["head"].append(head)
            q["erank_init"].append(float(e0))
            q["erank_trained"].append(float(r["qk_erank"]["trained"][layer, head]))
    write_table({c: np.asarray(v, dtype=object if c == "variant" else None) for c, v in q.items()}, folder,
                "qk_kernel")


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    width = max(1, min(width, len(x)))
    c = np.cumsum(np.insert(np.asarray(x, np.float64), 0, 0.0))
    return (c[width:] - c[:-width]) / width


def _plots(folder: str, runs: list[dict], rank: dict, data: pg.Data, trend: dict) -> None:
    fig, axes = subplots(1, 2, figsize=(11, 4), sharey=True)
    # baselines on the same random held-out gaps the in-loop test MSE uses (make_step's probe)
    probe = np.asarray(data.test)[:PROBE]
    z = np.asarray(data.target, np.float64)[probe]
    trend_z = (trend["intercept"] + trend["slope"] * np.log(data.primes[probe].astype(np.float64)) - data.mean) / data.std
    mean_mse, trend_mse = float(np.mean(z ** 2)), float(np.mean((z - trend_z) ** 2))
    for ax, r in zip(axes, runs):
        t = r["traj"]
        width = max(1, len(t["loss"]) // 50)
        sm = _smooth(t["loss"], width)
        ax.plot(np.arange(len(sm)) + width - 1, sm, color="C0", label=f"train batch MSE (mean of {width} steps)")
        ok = np.isfinite(t["test_mse"])
        ax.plot(np.flatnonzero(ok), t["test_mse"][ok], "o-", color="C3", markersize=3,
                label=f"test MSE ({len(probe)} random held-out gaps)")
        ax.axhline(mean_mse, color="k", linestyle="--", linewidth=1, label="predict the training mean, same gaps")
        ax.axhline(trend_mse, color="C2", linestyle=":", linewidth=1.5,
                   label=f"log trend a + b ln p, same gaps (full test R² {trend['test_r2']:.3f})")
        tokens = "1 token: the index n" if r["cfg"].window == 0 else f"{r['cfg'].window} tokens: previous gaps"
        ax.set(xlabel="step", title=f"{r['name']} ({tokens}, {r['cfg'].encoding})\n"
               f"final R² vs the mean: train {r['r2']['train']:.3f}, test {r['r2']['test']:.3f} (all gaps)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("MSE of z-scored gap")
    save_figure(fig, os.path.join(folder, "loss.png"))

    fig, axes = subplots(1, 3, figsize=(15, 4))
    for ax, r in zip(axes[:2], runs):
        ex = r["traj"]["excess"]
        steps = np.arange(1, len(ex["q"]) + 1)
        for n, label, style in (("q", "W_Q", "-"), ("k", "W_K", "--"), ("v", "W_V", "-"), ("o", "W_O", "--")):
            ax.semilogy(steps, np.maximum(ex[n], 1e-9), style, label=label, color={"q": "C3", "k": "C1", "v": "C0", "o": "C9"}[n])
        ax.axhline(1e-6, color="0.5", linewidth=0.8, linestyle=":", label="float32 rounding level")
        ax.set(xlabel="step", ylabel="‖W(t) − Π(1−lr·wd)·W(0)‖ / ‖W(0)‖",
               title=f"{r['name']}: change beyond weight decay", ylim=(1e-9, 3))
        ax.legend(fontsize=7)
    w = runs[1]
    ent = _smooth(w["traj"]["entropy"], max(1, len(w["traj"]["entropy"]) // 50))
    ax = axes[2]
    ax.plot(np.arange(len(ent)), ent, color="C4", label=f"window ({w['cfg'].window} keys), batch mean")
    ax.axhline(w["entropy"]["uniform"], color="k", linestyle="--", linewidth=1, label=f"uniform: ln {w['cfg'].window}")
    ax.axhline(0.0, color="C3", linestyle="-", linewidth=1.5, label="single token: always 0 (one key)")
    ax.set(xlabel="step", ylabel="attention entropy (nats)", title="Attention entropy")
    ax.legend(fontsize=7)
    save_figure(fig, os.path.join(folder, "excess.png"))

    stats = (("erank", "effective rank"), ("stable_rank", "stable rank"), ("max_mean", "s₁ / mean(s)"))
    fig, axes = subplots(len(stats), len(runs), figsize=(6.5 * len(runs), 3.2 * len(stats)), squeeze=False)
    for j, r in enumerate(runs):
        sel = np.flatnonzero(rank["variant"] == r["name"])
        names = [str(n) for n in rank["matrix"][sel]]
        x = np.arange(len(sel))
        for i, (stat, label) in enumerate(stats):
            ax = axes[i, j]
            mean, std = rank[f"{stat}_null_mean"][sel].astype(float), rank[f"{stat}_null_std"][sel].astype(float)
            ax.bar(x, 4 * std, bottom=mean - 2 * std, width=0.7, color="0.85", label="Gaussian null ±2σ")
            ax.scatter(x, rank[f"{stat}_init"][sel].astype(float), marker="o", facecolors="none", edgecolors="k",
                       s=50, label="initialization", zorder=3)
            ax.scatter(x, rank[stat][sel].astype(float), marker="x", color="C3", s=40, label="trained", zorder=4)
            ax.set_xticks(x, names, rotation=60, fontsize=7)
            ax.set_ylabel(label)
            if i == 0:
                ax.set_title(f"{r['name']} variant: trained vs init vs null")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    save_figure(fig, os.path.join(folder, "rank.png"))


def _summary(metrics: dict, rank: dict, seconds: float, out: str) -> None:
    s = metrics["setting"]
    print(f"Prime gaps: {s['primes']} primes, {s['layers']} layers, E = {s['width']}, {s['heads']} heads, "
          f"{s['encoding']} encoding, {s['steps']} steps, batch {s['batch_size']}")
    print(f"  log-trend baseline g ~ a + b ln p: train R² {metrics['log_trend_baseline']['train_r2']:.4f}, "
          f"test R² {metrics['log_trend_baseline']['test_r2']:.4f}")
    for name, v in metrics["variants"].items():
        g = v["gradients_max_abs"]
        print(f"  {name} ({v['tokens']} token(s)): train MSE {v['train_mse']:.4f} (R² {v['train_r2']:.4f}), "
              f"test MSE {v['test_mse']:.4f} (R² {v['test_r2']:.4f}), {v['seconds']:.0f} s")
        print(f"    max |grad| at init / trained: W_Q {g['init']['q']:.3g} / {g['trained']['q']:.3g}, "
              f"W_K {g['init']['k']:.3g} / {g['trained']['k']:.3g}, W_V {g['init']['v']:.3g} / {g['trained']['v']:.3g}")
        d = v["decay_identity"]
        print(f"    W_Q(T) vs Π(1-lr wd) W_Q(0) = {v['decay_factor']:.6f} W_Q(0): max error / max |W_Q(0)| "
              f"{d['q']['max_abs_error_over_max_abs_w0']:.2e}; change beyond decay: "
              + ", ".join(f"{n} {v['final_excess_change'][n]:.2e}" for n in "qkvo"))
        e = v["attention_entropy"]
        print(f"    attention entropy {e['init']:.4f} -> {e['trained']:.4f} nats (uniform {e['uniform']:.4f})")
        sel = (rank["variant"] == name) & (rank["matrix"] == "l0.q")
        i = int(np.flatnonzero(sel)[0])
        print(f"    l0.q erank trained {rank['erank'][i]:.3f}, init {rank['erank_init'][i]:.3f}, "
              f"null {rank['erank_null_mean'][i]:.3f} ± {rank['erank_null_std'][i]:.3f}")
    print(f"  checks: {json.dumps(metrics['checks'])}")
    print(f"  wall time {seconds:.0f} s; results in {os.path.abspath(out)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--primes", type=int, default=100_000, help="number of primes N (default 100000)")
    parser.add_argument("--layers", type=int, default=2, help="encoder layers (default 2)")
    parser.add_argument("--width", type=int, default=64, help="hidden width E (default 64)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    parser.add_argument("--mlp", type=int, default=None, help="MLP width F (default 4 x width, as the source)")
    parser.add_argument("--encoding", choices=("learned", "sinusoidal"), default="learned",
                        help="index (single) / position (window) encoding (default learned)")
    parser.add_argument("--window", type=int, default=16, help="previous gaps per sequence in the window variant")
    parser.add_argument("--steps", type=int, default=3000, help="AdamW steps per variant (default 3000)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine to 1%%; default 1e-3)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decoupled decay (default 0.01)")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between test evaluations (default 100)")
    parser.add_argument("--chunk", type=int, default=500, help="steps per compiled chunk / checkpoint (default 500)")
    parser.add_argument("--null-draws", type=int, default=16, help="Gaussian null draws per matrix (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of split, init, batches and nulls (default 0)")
    parser.add_argument("--checkpoint", default=None, help="folder to save training to and resume from")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, no summary")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.steps < 1 or args.chunk < 1 or args.eval_every < 1 or args.batch_size < 1:
            raise ValueError("--steps, --chunk, --eval-every and --batch-size must be >= 1")
        if args.window < 2:
            raise ValueError("--window must be >= 2 (one token cannot use attention)")
        if args.mlp is not None and args.mlp < 1:
            raise ValueError("--mlp must be >= 1")
        if args.null_draws < 2:
            raise ValueError("--null-draws must be >= 2")
        if args.primes < 10 * args.window:
            raise ValueError(f"--primes must be at least 10 x --window ({10 * args.window})")
        run(args.out, primes=args.primes, layers=args.layers, width=args.width, heads=args.heads, mlp=args.mlp,
            encoding=args.encoding, window=args.window, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, seed=args.seed, eval_every=args.eval_every, chunk=args.chunk,
            null_draws=args.null_draws, checkpoint=args.checkpoint, quiet=args.quiet)
        return 0

    return run_main("prime_gaps", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
