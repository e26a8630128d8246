"""The docs stand alone: every relative link and picture in README.md and docs/ points at a file of
the repository, and no doc names a path outside it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target)
OUTSIDE = re.compile(r"(?<![\w.])(\.\./shared|/work/|\.\./\.library)|\bDESIGN(\.md| §)")


def test_every_relative_link_resolves_inside_the_repository():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text(encoding="utf-8")):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor of the same page
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.exists() or ROOT not in path.parents:
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_no_doc_names_a_path_outside_the_repository():
    found = [
        f"{doc.relative_to(ROOT)}: {m.group(0)}"
        for doc in DOCS
        for m in OUTSIDE.finditer(doc.read_text(encoding="utf-8"))
    ]
    assert not found, found
