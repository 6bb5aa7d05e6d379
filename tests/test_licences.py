"""medidiff is Apache-2.0: its default install must pull no GPL-only package.

Walks medidiff's `Requires-Dist` without extras (as `pip install medidiff` resolves it), then each
installed dependency's own unconditional requirements, recursively, and reads each distribution's
licence from its metadata: the SPDX `License-Expression` when there is one, else the `License ::`
trove classifiers, else the free-text `License` field. A package is GPL-only when every licence it
offers is strong copyleft (GPL or AGPL without a linking exception); LGPL, MPL and permissive
licences pass, and so does a dual licence with a permissive alternative. Optional extras
(`[jpeg-12bit]` holds the GPL-3.0 pylibjpeg-libjpeg) are outside this check by design."""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

_STRONG = re.compile(r"\bA?GPL|GNU (AFFERO )?GENERAL PUBLIC LICEN[CS]E", re.IGNORECASE)
_EXCEPTION = re.compile(r"exception", re.IGNORECASE)


def _copyleft_only(term: str) -> bool:
    """One licence (no OR inside): strong copyleft without a linking exception."""
    return bool(_STRONG.search(term)) and not _EXCEPTION.search(term)


def gpl_only(expression: str | None = None, classifiers: list[str] | None = None,
             license_text: str | None = None) -> bool:
    """True when every licence offered is GPL/AGPL (a proprietary option is not an alternative)."""
    if expression and expression.strip():
        alternatives = re.split(r"\s+OR\s+", expression.replace("(", " ").replace(")", " ").strip())
        return all(any(_copyleft_only(t) for t in re.split(r"\s+AND\s+", alt)) for alt in alternatives)
    licences = [c.split("::")[-1].strip() for c in classifiers or [] if c.startswith("License ::")]
    licences = [c for c in licences if c not in ("OSI Approved", "Other/Proprietary License")]
    if licences:
        return all(_copyleft_only(c) for c in licences)
    text = (license_text or "").strip()
    return bool(text) and _copyleft_only(text.splitlines()[0])


def _licence(dist: md.Distribution) -> tuple[str | None, list[str], str | None]:
    m = dist.metadata
    return m.get("License-Expression"), m.get_all("Classifier") or [], m.get("License")


def default_requirements(root: str = "medidiff") -> dict[str, md.Distribution | None]:
    """Every distribution `pip install root` pulls on this platform (None: required, not installed)."""
    env = default_environment()
    found: dict[str, md.Distribution | None] = {}
    todo = [root]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            found[name] = None
            continue
        found[name] = dist
        for line in dist.metadata.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                todo.append(req.name)
    return found


def test_gpl_only_rule():
    assert gpl_only(license_text="GPL V3.0")
    assert gpl_only(classifiers=["License :: OSI Approved :: GNU General Public License v3 (GPLv3)",
                                 "License :: Other/Proprietary License"])  # pylibjpeg-libjpeg
    assert gpl_only(expression="GPL-3.0-or-later")
    assert gpl_only(expression="AGPL-3.0-only")
    assert gpl_only(expression="MIT AND GPL-2.0-only")
    assert not gpl_only(expression="GPL-2.0-only OR MIT")
    assert not gpl_only(expression="LGPL-3.0-or-later")
    assert not gpl_only(expression="GPL-3.0-or-later WITH GCC-exception-3.1")
    assert not gpl_only(expression="Apache-2.0 AND BSD-3-Clause")
    assert not gpl_only(classifiers=["License :: OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)"])
    assert not gpl_only(classifiers=["License :: OSI Approved :: BSD License"],
                        license_text="GNU GENERAL PUBLIC LICENSE (bundled libgfortran)")
    assert not gpl_only(license_text="BSD 3-Clause License\n... GPL-licensed test data not shipped")
    assert not gpl_only()


def test_default_install_pulls_no_gpl_only_package():
    try:
        md.distribution("medidiff")
    except md.PackageNotFoundError:
        pytest.skip("medidiff is not installed (pip install -e .): no metadata to walk")
    deps = default_requirements()
    missing = sorted(k for k, d in deps.items() if d is None)
    assert not missing, f"required but not installed (reinstall: pip install -e .): {missing}"
    offenders = [f"{d.metadata['Name']} {d.version}: {_licence(d)[0] or _licence(d)[2] or _licence(d)[1]}"
                 for d in deps.values() if d is not None and gpl_only(*_licence(d))]
    assert not offenders, "GPL-only packages in the default install: " + "; ".join(offenders)
    assert len(deps) > 20  # the walk really went through torch, monai, pydicom, ...


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_installed_metadata_matches_pyproject():
    """The walk above reads the installed metadata: it must be the one pyproject.toml declares."""
    import tomllib

    try:
        dist = md.distribution("medidiff")
    except md.PackageNotFoundError:
        pytest.skip("medidiff is not installed (pip install -e .)")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    installed = {canonicalize_name(Requirement(r).name) for r in dist.metadata.get_all("Requires-Dist") or []
                 if Requirement(r).marker is None}
    assert declared == installed, "installed medidiff metadata is stale: re-run pip install -e '.[test]'"
    assert project["license"] == "Apache-2.0" and (ROOT / "LICENSE").is_file()


def test_licence_files_and_model_cards():
    """LICENSE and NOTICE ship; every bundled model folder states its licence and is in NOTICE."""
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    notice = (ROOT / "NOTICE").read_text()
    cards = sorted((ROOT / "models").glob("*/MODEL_CARD.md"))
    assert cards
    for card in cards:
        text = card.read_text()
        section = re.search(r"^## Licence\n(.+?)(?=^#|\Z)", text, re.MULTILINE | re.DOTALL)
        assert section and re.search(r"Apache-2\.0|CC BY", section.group(1)), f"{card}: no licence section"
        assert f"models/{card.parent.name}/" in notice, f"models/{card.parent.name}/ is not listed in NOTICE"
    bundled = sorted(p.relative_to(ROOT).as_posix() for folder in ("medidiff", "sample_data", "models")
                     for p in (ROOT / folder).rglob("LICENSE*"))
    assert "medidiff/frontend/data/LICENSE-MNI152.txt" in bundled
    for licence_file in bundled:  # every bundled third-party licence file is named in NOTICE
        assert licence_file in notice, f"{licence_file} is not listed in NOTICE"
