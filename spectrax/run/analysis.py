"""`spectrax analyze`: run analyses on a checkpoint and write tables, plots and a report to a folder.

Folder layout (files appear for the analyses run):

    heads.csv, heads.json     one row per (layer, query head): laws and kernel statistics
    layers.csv                per-layer means over heads (and pseudo-bulk medians) with null columns
    groups.csv                layer-group means (four equal blocks of layers, as the source)
    precision.csv             the "third law" depth limits per floating format (laws; decoders)
    matrices.csv, .json       one row per weight matrix: rank and esd statistics
    kernel_similarity.csv     layer x layer Grassmann similarity of QK-kernel subspaces
    summary.json, report.md   model-level values and a readable report
    plots/*.png
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable

from spectrax.analyses.aggregate import NUM_GROUPS, group_means, layer_groups, layer_table
from spectrax.analyses.base import Analysis, Options, Tables
from spectrax.analyses.registry import DEFAULT as DEFAULT_ANALYSES
from spectrax.analyses.registry import resolve
from spectrax.analyses.weights import skipped_table
from spectrax.io.load import Source, open_source
from spectrax.io.hub import parse_size
from spectrax.report import sections
from spectrax.report.tables import write_csv, write_json
from spectrax.run.streaming import collect
from spectrax.run.store import RunFolder, checkpoint_fingerprint, run_folder

__all__ = ["RunConfig", "analyze", "configs", "headline_statistics", "report_resume", "run_summary", "source_fingerprint",
           "write_results"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What a run reads and how, beside the statistics' `Options`.

    Attributes:
      analyses: names (`laws`, `rank`, `kernel`, `esd`, `charge`) or `Analysis` values; stored resolved
        (default `registry.DEFAULT`: all but `charge`).
      layers: layer numbers to analyze (default all), stored sorted and unique.
      strict: refuse config.json options spectrax does not know (`--allow-unknown-config` clears it).
      tower: tensor-name root of the tower to read in a multimodal checkpoint.
      disk_budget: for a Hub repo id, the most disk its downloads take at once (bytes or `"20GB"`).
      force: replace an existing output folder and discard an interrupted run with other settings.
      progress: show progress bars and resume notes.
      plots: draw the figures into `plots/` (`--no-plots` skips them: the tables and the report, with
        every number, come a few seconds sooner; drawing is most of a warm run on a small model).

    Checked on construction; a bad value is one `ValueError` naming the command-line option.
    """

    analyses: tuple[str | Analysis, ...] = DEFAULT_ANALYSES
    layers: tuple[int, ...] | None = None
    strict: bool = True
    tower: str | None = None
    disk_budget: int | str | None = None
    force: bool = False
    progress: bool = True
    plots: bool = True

    def __post_init__(self):
        if isinstance(self.analyses, str):
            raise ValueError(f"analyses (--analyses) must be a list of names, got {self.analyses!r}")
        object.__setattr__(self, "analyses", resolve(self.analyses))
        if self.layers is not None:
            layers = list(self.layers)
            if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
                raise ValueError(f"layers (--layers) must be layer numbers >= 0, got {layers!r}")
            object.__setattr__(self, "layers", tuple(sorted(set(layers))))
        if self.disk_budget is not None:
            parse_size(self.disk_budget)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.analyses]


def configs(options: Options | None, config: RunConfig | None, fields: dict,
            default: RunConfig = RunConfig()) -> tuple[Options, RunConfig]:
    """`options` and `config` (or the defaults) with `fields` (keyword arguments named as either's
    attributes) replaced; `TypeError` naming an unknown one."""
    own = {f.name for f in dataclasses.fields(Options)}, {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(fields) - own[0] - own[1])
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}; options: {sorted(own[0])}, run: {sorted(own[1])}")
    if "layers" in fields and fields["layers"] is not None:
        fields = {**fields, "layers": tuple(fields["layers"])}
    if "analyses" in fields:
        fields = {**fields, "analyses": tuple(fields["analyses"]) if not isinstance(fields["analyses"], str)
                  else fields["analyses"]}
    options = dataclasses.replace(options or Options(), **{k: v for k, v in fields.items() if k in own[0]})
    config = dataclasses.replace(config or default, **{k: v for k, v in fields.items() if k in own[1]})
    return options, config


