"""The `spectrax` command line: `analyze`, `compare`, `inspect` (see `spectrax <command> --help`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from spectrax.data import TINY_LLAMA

__all__ = ["main"]

# The analyses `--analyses` offers (the names in spectrax.analyses.registry.ANALYSES, which the tests
# hold this equal to), written out so that building the parser, and `--help`, imports neither JAX nor the
# analyses: the command imports them once the arguments are parsed.
ANALYSIS_NAMES = ("laws", "rank", "kernel", "esd", "charge")
DEFAULT_ANALYSES = ("laws", "rank", "kernel", "esd")  # spectrax.analyses.registry.DEFAULT


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    raise AssertionError


def format_inspect(info: dict) -> str:
    """A human-readable summary of `spectrax.inspect`'s dict."""
    head_dim = info["head_dim"] if info["head_dim"] is not None else f"per layer {info['head_dims']}"
    hub = info.get("hub")
    lines = [
        f"{hub['repo']} at commit {hub['sha']} ({info['path']})" if hub else f"{info['path']}",
        f"  model_type      {info['model_type']}" + (f" (text tower of {info['wrapper']})" if info["wrapper"] else ""),
        f"  layers          {info['num_layers']}",
        f"  heads           {info['num_heads']} query, {info['num_kv_heads']} key/value (group size {info['num_heads'] // info['num_kv_heads']})",
        f"  head_dim        {head_dim}",
        f"  hidden_size     {info['hidden_size']}",
        f"  mlp width       {info['intermediate_size']}",
        f"  vocab           {info['vocab_size']}",
        f"  norm            {info['norm']}" + (f" (scale = {info['norm_offset']:g} + w)" if info["norm_offset"] else "")
        + (f", q/k norm: {info['qk_norm']}" if info["qk_norm"] else ""),
        f"  tied embeddings {info['tie_word_embeddings']}",
        f"  dtype           {info['dtype']}  ({', '.join(f'{k}: {v}' for k, v in sorted(info['dtypes'].items()))} tensors)",
        f"  size            {_human_bytes(info['total_bytes'])} in {info['num_tensors']} tensors, {len(info['files'])} file(s)",
        f"  tower           {info['tower'] or '(root)'}" + (f"; other towers: {', '.join(info['other_towers'])}" if info["other_towers"] else ""),
    ]
    kinds = sorted(set(info["layer_types"]))
    if len(kinds) > 1:
        lines.append("  layer types     " + ", ".join(f"{k}: {info['layer_types'].count(k)}" for k in kinds))
    if len(info["layer_groups"]) > 1:
        lines.append(f"  layer groups    {info['layer_groups']} (layers with different shapes)")
    for diff in info["layer_differences"]:
        lines.append(f"  layer {diff['layer']:<3}       head_dim {diff['head_dim']}, {diff['layer_type']}")
    if info.get("rope_interleaved"):
        lines.append("  rotary          interleaved pairs in storage (q/k rows reordered to half-split)")
    for kind in ("unknown", "ignored"):
        keys = info.get(f"{kind}_config_keys", [])
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            lines.append(f"  {kind} config  {shown}")
    return "\n".join(lines)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from spectrax.io.inspect import inspect

    info = inspect(args.path, strict=not args.allow_unknown_config, tower=args.tower)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_inspect(info))
        if args.tensors:
            width = max(len(t["name"]) for t in info["tensors"])
            for t in info["tensors"]:
                print(f"  {t['name']:<{width}}  {t['dtype']:<5} {str(tuple(t['shape'])):<16} {t['file']}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from spectrax.run.analysis import analyze

    if args.path is None:
        print(f"spectrax analyze: no checkpoint given; analyzing the embedded one at {TINY_LLAMA}", file=sys.stderr)
    written = analyze(args.path or str(TINY_LLAMA), args.out, *_configs(args))
    _print_report(written)
    return 0


def _default_out(args: argparse.Namespace) -> None:
    """Fill in `analyze`'s default output folder, so an interruption can name the folder to resume."""
    if args.command == "analyze" and args.out is None:
        # Without a path: the small model spectrax trained itself (a real, non-random checkpoint).
        name = os.path.basename(os.path.normpath(args.path or str(TINY_LLAMA)))
        args.out = os.path.join("spectrax-results", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def _configs(args: argparse.Namespace):
    """The statistics' `Options` and the run's `RunConfig` from the command line (checked here,
    before any checkpoint is opened)."""
    from spectrax.analyses.base import Options
    from spectrax.run.analysis import RunConfig
    from spectrax.run.streaming import parse_layers

    options = Options(num_draws=args.null_draws, seed=args.seed, crop=args.crop, top_k=args.top_k,
                      shuffle_draws=args.shuffle_draws)
    layers = parse_layers(args.layers)
    config = RunConfig(analyses=tuple(a for a in args.analyses.split(",") if a),
                       layers=None if layers is None else tuple(layers), strict=not args.allow_unknown_config,
                       tower=args.tower, disk_budget=args.disk_budget, force=args.force, plots=not args.no_plots)
    return options, config


def _print_report(folder: str) -> None:
    with open(os.path.join(folder, "report.md"), encoding="utf-8") as f:
        print(f.read().rstrip())
    print(f"\nresults in {folder}")


def _cmd_compare(args: argparse.Namespace) -> int:
    from spectrax.run.comparison import compare

    written = compare(args.a, args.b, args.out, *_configs(args))
    _print_report(written)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from spectrax import __version__

    parser = argparse.ArgumentParser(prog="spectrax", description=__doc__)
    parser.add_argument("--version", action="version", version=f"spectrax {__version__}")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not keep compiled programs in ~/.cache/spectrax (also: SPECTRAX_COMPILE_CACHE=0); "
                             "with the cache a second run of the same analysis compiles nothing")
    sub = parser.add_subparsers(dest="command", required=True)

    def checkpoint_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--allow-unknown-config", action="store_true",
                       help="load even if config.json has options spectrax does not know (they are ignored and recorded)")
        p.add_argument("--tower", default=None, help="tensor-name root of the tower to read in a multimodal checkpoint")

    def analysis_options(p: argparse.ArgumentParser, default: str) -> None:
        p.add_argument("--analyses", default=default,
                       help=f"comma-separated, from {', '.join(ANALYSIS_NAMES)} (default {default})")
        p.add_argument("--null-draws", type=int, default=16, help="Monte Carlo draws per Gaussian null (default 16; 0: none, the statistics and their exact nulls only)")
        p.add_argument("--seed", type=int, default=0, help="PRNG seed of the nulls")
        p.add_argument("--layers", default=None, help="layers to analyze, e.g. 0,4-7 (default all)")
        p.add_argument("--crop", type=int, default=None,
                       help="rank, esd: only the top-left CROP x CROP block of each matrix (the source's protocol used 256)")
        p.add_argument("--top-k", type=int, default=16, help="kernel: dimension of each head's kernel subspace (default 16)")
        p.add_argument("--shuffle-draws", type=int, default=4,
                       help="esd: entry-shuffled copies per matrix, each a full SVD (default 4; 0 skips)")
        p.add_argument("--force", action="store_true",
                       help="replace an existing output folder (once the new run has finished) and discard an "
                            "interrupted run with other settings")
        p.add_argument("--no-plots", action="store_true",
                       help="write the tables and the report without drawing figures (seconds sooner)")
        p.add_argument("--disk-budget", default=None, metavar="SIZE",
                       help="Hub repo ids: download weight files to a scratch folder and delete each once no later "
                            "layer needs it, holding at most SIZE (e.g. 20GB) at once; default: download into the "
                            "Hugging Face cache and keep")
        checkpoint_options(p)

    p = sub.add_parser("analyze", help="per-head spectral statistics beside random-matrix nulls: tables, plots, report")
    p.add_argument("path", nargs="?", default=None,
                   help="checkpoint folder, or a Hugging Face Hub repo id ORG/NAME[@REVISION] (an existing local path "
                        "wins); default: the small model embedded in spectrax")
    p.add_argument("--out", default=None, help="new output folder (default: spectrax-results/<name>-<time>); "
                   "rerunning an interrupted run with the same --out and settings resumes it")
    analysis_options(p, ",".join(DEFAULT_ANALYSES))
    p.set_defaults(run=_cmd_analyze)

    p = sub.add_parser("compare", help="two checkpoints of one architecture side by side, differences against null spread")
    p.add_argument("a", help="base checkpoint (folder or Hub repo id ORG/NAME[@REVISION])")
    p.add_argument("b", help="the other checkpoint (e.g. the fine-tuned one)")
    p.add_argument("--out", required=True, help="new output folder")
    analysis_options(p, "laws,rank")
    p.set_defaults(run=_cmd_compare)

    p = sub.add_parser("inspect", help="describe a checkpoint from its headers and config (reads no weights)")
    p.add_argument("path", help="checkpoint directory, .safetensors file, or Hub repo id ORG/NAME[@REVISION] "
                                "(fetches config and headers only)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON (includes every tensor)")
    p.add_argument("--tensors", action="store_true", help="also list every tensor: name, dtype, shape, file")
    checkpoint_options(p)
    p.set_defaults(run=_cmd_inspect)
    return parser


