"""The README and docs stand on their own: every relative link resolves (files moved or retired leave no
dead link), no text cites a file users do not have, each doc opens with what it is for, and the README
stays short and keeps the test command CI runs."""
import re

import pytest

from tests.helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "results" / "README.md",
        *sorted((ROOT / "results").glob("*/README.md"))]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
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
    for retired in ("rfengine.study.v1", "rfengine.study.v2"):
        assert retired not in text, f"{retired}'s code is retired; name its commit instead"


@pytest.mark.parametrize("path", DOCS + CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_text_cites_a_file_users_do_not_have(path):
    """The math is in docs/objectives.md; nothing points at notes outside the repository."""
    text = path.read_text()
    for outside in (r"\bSPEC\b", r"shared notes"):
        assert not re.search(outside, text), f"{path.name} cites {outside}: point at docs/objectives.md instead"


@pytest.mark.parametrize("doc", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_each_doc_opens_with_what_it_is_for(doc):
    """A title, then a paragraph of prose (not a table, list, code or quote) before the first section."""
    lines = doc.read_text().splitlines()
    assert lines[0].startswith("# "), f"{doc.name}: no title"
    first = next(line for line in lines[1:] if line.strip())
    assert not first.startswith(("#", "|", "-", "*", "`", ">", "!")), f"{doc.name}: opens with {first!r}"


def test_readme_is_short_and_runs_the_ci_test_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in readme, f"the README no longer shows CI's test command {ci!r}"
