"""The main benchmark: detection on real anatomy, on the recorded subject split of the real healthy cohort.

    python pipelines/benchmark_real_anatomy.py --cohort COHORT --real-scans REAL_SCANS \\
        --split configs/real_cohort_split.csv --model models/brain_t1_2mm --out OUT \\
        [--copies 3] [--seed 0] [--other-json SAMPLE_OUT/benchmark.json] [--bench-md BENCHMARKS.md] \\
        [any pipelines/benchmark.py option, e.g. --quick --limit 2 --baselines normative]

1. ``pipelines/stage_real_cohort.py`` stages the split into OUT/stage/data (labels.csv layout with a
   ``subject`` column): train / calib heads as they are; val, test and cross-scanner heads once untouched
   and ``--copies`` times with lesions of every kind inserted into their brain tissue on their own grid.
2. ``pipelines/benchmark.py`` runs on it (OUT/bench): settings searched on val (lesions in val heads),
   thresholds from the healthy calib heads, baselines fitted on the train heads with the same
   post-processing, test and the other-scanner split (``cross``) scored once; their ground truth is read
   in the final step only. CIs are bootstrapped by subject, lesion-wise detection comes with its chance
   level, the verdict names the best baseline of each table, and the cross heads' flag rate is reported
   with the calib calibration and with a leave-one-out site calibration.
3. OUT/real_anatomy.json holds the staging record and the benchmark's results; BENCHMARKS.md (when
   ``--bench-md`` is given) is generated from it as the main table, with ``--other-json`` (a sample_data
   run of benchmark.py) as the secondary table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from medidiff.io.atomic import write_text_atomic  # noqa: E402


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", required=True, type=Path, help="the real cohort folder")
    p.add_argument("--real-scans", type=Path, default=None, help="the folder of the split's 'real' rows")
    p.add_argument("--split", type=Path, default=ROOT / "configs" / "real_cohort_split.csv")
    p.add_argument("--model", type=Path, default=ROOT / "models" / "brain_t1_2mm")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--copies", type=int, default=3, help="lesioned copies per val/test/cross head")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-subjects", default=None,
                   help="stage at most this many subjects per role (smoke runs): N or ROLE=N,... "
                        "(see stage_real_cohort.py)")
    p.add_argument("--roles", default=None, help="roles of the split file to stage (default: all)")
    p.add_argument("--bench-md", default="none", help="write BENCHMARKS.md here (default: not written)")
    p.add_argument("--other-json", default=None, help="the secondary (sample_data) table's benchmark.json")
    p.add_argument("--reuse", action="store_true", help="keep staged subjects and finished runs in --out")
    return p.parse_known_args(argv)


def main(argv=None, log: Callable[[str], None] = print) -> dict[str, Any]:
    import benchmark
    import benchmark_markdown
    import stage_real_cohort

    from medidiff.runtime import set_threads

    a, bench_args = parse_args(argv)
    set_threads()
    command = "python pipelines/benchmark_real_anatomy.py " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    log("staging the real cohort")
    roles = tuple(a.roles.split(",")) if a.roles else tuple(stage_real_cohort.ROLE_TO_SPLIT)
    labels = stage_real_cohort.stage(a.cohort, a.real_scans, a.split, a.out / "stage", a.model, copies=a.copies,
                                     seed=a.seed, roles=roles, limit_subjects=stage_real_cohort.parse_limit(a.limit_subjects),
                                     reuse=a.reuse, log=log)
    staging = json.loads((labels.parent / "staging.json").read_text())
    args = ["--model", str(a.model), "--data", str(labels.parent), "--out", str(a.out / "bench"),
            "--bench-md", "none"]
    if a.reuse:
        args.append("--reuse")
    if any(s["split"] == "cross" for s in staging["subjects"].values()):
        args += ["--site-calibration", "cross"]
    result = benchmark.main(args + bench_args, log=log)
    real = {"kind": "real_anatomy", "command": command, "staging": {k: staging.get(k) for k in (
        "params", "split_csv", "model", "cohort", "real_scans", "left_out", "counts", "limit_subjects")},
        "benchmark": result}
    write_text_atomic(a.out / "real_anatomy.json", json.dumps(real, indent=2))
    log(f"written: {a.out / 'real_anatomy.json'}")
    if a.bench_md and a.bench_md.lower() != "none":
        other = json.loads(Path(a.other_json).read_text()) if a.other_json else None
        benchmark_markdown.write_benchmarks_md(Path(a.bench_md), real, other)
        log(f"written: {a.bench_md} (main table: this run; secondary: {a.other_json or 'none'})")
    return real


if __name__ == "__main__":
    main()