def analyze(path: str | os.PathLike, out: str | os.PathLike, options: Options | None = None,
            config: RunConfig | None = None, **fields) -> str:
    """Analyze the checkpoint at `path` into the folder `out`; returns `out`'s absolute path.

    `options` (`Options`: null draws, seed, crop, top_k, shuffle_draws) set the numbers, `config`
    (`RunConfig`: analyses, layers, tower, disk budget, force, ...) the run; keyword arguments
    named as an attribute of either replace it (`analyze(path, out, analyses=["laws"],
    num_draws=32)`).

    `path` may be a Hub repo id `ORG/NAME[@REVISION]`; with `disk_budget` (bytes or e.g. `"20GB"`)
    its weight files are downloaded shard by shard and deleted once no later layer needs them.

    The run works in `.<out>.partial` beside `out`, storing each finished layer; if it is
    interrupted, the same call resumes from the layers already done. `out` appears only when
    everything is written. An existing `out` is refused unless `force`, which replaces it (and
    discards an interrupted run with other settings) once the new run has finished.

    Args:
      path: a checkpoint folder, GGUF file or Hub repo id.
      out: the folder to write (tables, `summary.json`, `report.md`, `plots/`).
      options: `Options` (default `Options()`).
      config: `RunConfig` (default `RunConfig()`).
      **fields: fields of `Options` or `RunConfig` to replace.

    Returns:
      The absolute path of `out`.

    Raises:
      ValueError: a bad option, or an existing `out` without `force`.
      CheckpointError: an unreadable or unsupported checkpoint.

    Examples:
        >>> import os, tempfile
        >>> import spectrax as sx
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     out = sx.analyze(sx.data.TINY_LLAMA, os.path.join(tmp, "tiny"), analyses=["laws"], layers=[0],
        ...                      num_draws=4, progress=False)
        ...     print(all(os.path.isfile(os.path.join(out, f)) for f in ("report.md", "heads.csv", "summary.json")))
        True
    """
    options, config = configs(options, config, fields)
    source = open_source(path, strict=config.strict, tower=config.tower, disk_budget=config.disk_budget)
    chosen = list(range(source.spec.num_layers)) if config.layers is None else list(config.layers)
    settings = {
        "checkpoint": source.path, "files": source_fingerprint(source), "tower": config.tower,
        "analyses": config.names, "layers": chosen, **dataclasses.asdict(options),
    }
    started = time.time()
    with run_folder(out, settings=settings, checkpoints=[source.path], force=config.force) as folder:
        report_resume(folder, config.progress)
        tables = collect(source, analyses=config.analyses, layers=chosen, options=options, folder=folder,
                         progress=config.progress)
        summary = run_summary(source, config, chosen, options, folder)
        if tables.matrices is not None and options.crop is None:
            skipped = skipped_table(source, tables.matrices)
            write_csv(skipped, os.path.join(folder.path, "skipped.csv"))
            summary["skipped_matrices"] = len(skipped["matrix"])
        write_results(tables, folder.path, summary, analyses=config.analyses, spec=source.spec, options=options,
                      plots=config.plots)
        summary["seconds"] = round(time.time() - started, 2)
        with open(os.path.join(folder.path, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    return folder.out


def run_summary(source: Source, config: RunConfig, layers: list[int], options: Options, folder: RunFolder) -> dict:
    """The run-level part of `summary.json`: what was analyzed, how, and what was resumed."""
    return {"checkpoint": source.path, "spec": source.spec.to_dict(), "analyses": config.names,
            "layers": layers, "options": dataclasses.asdict(options), "resumed_parts": len(folder.resumed),
            "hub": source.hub.describe() if source.hub is not None else None}


def source_fingerprint(source: Source) -> list:
    """What identifies the checkpoint's contents: a Hub commit sha (files come and go under a disk
    budget), else each file's name, size and modification time."""
    if source.hub is not None:
        return [source.hub.repo_id, source.hub.sha]
    return checkpoint_fingerprint(source.files.files)


def report_resume(folder: RunFolder, progress: bool) -> None:
    """Say what an interrupted run left that this one reuses, and which damaged parts it redoes."""
    if progress and folder.resumed:
        print(f"resuming {os.path.dirname(folder.path)}: {len(folder.resumed)} parts already done")
    for name in folder.discarded:
        print(f"spectrax: discarded damaged part {name} of the interrupted run; it is recomputed", file=sys.stderr)


def headline_statistics(analyses: Iterable[Analysis], heads) -> tuple[list[str], list[str]]:
    """The headline statistics (and those whose spread over heads is reported) of `analyses`
    present in the per-head table."""
    analyses = list(analyses)
    stats = [s for a in analyses for s in a.headline if s in heads]
    spread = [s for a in analyses for s in a.spread if s in heads]
    return stats, spread


def write_results(tables: Tables, folder: str, summary: dict, *, analyses: Iterable[Analysis], spec,
                  options: Options, plots: bool = True) -> None:
    """Write every table, plot (unless not `plots`) and `report.md` of `tables` into `folder`; adds
    each analysis's summary (and the spectrum figures drawn) to `summary`, the content of
    `summary.json`."""
    analyses = sorted(resolve(analyses), key=lambda a: a.table != "heads")  # the per-head sections first
    plots_dir = os.path.join(folder, "plots") if plots else None
    if plots_dir is not None:
        os.makedirs(plots_dir, exist_ok=True)
    text = [sections.header(summary, plots=plots)]
    for name in ("heads", "matrices"):
        table = getattr(tables, name)
        if table is not None:
            write_csv(table, os.path.join(folder, f"{name}.csv"))
            write_json(table, os.path.join(folder, f"{name}.json"))
    if tables.heads is not None:
        stats, spread = headline_statistics(analyses, tables.heads)
        per_layer = layer_table(tables.heads, stats, spread)
        write_csv(per_layer, os.path.join(folder, "layers.csv"))
        write_csv(group_means(per_layer, stats, layer_groups(per_layer["layer"], NUM_GROUPS)),
                  os.path.join(folder, "groups.csv"))
    spectra, appendix = [], []
    for a in analyses:
        found = a.summarize(tables, spec, options)
        summary[a.name] = found.to_json()
        section = a.render(found)
        text.append(sections.write_section(section, folder, plots_dir))
        spectra += section.spectra if plots else ()
        appendix += [section.appendix] if section.appendix else []
    if appendix:
        text.append("\n".join(["## Appendix", "", *appendix]))
    summary["spectra_plots"] = [s.to_json() for s in sorted(spectra, key=lambda s: s.layer)]
    text.append(sections.files(sorted(os.listdir(folder)), sorted(os.listdir(plots_dir)) if plots else []))
    with open(os.path.join(folder, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(text))
