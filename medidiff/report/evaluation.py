"""The report's evaluation section: ``medidiff evaluate`` outputs as tables and figures, or
label-based curves when no evaluation exists."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .context import RunContext, read_json
from .entries import ScanEntry
from .wording import stamp

EVAL_DIR = "evaluation"
_SKIP_METRICS = {"definitions", "options", "scans", "run", "labels", "masks_dir", "missing", "failed", "evaluated",
                 "model_hash", "config_hash", "splits_note"}


def _metric_value(v: Any, ci: Any = None) -> str:
    text = f"{v:.3f}" if isinstance(v, float) else str(v)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def metric_tables(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """metrics.json as titled tables of (name, value [95 % CI]) rows: one per section,
    nested sections flattened with ' › ', lists summarised by their length."""
    tables = []
    top = [(k, v) for k, v in metrics.items() if not isinstance(v, dict) and k not in _SKIP_METRICS]
    sections = [("overview", dict(top))] + [(k, v) for k, v in metrics.items()
                                              if isinstance(v, dict) and k not in _SKIP_METRICS]
    for title, sec in sections:
        rows: list[tuple[str, str]] = []

        def walk(d: dict[str, Any], prefix: str) -> None:
            for k, v in d.items():
                if k.endswith("_ci95"):
                    continue
                name = f"{prefix}{k}".replace("_", " ")
                if isinstance(v, dict):
                    walk(v, f"{prefix}{k} › ")
                elif isinstance(v, list):
                    if v and all(isinstance(x, (int, float, str)) for x in v) and len(v) <= 8:
                        rows.append((name, ", ".join(_metric_value(x) for x in v)))
                    else:
                        rows.append((name, f"{len(v)} entries (see metrics.json)"))
                elif v is not None:
                    rows.append((name, _metric_value(v, d.get(f"{k}_ci95"))))

        walk(sec, "")
        if rows:
            tables.append({"title": title.replace("_", " "), "rows": rows})
    return tables


def evaluation_section(ctx: RunContext, dest: Path, entries: list[ScanEntry]) -> dict[str, Any]:
    """`medidiff evaluate` outputs rendered as tables and figures; label-based curves only
    when no evaluation exists (one set of curves, never two)."""
    ev: dict[str, Any] = {"images": [], "tables": [], "note": None, "labels": None}
    src = ctx.out / EVAL_DIR
    metrics_path = src / "metrics.json"
    if src.is_dir():
        for png in sorted(src.glob("*.png")):
            (dest / "evaluation").mkdir(parents=True, exist_ok=True)
            shutil.copy2(png, dest / "evaluation" / png.name)
            ev["images"].append({"src": f"evaluation/{quote(png.name)}", "name": png.stem.replace("_", " ")})
        if metrics_path.is_file():
            metrics = read_json(metrics_path)
            if metrics:
                ev["tables"] = metric_tables(metrics)
                ev["evaluated"] = stamp(metrics.get("evaluated"))
            else:
                ev["note"] = "evaluation/metrics.json is unreadable: re-run `medidiff evaluate`"
    if ctx.labels is not None:
        pairs = [(e.label, e.score) for e in entries if e.label is not None and e.score is not None]
        info: dict[str, Any] = {"n_labelled": len(pairs), "n_unlabelled": sum(e.label is None for e in entries)}
        ys = [p[0] for p in pairs]
        if pairs and 0 < sum(ys) < len(ys):
            from .render import curves

            info.update(curves(dest / "assets", ys, [p[1] for p in pairs]))
            if not ev["images"]:
                info["images"] = [{"src": "assets/roc.png", "name": "ROC (labels)"},
                                  {"src": "assets/pr.png", "name": "precision–recall (labels)"}]
        else:
            info["note"] = "curves need scored scans of both classes"
        ev["labels"] = info
    ev["present"] = bool(ev["images"] or ev["tables"] or ev["note"] or ev["labels"])
    return ev
