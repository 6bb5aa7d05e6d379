"""The recorded subject split of the real cohort (configs/real_cohort_split.csv)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from pipeline_scripts import load_pipeline

ROOT = Path(__file__).resolve().parents[2]
SPLIT = ROOT / "configs" / "real_cohort_split.csv"
COHORT = ROOT.parent / "shared" / "cohort"

split = load_pipeline("real_split")


def test_no_subject_in_two_roles_and_roles_are_known():
    rows = split.read_split(SPLIT)
    roles = {}
    for r in rows:
        assert r["role"] in {"train", "calib", "val", "test", "cross_scanner"}
        roles.setdefault(r["subject"], set()).add(r["role"])
    assert all(len(v) == 1 for v in roles.values())
    assert len({r["path"] for r in rows}) == len(rows)  # one file, one row


def test_sizes_support_the_5_percent_scan_threshold_and_other_scanners_are_never_fitted():
    rows = split.read_split(SPLIT)
    by_role = {}
    for r in rows:
        by_role.setdefault(r["role"], []).append(r)
    assert len(by_role["calib"]) >= 20  # a 5 % scan threshold needs at least 20 healthy scans
    one_site = {r["site"] for role in ("train", "calib", "val") for r in by_role[role]}
    assert len(one_site) == 1  # everything fitted or tuned on comes from the one IXI site
    assert all(r["site"] not in one_site for r in by_role["cross_scanner"])


def test_read_split_refuses_a_subject_in_two_roles(tmp_path):
    rows = list(csv.DictReader(open(SPLIT, newline="")))
    bad = dict(rows[0], role="test" if rows[0]["role"] != "test" else "train", path="other.nii.gz")
    out = tmp_path / "split.csv"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([*rows, bad])
    with pytest.raises(ValueError, match="two roles"):
        split.read_split(out)


def test_real_heads_in_sample_data_are_test_heads():
    test_files = {Path(r["path"]).name for r in split.read_split(SPLIT) if r["role"] in ("test", "cross_scanner")}
    shipped = sorted((ROOT / "sample_data" / "real").glob("*/*.nii.gz"))
    assert shipped, "sample_data/real should hold real test heads"
    assert {p.name for p in shipped} <= test_files
    for p in shipped:
        assert any(p.parent.glob("LICENSE-*")), f"{p}: licence text must sit beside the scan"


@pytest.mark.skipif(not (COHORT / "participants.tsv").is_file(), reason="the real cohort is not beside the repo")
def test_split_is_reproducible_from_the_cohort(tmp_path):
    out = tmp_path / "split.csv"
    split.main(["--cohort", str(COHORT), "--out", str(out)])
    assert out.read_text() == SPLIT.read_text()