def use_every_core() -> None:
    """`configure_cpu()`: one JAX CPU device per core unless the user chose a device count (what
    `sx.configure_cpu()` does from Python too). Nothing changes when JAX has already started
    (`main` called inside a running program: tests, a notebook).
    """
    from spectrax.backend import configure_cpu

    try:
        configure_cpu()
    except RuntimeError:
        pass


def _kept(args: argparse.Namespace) -> str:
    """What an interrupted run left to resume from, as the end of a one-line message."""
    from spectrax.run.store import count_parts, partial_path

    out = getattr(args, "out", None)
    if out is None or not os.path.isdir(partial_path(out)):
        return "nothing was kept"
    return (f"{count_parts(out)} finished part(s) kept in {partial_path(out)}; "
            f"`spectrax {args.command} ... --out {out}` with the same options resumes")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and --version exit here, before JAX is imported
    _default_out(args)
    use_every_core()
    from spectrax.backend import enable_compilation_cache
    from spectrax.io import CheckpointError

    if not args.no_compile_cache:
        # The C++ side logs a harmless CPU-tuning-flag mismatch at error level on every cache hit.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        enable_compilation_cache()
    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except (CheckpointError, FileExistsError, ValueError) as e:
        print(f"spectrax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spectrax {args.command}: interrupted; {_kept(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `spectrax inspect ... | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a full disk, a read-only folder: not the user's input, but one line all the same
        print(f"spectrax {args.command}: error: {e}; {_kept(args)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
