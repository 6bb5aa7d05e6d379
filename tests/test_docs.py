"""The README stays short and leads with the limits; links in README.md and docs/ resolve.

Links into another Markdown file with a `#fragment` must name an existing heading (GitHub's
anchor rule). Links whose text is `BENCHMARKS: <section>` point at BENCHMARKS.md without a
fragment (its headings carry long commands) and must name the start of one of its headings,
so a renamed benchmark section shows up here instead of as a dead reference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _headings(md: Path) -> list[str]:
    out, fenced = [], False
    for line in md.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            out.append(line.lstrip("#").strip())
    return out


def _anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_readme_is_short_and_leads_with_the_limits():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    sections = [h for h in _headings(ROOT / "README.md") if not h.startswith("medidiff")]
    assert sections[0] == "What it cannot do yet"
    assert "<!-- STATUS" in text and "<!-- /STATUS -->" in text


def test_readme_test_command_is_the_ci_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash pipelines/run_tests.sh" in ci
    assert "bash pipelines/run_tests.sh" in (ROOT / "README.md").read_text()
    assert "bash pipelines/run_sample.sh" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(page):
    bench = _headings(ROOT / "BENCHMARKS.md")
    bad = []
    for text, target, image in LINK.findall(page.read_text()):
        target = target or image
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
            continue
        if fragment and dest.suffix == ".md" and fragment not in {_anchor(h) for h in _headings(dest)}:
            bad.append(f"{target}: no heading with that anchor")
        if text.startswith("BENCHMARKS: "):
            section = text[len("BENCHMARKS: "):]
            if not any(h.startswith(section) for h in bench):
                bad.append(f"[{text}]: BENCHMARKS.md has no section starting '{section}'")
    assert not bad, f"{page.name}: " + "; ".join(bad)
