"""`write_section` writes what an analysis's `Section` describes: its tables as CSV, its figures
and spectra as PNG files under plots/, and hands back its Markdown."""

import csv

import numpy as np
import pytest

from spectrax.analyses.base import Plot, Section, Spectrum
from spectrax.report import plots, sections


def test_write_section_writes_tables_figures_and_spectra(tmp_path):
    (tmp_path / "plots").mkdir()
    heads = {"layer": np.repeat(np.arange(3), 2), "head": np.tile(np.arange(2), 3),
             "x_z": np.array([0.0, 1.0, -2.0, 5.0, np.nan, 0.5])}
    rng = np.random.default_rng(0)
    s = np.linalg.svd(rng.standard_normal((8, 32)), compute_uv=False)
    section = Section("## X\n", tables={"x.csv": {"a": np.array([1.5, np.nan])}},
                      plots=(Plot("head_heatmap", "heatmap_x_z", (heads, "x_z"), {"title": "x"}),),
                      spectra=(Spectrum(2, "attn.q", 1, "largest", s, (8, 32)),))
    assert sections.write_section(section, tmp_path, tmp_path / "plots") == "## X\n"
    with open(tmp_path / "x.csv", newline="") as f:
        assert list(csv.reader(f)) == [["a"], ["1.5"], [""]]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["heatmap_x_z.png", "spectrum_L2_attn.q_h1.png"]
    assert section.spectra[0].to_json() == {"layer": 2, "matrix": "attn.q", "head": 1, "why": "largest",
                                            "file": "plots/spectrum_L2_attn.q_h1.png"}
    # Without a plots folder (`--no-plots`): the same tables and text, no figure drawn.
    (tmp_path / "x.csv").unlink()
    assert sections.write_section(section, tmp_path, None) == "## X\n" and (tmp_path / "x.csv").is_file()
    assert len(list((tmp_path / "plots").iterdir())) == 2


def test_draw_refuses_a_kind_it_does_not_know(tmp_path):
    with pytest.raises(KeyError):
        plots.draw(Plot("pie_chart", "p", ()), tmp_path)
