"""Measured numbers are written once (docs/numbers.json) and quoted, never retyped.

Every marked span in README.md, BENCHMARKS.md, the model cards and docs/ must read what
docs/numbers.json gives; entries taken from committed JSONs (method.json, calibration.json,
model.json) must hold what those files hold now; and every measured-looking number in the README
must be a marked span. Fix a failure with `python pipelines/render_numbers.py` (docs/benchmarks.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pipeline_scripts import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
rn = load_pipeline("render_numbers")

# A number followed by a unit of measurement, or any decimal number: what a reader takes as measured.
UNIT = r"(?:ms|s|min|h|%|kB|MB|GB|MiB|GiB|ml|mm³|cm³|mm|dB|steps?/s|scans?/s)(?![\w/])"
MEASURED = re.compile(rf"(?<![\w.\-])\d[\d,]*(?:\.\d+)?\s?{UNIT}|(?<![\w.\-])\d+\.\d+(?![\w.])")
# Numbers in the README that are design values, requirements or names, not measurements, each with why.
# Spaces in them match any whitespace, a line break included.
NOT_MEASURED = {
    r"Python ≥ 3\.10": "a requirement",
    r"\b[24] mm\b": "the two models' grid spacings (configs/brain_t1_*.yaml)",
    r"4\.8 mm slices": "the Siemens export's slice thickness, from its DICOM header",
    r"0\.1 % voxel FPR|5 % scan FPR": "calibration targets (settings)",
    r"95 % (?:CIs|intervals)": "the confidence level of the intervals",
    r"(?:CC BY-SA |Apache-|GPL-)\d\.\d": "licence names",
}
IGNORED = [
    re.compile(r"```.*?```", re.S),          # commands and file listings
    re.compile(r"`[^`\n]*`"),                # inline code: options, paths, settings
    re.compile(r"\]\([^)]*\)"),              # link targets
    re.compile(r"\b\d{4}-\d{2}-\d{2}\b"),    # dates
    re.compile(r"\b\d+\.\d+\.\d+\b"),        # versions
]


def _unmarked_measured_numbers(text: str) -> list[str]:
    text = rn.SPAN.sub("⟨n⟩", text)
    for pattern in [*IGNORED, *(re.compile(p.replace(" ", r"\s+")) for p in NOT_MEASURED)]:
        text = pattern.sub(" ", text)
    return [m.group(0) for m in MEASURED.finditer(text)]


def test_every_marked_number_reads_its_source():
    assert rn.stale(rn.load_numbers()) == []


def test_the_pages_quote_numbers_at_all():
    """Guards the span pattern itself: a change that stopped matching would pass the test above vacuously."""
    quoted = {page.name for page in rn.pages() if rn.SPAN.search(page.read_text())}
    assert {"README.md", "BENCHMARKS.md", "MODEL_CARD.md"} <= quoted


def test_every_entry_says_what_it_is_and_where_it_comes_from():
    for key, entry in rn.load_numbers().items():
        assert {"value", "format", "unit", "what", "measured_on", "source"} <= entry.keys(), key
        src = entry["source"]
        assert ("file" in src or "benchmark" in src) == ("field" in src) and ("note" in src or "field" in src), key
        rn.format_value(entry["value"], entry["format"])


def test_readme_measured_numbers_are_all_marked():
    stray = _unmarked_measured_numbers((ROOT / "README.md").read_text())
    assert stray == [], (f"unmarked measured numbers in README.md: {stray}; add them to docs/numbers.json and mark "
                         "them <!--n:KEY-->...<!--/n--> (or, for a setting, to NOT_MEASURED here with the reason)")


@pytest.mark.parametrize("text, found", [
    ("about 21 s per scan", ["21 s"]), ("AP 0.57 and 12 %", ["0.57", "12 %"]), ("8.5 MB", ["8.5 MB"]),
    ("the 4 mm model", []), ("Python ≥ 3.10, torch 2.13.0", []), ("`--set score.steps=1` 0.1 % voxel FPR", []),
    ("<!--n:k-->0.569<!--/n--> (2026-12-04)", []), ("12 IXI heads, ages 53–74", []),
])
def test_the_readme_check_finds_measurements_and_skips_the_rest(text, found):
    assert _unmarked_measured_numbers(text) == found


def test_rendering_rewrites_a_stale_span_and_refresh_follows_a_committed_source(tmp_path):
    numbers = {"m.ap": {"value": 0.5690002, "format": ".3f", "unit": "AP", "what": "x", "measured_on": "val",
                        "source": {"file": "method.json", "field": "provenance.rows[t=0.1,variant=].ap"}}}
    (tmp_path / "method.json").write_text('{"provenance": {"rows": [{"t": 0.1, "variant": null, "ap": 0.6123},'
                                          ' {"t": 0.1, "variant": "ssim", "ap": 0.4}]}}')
    assert rn.refresh(numbers, tmp_path) == ["m.ap"] and numbers["m.ap"]["value"] == 0.6123
    text = "AP <!--n:m.ap-->0.569<!--/n-->, rounded <!--n:m.ap:.2f-->0.57<!--/n-->"
    assert rn.render_text(text, numbers) == "AP <!--n:m.ap-->0.612<!--/n-->, rounded <!--n:m.ap:.2f-->0.61<!--/n-->"
    with pytest.raises(KeyError):
        rn.render_text("<!--n:missing-->1<!--/n-->", numbers)


def test_fixed_point_rounds_half_up_from_the_written_value():
    assert rn.format_value(0.01455, ".4f") == "0.0146" and rn.format_value(0.01445, ".4f") == "0.0145"
    assert rn.format_value(1234.5, ",.0f") == "1,235" and rn.format_value(1200, ",d") == "1,200"
