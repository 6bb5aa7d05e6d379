"""Every measured number that README.md, BENCHMARKS.md and the model cards quote, kept once.

``docs/numbers.json`` holds each number once: its value, unit, format, what it is, the split it was
measured (or chosen) on, and its source: a field of a committed JSON (e.g. a model's method.json), a
field of a benchmark JSON under ``--benchmark-out`` (``scale`` converts units, e.g. seconds to hours),
or a note saying how it was measured by hand.
The pages quote a number as a marked span, which this script rewrites from the file:

    <!--n:brain_t1_4mm.val.voxel_ap-->0.569<!--/n-->       the entry's own format
    <!--n:brain_t1_4mm.val.voxel_ap:.2f-->0.57<!--/n-->    the same number, another precision

    python pipelines/render_numbers.py                               # refresh from committed JSONs, render
    python pipelines/render_numbers.py --benchmark-out benchmark_out # also refresh from benchmark JSONs
    python pipelines/render_numbers.py --check                       # list stale spans/entries, exit 1 if any

A new number: add its entry to docs/numbers.json (value, format, unit, what, measured_on, source),
mark it in the page, run the script. tests/test_numbers.py fails when a span or an entry is stale.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = ROOT / "docs" / "numbers.json"
SPAN = re.compile(r"<!--n:([\w.\-]+)(?::([^>]*?))?-->(.*?)<!--/n-->")
FIXED = re.compile(r"^(,?)\.(\d+)f$")  # ".3f", ",.0f"
_TOKEN = re.compile(r"([^.\[\]]+)|\[([^\]]*)\]")


def pages(root: Path = ROOT) -> list[Path]:
    """The pages whose numbers come from docs/numbers.json."""
    return [root / "README.md", root / "BENCHMARKS.md", *sorted((root / "models").glob("*/MODEL_CARD.md")),
            *sorted((root / "docs").glob("*.md"))]


def load_numbers(path: Path = NUMBERS) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text())["numbers"]


def format_value(value: Any, fmt: str) -> str:
    """``value`` as the pages write it. Fixed-point formats round half up from the value as written in
    the JSON (0.01455 -> 0.0146), the way a person rounds a table's number for a sentence."""
    m = FIXED.match(fmt)
    if m:
        q = Decimal(repr(value)).quantize(Decimal(1).scaleb(-int(m.group(2))), rounding=ROUND_HALF_UP)
        text = f"{q:,f}" if m.group(1) else f"{q:f}"
    elif fmt in ("d", ",d"):
        text = format(int(value), fmt)
    elif fmt == "s":
        return str(value)
    else:
        raise ValueError(f"unknown number format {fmt!r} (use .Nf, ,.Nf, d, ,d or s)")
    return "\u2212" + text[1:] if text.startswith("-") else text  # the pages' minus sign, as typeset


def field(doc: Any, path: str) -> Any:
    """``doc`` at a dotted path; ``[k=v,...]`` picks the list item whose fields match, ``[i]`` an index."""
    for name, selector in _TOKEN.findall(path):
        if name:
            doc = doc[name]
        elif "=" not in selector:
            doc = doc[int(selector)]
        else:
            want = dict(part.split("=", 1) for part in selector.split(","))
            hits = [item for item in doc if all(_same(item.get(k), v) for k, v in want.items())]
            if len(hits) != 1:
                raise KeyError(f"{path}: [{selector}] matches {len(hits)} items, not one")
            doc = hits[0]
    return doc


def _same(actual: Any, wanted: str) -> bool:
    if isinstance(actual, (int, float)) and not isinstance(actual, bool):
        try:
            return float(wanted) == float(actual)
        except ValueError:
            return False
    return str(actual if actual is not None else "") == wanted


def source_value(entry: dict[str, Any], root: Path, benchmark_out: Path | None) -> tuple[bool, Any]:
    """(found, value) from the entry's source; found is False for hand-measured numbers and for
    benchmark JSONs that are not at hand."""
    src = entry["source"]
    if "file" in src:
        path = root / src["file"]
    elif "benchmark" in src and benchmark_out is not None:
        path = benchmark_out / src["benchmark"]
        if not path.is_file():
            return False, None
    else:
        return False, None
    value = field(json.loads(path.read_text()), src["field"])
    return True, value * src["scale"] if "scale" in src else value


def refresh(numbers: dict[str, dict[str, Any]], root: Path = ROOT,
            benchmark_out: Path | None = None) -> list[str]:
    """Update the values whose source can be read; returns the keys that changed."""
    changed = []
    for key, entry in numbers.items():
        found, value = source_value(entry, root, benchmark_out)
        if found and value != entry["value"]:
            entry["value"] = value
            changed.append(key)
    return changed


def render_text(text: str, numbers: dict[str, dict[str, Any]]) -> str:
    def one(m: re.Match) -> str:
        key, fmt = m.group(1), m.group(2)
        if key not in numbers:
            raise KeyError(f"marked number {key!r} is not in docs/numbers.json")
        text = format_value(numbers[key]["value"], fmt or numbers[key]["format"])
        return f"<!--n:{key}{':' + fmt if fmt else ''}-->{text}<!--/n-->"
    return SPAN.sub(one, text)


def stale(numbers: dict[str, dict[str, Any]], root: Path = ROOT) -> list[str]:
    """Everything out of step: spans whose text differs from the file, unknown keys, entries whose
    committed source holds another value, and entries no page quotes."""
    problems, used = [], set()
    for page in pages(root):
        text = page.read_text()
        for m in SPAN.finditer(text):
            key, fmt, written = m.groups()
            used.add(key)
            if key not in numbers:
                problems.append(f"{page.relative_to(root)}: {key!r} is not in docs/numbers.json")
                continue
            want = format_value(numbers[key]["value"], fmt or numbers[key]["format"])
            if written != want:
                problems.append(f"{page.relative_to(root)}: {key} reads {written!r}, docs/numbers.json gives {want!r}")
    for key, entry in numbers.items():
        found, value = source_value(entry, root, None)
        if found and value != entry["value"]:
            problems.append(f"docs/numbers.json: {key} is {entry['value']!r}, its source {entry['source']['file']} "
                            f"holds {value!r}")
        if key not in used:
            problems.append(f"docs/numbers.json: {key} is quoted by no page")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark-out", type=Path, default=None,
                    help="folder of benchmark outputs (e.g. benchmark_out): refresh the entries taken from them")
    ap.add_argument("--check", action="store_true", help="write nothing; list what is stale and exit 1 if anything is")
    a = ap.parse_args(argv)
    doc = json.loads(NUMBERS.read_text())
    numbers = doc["numbers"]
    if a.check:
        problems = stale(numbers)
        print("\n".join(problems) or "numbers: up to date")
        return 1 if problems else 0
    changed = refresh(numbers, ROOT, a.benchmark_out)
    if changed:
        NUMBERS.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print("refreshed: " + ", ".join(changed))
    for page in pages():
        text = page.read_text()
        new = render_text(text, numbers)
        if new != text:
            page.write_text(new)
            print(f"rendered {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
