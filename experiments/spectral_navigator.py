"""The spectral line navigator (Cohen et al., ICLR 2025 workshop) against a random-neighbour walk.

Setting (docs/dynamics.md, Setups): random connected graphs, Erdős–Rényi G(n, p) conditioned on connectivity,
an equal number of graphs for each n in [--min-nodes, --max-nodes] (3..10), every ordered
(source, target) pair of distinct nodes as a query. The navigator walks greedily by the distance
between line-graph spectral edge embeddings (`spectrax.dynamics.navigator`); a path is optimal when
its length equals the BFS distance. Both walks get the same step bound, n - 1 (for the deterministic
navigator, not arriving within n - 1 steps means it cycles forever: a failure).

The Tian talk claims the navigator is ">99% optimal for small random graph (size < 10)" but
does not say which eigenvectors are used or how they are scaled; the script runs one main variant
(--scale, --dim; default: all nonzero eigenvectors with commute-time weights) for the tables and
plot, and, with --variants (default on), compares the other readings of "the eigenvectors".

    python experiments/spectral_navigator.py --out DIR [--graphs 2000] [--seed 0] [--p 0.5]
        [--checkpoint DIR] [--no-variants] [--quiet]

Writes `by_distance.csv`, `by_nodes.csv` (main variant: n_queries, optimal counts, fractions with
Wilson 95% intervals, failures, tied walks, for the navigator and the baseline, plus the baseline's
exact optimal probability), `variants.csv`, `metrics.json`, `optimal_fraction.png` and
`variants.png`. Runs in float64 (ties between embedding distances are common on small symmetric
graphs and are judged at sqrt(eps)). The graphs are processed in batches by
`spectrax.dynamics.loop.run_steps`; `--checkpoint DIR` saves after every chunk and resumes.
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
from experiments._common import markdown, output_folder, run_main, write_table  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.dynamics import navigator as nv  # noqa: E402
from spectrax.dynamics.loop import run_steps  # noqa: E402

__all__ = ["COMPARED", "SOURCE_CLAIM", "main", "run"]

SOURCE_CLAIM = {"text": ">99% optimal for small random graph (size < 10)", "fraction": 0.99,
                "where": "the Tian talk, slide 'Spectral Line Navigator (SLN)'"}
# Readings of "the eigenvectors of the normalized Laplacian" compared against the main variant.
COMPARED = ((None, "none"), (1, "none"), (2, "none"), (3, "none"), (4, "none"), (3, "commute"),
            (None, "inverse_sqrt"), (None, "commute"))


def variant_name(dim, scale) -> str:
    return f"{scale}/{'all' if dim is None else dim}"


def make_graphs(seed: int, graphs: int, p: float, min_nodes: int, max_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """`(G, max_nodes, max_nodes)` graphs, sizes spread evenly over [min_nodes, max_nodes]."""
    sizes = np.arange(min_nodes, max_nodes + 1)
    per = np.full(len(sizes), graphs // len(sizes))
    per[: graphs % len(sizes)] += 1
    key = jax.random.key(seed)
    adj = [nv.random_connected_graphs(jax.random.fold_in(key, int(n)), int(c), int(n), p, max_nodes=max_nodes)
           for n, c in zip(sizes, per)]
    return np.concatenate(adj), np.repeat(sizes, per).astype(np.int32)


def evaluate(seed: int, adj: np.ndarray, num_nodes: np.ndarray, variants, *, batch: int, chunk: int,
             checkpoint: str | None, settings: dict, quiet: bool) -> nv.Queries:
    """All queries of all graphs, `batch` graphs per step of `run_steps` (checkpointed per chunk)."""
    adj, num_nodes = nv.check_graphs(adj, num_nodes)
    g = adj.shape[0]
    steps = -(-g // batch)
    idx = np.arange(steps * batch) % g  # pad the last batch with repeats, dropped below
    all_adj, all_nodes = jnp.asarray(adj[idx]), jnp.asarray(num_nodes[idx])
    codes = jnp.asarray(nv.variant_codes(variants))
    walk_key = jax.random.fold_in(jax.random.key(seed), 10_000)

    def step(done, t):
        start = t * batch
        a = jax.lax.dynamic_slice_in_dim(all_adj, start, batch)
        sizes = jax.lax.dynamic_slice_in_dim(all_nodes, start, batch)
        keys = jax.vmap(lambda i: jax.random.fold_in(walk_key, i))(start + jnp.arange(batch, dtype=jnp.int32))
        q = nv.evaluate_graphs(keys, a, sizes, sizes - 1, codes)
        # bools as int8: what orbax stores without fuss
        return done + batch, q._replace(valid=q.valid.astype(jnp.int8), nav_tied=q.nav_tied.astype(jnp.int8))

    _, traj = run_steps(step, jnp.int32(0), steps, chunk=chunk, directory=checkpoint, settings=settings,
                        progress=None if quiet else "graph batches")
    fields = {}
    for name, x in zip(nv.Queries._fields, traj):
        x = np.asarray(x)
        if name in ("nav_length", "nav_tied"):  # (T, V, B, N, N) -> (V, G, N, N)
            x = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1, *x.shape[3:])[:, :g]
        else:
            x = x.reshape(-1, *x.shape[2:])[:g]
        fields[name] = x
    fields["valid"] = fields["valid"].astype(bool)
    fields["nav_tied"] = fields["nav_tied"].astype(bool)
    return nv.Queries(**fields)


def run(out: str, *, graphs: int = 2000, seed: int = 0, p: float = 0.5, min_nodes: int = 3, max_nodes: int = 10,
        dim: int | None = None, scale: str = "commute", compare: bool = True, batch: int = 50, chunk: int = 10,
        checkpoint: str | None = None, quiet: bool = False) -> dict:
    """Generate the graphs, run every query, write tables, figures and metrics into the new folder `out`."""
    if graphs < 1 or batch < 1 or chunk < 1:
        raise ValueError("--graphs, --batch and --chunk must be >= 1")
    if not 2 <= min_nodes <= max_nodes:
        raise ValueError("need 2 <= --min-nodes <= --max-nodes")
    if not 0.0 < p <= 1.0:
        raise ValueError("--p must be in (0, 1]")
    main_variant = (dim, scale)
    nv.variant_codes([main_variant])  # refuse a bad --dim / --scale before any work
    variants = [main_variant] + ([v for v in COMPARED if v != main_variant] if compare else [])
    names = [variant_name(*v) for v in variants]
    t0 = time.perf_counter()
    with output_folder(out, []) as folder, jax.enable_x64(True):
        adj, num_nodes = make_graphs(seed, graphs, p, min_nodes, max_nodes)
        settings = {"graphs": graphs, "seed": seed, "p": p, "min_nodes": min_nodes, "max_nodes": max_nodes,
                    "variants": names, "batch": batch}
        queries = evaluate(seed, adj, num_nodes, variants, batch=batch, chunk=chunk, checkpoint=checkpoint,
                           settings=settings, quiet=quiet)
        by_distance = nv.optimal_fraction_table(queries, "distance")
        by_nodes = nv.optimal_fraction_table(queries, "num_nodes")
        overall = [nv.optimal_fraction_table(queries, None, v) for v in range(len(variants))]
        write_table(_named(by_distance, "distance"), folder, "by_distance")
        write_table(_named(by_nodes, "num_nodes"), folder, "by_nodes")
        variant_table = {"variant": np.asarray(names, dtype=object),
                         "dim": np.asarray(["all" if d is None else str(d) for d, _ in variants], dtype=object),
                         "scale": np.asarray([sc for _, sc in variants], dtype=object),
                         **{c: np.concatenate([o[c] for o in overall])
                            for c in ("n_queries", "nav_optimal", "nav_frac", "nav_lo", "nav_hi", "nav_suboptimal",
                                      "nav_failures", "nav_tied")}}
        write_table(variant_table, folder, "variants")
        main_all = overall[0]
        valid = queries.valid
        q = queries.rw_optimal_prob[valid]
        rw_z = float((main_all["rw_optimal"][0] - q.sum()) / np.sqrt(np.sum(q * (1 - q))))
        untied = valid & ~queries.nav_tied[0]
        metrics = {
            "setting": {**settings, "graph_model": "Erdos-Renyi G(n, p) conditioned on connectivity (rejection)",
                        "queries": "all ordered pairs (s, t), s != t", "step_bound": "n - 1 for both walks",
                        "main_variant": names[0], "dtype": "float64", "graphs_per_n": _counts(num_nodes)},
            "source_claim": SOURCE_CLAIM,
            "measured": {"navigator_optimal_fraction": float(main_all["nav_frac"][0]),
                         "ci95": [float(main_all["nav_lo"][0]), float(main_all["nav_hi"][0])],
                         "n_queries": int(main_all["n_queries"][0]),
                         "navigator_failures": int(main_all["nav_failures"][0]),
                         "navigator_suboptimal": int(main_all["nav_suboptimal"][0]),
                         "navigator_tied_walks": int(main_all["nav_tied"][0]),
                         "navigator_optimal_fraction_untied": float(np.mean(
                             queries.nav_length[0][untied] == queries.distance[untied])),
                         "baseline_optimal_fraction": float(main_all["rw_frac"][0]),
                         "baseline_ci95": [float(main_all["rw_lo"][0]), float(main_all["rw_hi"][0])],
                         "baseline_failures": int(main_all["rw_failures"][0]),
                         "baseline_exact_optimal_probability": float(main_all["rw_theory"][0]),
                         "baseline_mc_vs_exact_z": rw_z},
            "variants": {name: {c: _scalar(o[c][0]) for c in o if c != "key"} for name, o in zip(names, overall)},
            "by_distance": {c: by_distance[c].tolist() for c in by_distance},
            "by_nodes": {c: by_nodes[c].tolist() for c in by_nodes},
        }
        _plot_fraction(folder, by_distance, by_nodes, names[0], p)
        if compare:
            _plot_variants(folder, names, overall)
        metrics["wall_seconds"] = time.perf_counter() - t0
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
    if not quiet:
        _print_summary(out, metrics, by_distance, by_nodes, variant_table if compare else None)
    return metrics


def _scalar(x):
    return x.item() if hasattr(x, "item") else x


def _counts(num_nodes: np.ndarray) -> dict[str, int]:
    sizes, counts = np.unique(num_nodes, return_counts=True)
    return {str(int(s)): int(c) for s, c in zip(sizes, counts)}


def _named(table: dict, key: str) -> dict:
    return {key: table["key"], **{c: v for c, v in table.items() if c != "key"}}


def _pct(frac, lo, hi) -> str:
    return f"{100 * frac:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"


def _rows(table: dict, key: str) -> dict:
    return {key: table["key"], "n_queries": table["n_queries"],
            "navigator % optimal [95% CI]": [_pct(*r) for r in zip(table["nav_frac"], table["nav_lo"], table["nav_hi"])],
            "nav failures": table["nav_failures"], "nav tied": table["nav_tied"],
            "random % optimal [95% CI]": [_pct(*r) for r in zip(table["rw_frac"], table["rw_lo"], table["rw_hi"])],
            "random exact %": [f"{100 * x:.2f}" for x in table["rw_theory"]], "random failures": table["rw_failures"]}


def _print_summary(out, metrics, by_distance, by_nodes, variant_table) -> None:
    m, s = metrics["measured"], metrics["setting"]
    print(f"Spectral line navigator: {s['graphs']} graphs G(n, {s['p']}) conditioned connected, "
          f"n = {s['min_nodes']}..{s['max_nodes']}, {m['n_queries']} queries, embedding {s['main_variant']}")
    print(markdown("By shortest-path distance", _rows(by_distance, "distance")))
    print(markdown("By graph size n", _rows(by_nodes, "n")))
    if variant_table is not None:
        rows = {"variant": variant_table["variant"], "n_queries": variant_table["n_queries"],
                "% optimal [95% CI]": [_pct(*r) for r in zip(variant_table["nav_frac"], variant_table["nav_lo"],
                                                              variant_table["nav_hi"])],
                "failures (cycles)": variant_table["nav_failures"], "tied walks": variant_table["nav_tied"]}
        print(markdown("Embedding variants (scale/dim)", rows))
    print(f"source claims: {SOURCE_CLAIM['text']}")
    print(f"measured: navigator {_pct(m['navigator_optimal_fraction'], *m['ci95'])}% optimal, "
          f"{m['navigator_failures']} failures, {m['navigator_suboptimal']} longer paths; "
          f"random walk {_pct(m['baseline_optimal_fraction'], *m['baseline_ci95'])}% "
          f"(exact {100 * m['baseline_exact_optimal_probability']:.2f}%, MC z = {m['baseline_mc_vs_exact_z']:+.2f}), "
          f"{m['baseline_failures']} not arriving within n - 1 steps")
    print(f"wall time {metrics['wall_seconds']:.1f} s; results in {os.path.abspath(out)}")


def _plot_fraction(folder: str, by_distance: dict, by_nodes: dict, name: str, p: float) -> None:
    fig, axes = subplots(2, 2, figsize=(11, 7.5), sharex="col", gridspec_kw={"height_ratios": [3, 2]})
    for col, (table, xlabel) in enumerate(((by_distance, "shortest-path distance d(s, t)"),
                                           (by_nodes, "graph size n (nodes)"))):
        x = table["key"].astype(float)
        top, zoom = axes[0, col], axes[1, col]
        series = [("nav", f"spectral line navigator ({name})", "C0", "o", -0.06),
                  ("rw", "random-neighbour walk", "C3", "s", 0.06)]
        for prefix, label, color, marker, dx in series:
            f, lo, hi = table[f"{prefix}_frac"], table[f"{prefix}_lo"], table[f"{prefix}_hi"]
            for ax in (top, zoom) if prefix == "nav" else (top,):
                ax.errorbar(x + dx, f, yerr=[f - lo, hi - f], fmt=marker + "-", color=color, capsize=3,
                            label=label + ", Wilson 95% CI")
        top.plot(x + 0.06, table["rw_theory"], "x", color="k", markersize=7, label="random walk: exact P(optimal)")
        for ax in (top, zoom):
            ax.axhline(SOURCE_CLAIM["fraction"], color="C2", linestyle="--", linewidth=1,
                       label="source's claim: >99% optimal")
            ax.grid(alpha=0.3)
        for xi, nq in zip(x, table["n_queries"]):
            top.annotate(f"{nq}", (xi, 1.0), xytext=(0, 5), textcoords="offset points", ha="center", fontsize=7,
                         color="0.35")
        top.set(ylim=(-0.02, 1.1), title=("by distance" if col == 0 else "by graph size")
                + " (grey: number of queries)")
        # scale the zoom to the well-sampled groups; a handful of queries gives a CI reaching far down
        big = table["n_queries"] >= 100
        low = max(0.8, min(0.985, float(np.min(table["nav_lo"][big], initial=1.0)) - 0.005))
        zoom.set(xlabel=xlabel, xticks=x, ylim=(low, 1.002), title="navigator, zoomed")
    axes[0, 0].set_ylabel("fraction of queries on a shortest path")
    axes[1, 0].set_ylabel("fraction optimal (zoom)")
    axes[0, 0].legend(fontsize=7, loc="center left")
    fig.suptitle(f"Greedy spectral line navigation vs a random walk on connected G(n, {p}) graphs")
    save_figure(fig, os.path.join(folder, "optimal_fraction.png"))


def _plot_variants(folder: str, names: list[str], overall: list[dict]) -> None:
    frac = np.array([o["nav_frac"][0] for o in overall])
    lo = np.array([o["nav_lo"][0] for o in overall])
    hi = np.array([o["nav_hi"][0] for o in overall])
    fail = np.array([o["nav_failures"][0] / o["n_queries"][0] for o in overall])
    order = np.argsort(frac)
    y = np.arange(len(names))
    fig, (left, right) = subplots(1, 2, figsize=(10, 0.4 * len(names) + 1.8), sharey=True,
                                      gridspec_kw={"width_ratios": [3, 2]})
    left.errorbar(frac[order], y, xerr=[frac[order] - lo[order], hi[order] - frac[order]], fmt="o", color="C0",
                  capsize=3, label="optimal, Wilson 95% CI")
    left.axvline(SOURCE_CLAIM["fraction"], color="C2", linestyle="--", label="source's claim: >99%")
    for yi, f in zip(y, frac[order]):
        left.annotate(f"{100 * f:.1f}%", (f, yi), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=7)
    left.set_yticks(y, [names[i] for i in order])
    left.set(xlabel="fraction of queries on a shortest path", ylabel="edge embedding (scale / eigenvectors kept)",
             title="optimal paths")
    left.legend(fontsize=7, loc="lower right")
    right.barh(y, 100 * fail[order], color="C3", alpha=0.7)
    right.set(xlabel="% of queries where the walk cycles", title="failures")
    for ax in (left, right):
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("Which eigenvectors of the line graph's normalized Laplacian?")
    save_figure(fig, os.path.join(folder, "variants.png"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--graphs", type=int, default=2000, help="random graphs, spread evenly over n (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of graphs and random walks (default 0)")
    parser.add_argument("--p", type=float, default=0.5, help="edge probability of G(n, p) (default 0.5)")
    parser.add_argument("--min-nodes", type=int, default=3, help="smallest graph size (default 3)")
    parser.add_argument("--max-nodes", type=int, default=10, help="largest graph size (default 10)")
    parser.add_argument("--scale", choices=nv.SCALES, default="commute",
                        help="eigenvector weighting of the main embedding (default commute)")
    parser.add_argument("--dim", type=int, default=None,
                        help="number of smallest nonzero eigenvalues kept (default: all)")
    parser.add_argument("--no-variants", action="store_true", help="skip the comparison of embedding variants")
    parser.add_argument("--batch", type=int, default=50, help="graphs per compiled step (default 50)")
    parser.add_argument("--chunk", type=int, default=10, help="steps between checkpoints (default 10)")
    parser.add_argument("--checkpoint", default=None, help="folder to save progress in and resume from")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        run(args.out, graphs=args.graphs, seed=args.seed, p=args.p, min_nodes=args.min_nodes,
            max_nodes=args.max_nodes, dim=args.dim, scale=args.scale, compare=not args.no_variants,
            batch=args.batch, chunk=args.chunk, checkpoint=args.checkpoint, quiet=args.quiet)
        return 0

    return run_main("spectral_navigator", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
