"""The repository's text speaks of the project, not of how it was made: no numbered work periods, issue or
pull-request numbers, borrowed machines or the tools that lend them, or minutes of machine time, in any
tracked text file (code, docs, configs, scripts, results). A reader has the repository, not its history:
name a date or a commit instead."""
import re
import subprocess

import pytest

from tests.helpers import ROOT

# Each pattern names one kind of process word; ordinary prose ("a pytest session", "the issue is",
# "# 1. step") must pass.
PATTERNS = {
    "a numbered work period": r"\bsessions?\s*(?:#|no\.?\s*)?\(?\d+",
    "a work period as a time": r"\b(?:this|that|previous|next|last|one|another|cut-off) session(?:'s)?\b"
                               r"|\b(?:between|across|over|spans) (?:\w+ )?sessions\b|\bsession by session\b",
    "an issue or pull-request number": r"\b(?:issues?|PRs?|pull requests?)\s*#?\d+|(?<![\w&#/$])#\d{1,4}\b",
    "a lent or borrowed machine": r"\blent\b|\bborrowed (?:GPU|machine|device|card)s?\b",
    "the tool that lends machines": r"\bdevice tool\b|\bfarm-studio\b",
    "minutes of machine time": r"\b(?:device|machine|GPU)[- ]minutes?\b|\bminutes of (?:machine|device|GPU) time\b",
    "the people who made it": r"\bthe lead\b",
}
RX = {what: re.compile(p, re.IGNORECASE) for what, p in PATTERNS.items()}


def offending(text: str) -> list[str]:
    """`line N: <kind>: <match>` for every process word in `text`."""
    return [f"line {text.count(chr(10), 0, m.start()) + 1}: {what}: {m.group(0)!r}"
            for what, rx in RX.items() for m in rx.finditer(text)]


def tracked_text_files():
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout: {e}")
    for name in names.decode().split("\0"):
        path = ROOT / name
        if not name or name == "tests/test_process_words.py" or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary: weights, images
            continue
        yield name, data.decode("utf-8", errors="replace")


def test_no_process_words_in_tracked_text():
    bad = [f"{name}: {o}" for name, text in tracked_text_files() for o in offending(text)]
    assert not bad, "process words (name a date or a commit instead):\n" + "\n".join(bad)


@pytest.mark.parametrize("planted", [
    "made in session 9", "across three sessions (4-6)", "seed 10's pair, from this session's machine",
    "fixed in issue 18", "see #21", "PR 7 moved it", "one call on a lent GPU", "the device tool brings back",
    "15 device-minutes a session", "the lead merges it",
])
def test_each_kind_is_caught(planted):
    assert offending(f"ok line\n{planted}\n"), planted


@pytest.mark.parametrize("prose", [
    "a session-scoped pytest fixture runs the study once per test session",
    "the issue is that the rollout drifts", "# 1. the step", "f\"{v}#{r}\" names a repeat",
    "colour #1f77b4", "the sessions of a TensorBoard run", "shell: $#1 arguments", "step 3 of 10 (#steps)",
])
def test_ordinary_prose_passes(prose):
    assert offending(prose) == []


def test_a_planted_file_fails_the_scan(tmp_path, monkeypatch):
    """The scan itself reads tracked files: a file committed with a process word fails it."""
    import tests.test_process_words as mod
    planted = tmp_path / "repo"
    planted.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=planted, check=True)
    (planted / "notes.md").write_text("Measured in session 12 on 2026-12-01.\n")
    (planted / "clean.md").write_text("Measured on 2026-12-01 at commit abc1234.\n")
    subprocess.run(["git", "add", "notes.md", "clean.md"], cwd=planted, check=True)
    monkeypatch.setattr(mod, "ROOT", planted)
    with pytest.raises(AssertionError, match=r"notes.md: line 1: a numbered work period: 'session 12'"):
        mod.test_no_process_words_in_tracked_text()
    (planted / "notes.md").write_text("Measured on 2026-12-01 at commit abc1234.\n")
    mod.test_no_process_words_in_tracked_text()
