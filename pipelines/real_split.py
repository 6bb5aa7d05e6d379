"""The subject split of the real healthy cohort (``configs/real_cohort_split.csv``): write it, read it,
turn roles into a training/benchmark manifest.

    python pipelines/real_split.py --cohort DIR        # (re)write the split (deterministic)

One row per scan, one role per subject:

* ``train`` (12): the diffusion models and the baselines are fitted on these;
* ``calib`` (20): healthy thresholds (20 is the fewest that place a 5 % scan threshold);
* ``val`` (4): settings searches, with lesions inserted into copies of these heads;
* ``test`` (4 + IXI012): read once, by the final benchmark run;
* ``cross_scanner`` (other sites and vendors): never fitted on, reported on their own.

The 40 one-site scans are sorted by age and dealt in blocks of ten (3 train, 5 calib, 1 val,
1 test, shuffled within the block by a fixed seed), so every role spans the cohort's ages.
Paths are relative to the cohort folder (``--cohort``) or, for ``real:`` rows, to the folder of
real whole-head scans (``--real-scans``); the benchmark and training scripts take both folders.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "configs" / "real_cohort_split.csv"
BLOCK = ["train"] * 3 + ["calib"] * 5 + ["val", "test"]
COLUMNS = ["subject", "role", "source", "path", "age", "sex", "site", "scanner", "licence"]
# other sites and vendors: a cross-scanner test that nothing is fitted on (the IXI one is the same
# site as the cohort, so it joins the test role)
REAL_SCANS = [
    ("IXI012", "test", "ixi012_philips3t_t1.nii.gz", "39", "", "IXI, Hammersmith Hospital London",
     "Philips 3T", "CC BY-SA 3.0"),
    ("philips-mprage-volunteer", "cross_scanner", "philips_t1_mprage_sag", "", "", "Rorden DICOM validation set",
     "Philips Ingenia Elition X 3T", "BSD-2-Clause"),
    ("siemens-2d-volunteer", "cross_scanner", "siemens_t1_2d_sag_hfs", "", "", "Rorden DICOM validation set",
     "Siemens 3T (2D, 4.8 mm slices)", "BSD-2-Clause"),
]


def split_rows(participants: Path, seed: int = 23) -> list[dict[str, str]]:
    with open(participants, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    rng = np.random.default_rng(seed)
    one_site = sorted((r for r in rows if r["age"]), key=lambda r: (float(r["age"]), r["subject"]))
    out = []
    for start in range(0, len(one_site), len(BLOCK)):
        block = one_site[start:start + len(BLOCK)]
        roles = [str(x) for x in rng.permutation(BLOCK)][:len(block)]
        out += [_row(r, role, "cohort") for r, role in zip(block, roles)]
    out += [_row(r, "cross_scanner", "cohort") for r in rows if not r["age"]]
    for subject, role, path, age, sex, site, scanner, lic in REAL_SCANS:
        out.append(dict(subject=subject, role=role, source="real", path=path, age=age, sex=sex, site=site,
                        scanner=scanner, licence=lic))
    return sorted(out, key=lambda r: (r["role"], r["subject"]))


def _row(r: dict[str, str], role: str, source: str) -> dict[str, str]:
    return dict(subject=r["subject"], role=role, source=source, path=r["file"], age=r["age"], sex=r["sex"],
                site=r["site"], scanner=r["scanner"], licence=r["licence"])


def read_split(path: Path = OUT) -> list[dict[str, str]]:
    """Rows of the split file; refuses a subject that holds two roles."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    roles: dict[str, str] = {}
    for r in rows:
        if roles.setdefault(r["subject"], r["role"]) != r["role"]:
            raise ValueError(f"{path}: subject {r['subject']} is in two roles ({roles[r['subject']]}, {r['role']})")
    return rows


def scan_paths(rows: list[dict[str, str]], roles: list[str], cohort: Path, real_scans: Path | None) -> list[dict]:
    """Absolute paths of the rows in ``roles`` (``real`` rows need ``real_scans``)."""
    out = []
    for r in rows:
        if r["role"] not in roles:
            continue
        base = cohort if r["source"] == "cohort" else real_scans
        if base is None:
            continue
        p = Path(base) / r["path"]
        if not p.exists():
            raise FileNotFoundError(f"{p}: listed in the split but not found (check --cohort / --real-scans)")
        out.append(dict(r, abspath=str(p.resolve())))
    return out


def write_manifest(out: Path, cohort: Path, real_scans: Path | None, role_to_split: dict[str, str],
                   extra_rows: list[dict[str, str]] = (), split_csv: Path = OUT) -> Path:
    """A training manifest (``path,split,label``) for ``medidiff.train``: split roles renamed by
    ``role_to_split`` (e.g. ``{"train": "train", "val": "val"}``), plus ``extra_rows``."""
    rows = scan_paths(read_split(split_csv), list(role_to_split), cohort, real_scans)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["scan_id", "path", "split", "label"])
        w.writeheader()
        for r in rows:
            w.writerow(dict(scan_id=r["subject"], path=r["abspath"], split=role_to_split[r["role"]], label=0))
        for r in extra_rows:
            w.writerow(r)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cohort", type=Path, required=True, help="folder with participants.tsv")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    rows = split_rows(args.cohort / "participants.tsv")
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    counts = {}
    for r in rows:
        counts[str(r["role"])] = counts.get(str(r["role"]), 0) + 1
    print(f"{args.out}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
