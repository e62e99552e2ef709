"""The README's and docs' relative links resolve (files moved or retired leave no dead link)."""
import re

import pytest

from tests.helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    text = doc.read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    missing = []
    for t in targets:
        if t.startswith(("http://", "https://", "#", "mailto:")):
            continue
        path = (doc.parent / t.split("#")[0]).resolve()
        if not path.exists():
            missing.append(t)
    assert not missing, f"{doc.name}: dead links {missing}"
    assert "rfengine.study.v1" not in text, "study v1's code is retired; name its commit instead"
