"""The ImageNet rehearsal (scripts/rehearse_imagenet.py) end to end, the FID stage failing when its reference is
wrong, and docs/walkthrough.md's commands being the rehearsal's at full size."""
import contextlib
import importlib.util
import io
import json
import re
import shlex

import numpy as np
import pytest

from rfengine import evaluate
from tests.helpers import ROOT

pytest.importorskip("diffusers", reason="the optional [latents] extra (diffusers) is not installed")
_spec = importlib.util.spec_from_file_location("rehearse_imagenet", ROOT / "scripts" / "rehearse_imagenet.py")
rehearsal = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rehearsal)


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory):
    """The script's command line as a user gives it (run in this process: every stage is a process of its own
    anyway); its work folder."""
    w = tmp_path_factory.mktemp("rehearsal") / "work"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = rehearsal.main(["--work", str(w)])
    assert code == 0, out.getvalue()[-3000:] + err.getvalue()[-3000:]
    assert "rehearsal passed" in out.getvalue()
    return w


def _fd(w, ref, out, sha):
    args = ["fd", str(w / "runs" / "imagenet256_dit" / "eval" / rehearsal.SAMPLE_FILE), "--ref", str(ref),
            "--weights", str(w / "standin-inception.pth"), "--weights-sha256", sha, "--device", "cpu", "--out", str(out)]
    assert evaluate.main(args) == 0
    return json.loads(out.read_text())


def test_the_rehearsal_passes_and_its_fid_follows_the_references_mu(rehearsed, tmp_path):
    """Each stage checked its artifact (the script's checks); here the FID stage's reference is made wrong: its mu
    shifted by d moves the FID by |d|^2 - 2 d.(mu_samples - mu_ref), and since the means' term of FID is at most the
    whole FID, that is within 2 |d| sqrt(FID) of |d|^2: far from 0 for a large d (the sample side is the same), so
    the score comes from the file's mu; and a reference without mu/sigma fails the stage's check."""
    w = rehearsed
    samples = w / "runs" / "imagenet256_dit" / "eval" / rehearsal.SAMPLE_FILE
    base = json.loads(samples.with_name(samples.stem + "_fd_inception.json").read_text())
    sha = base["features"]["sha256"]
    with np.load(w / "imagenet64_ref.npz") as f:
        ref = dict(f)
    size = 10 * np.sqrt(base["fid"]) + 1  # |d|: the bound below is at most a fifth of |d|^2
    d = size / np.sqrt(2048) * np.sign(np.random.default_rng(0).standard_normal(2048))
    np.savez(tmp_path / "shifted.npz", **{**ref, "mu": ref["mu"] + d})
    moved = _fd(w, tmp_path / "shifted.npz", tmp_path / "shifted.json", sha)["fid"] - base["fid"]
    assert abs(moved - d @ d) <= 2 * size * np.sqrt(base["fid"]) + 1e-6 * (d @ d), (moved, d @ d)

    np.savez(tmp_path / "no_stats.npz", arr_0=ref["arr_0"])  # the reference file without its statistics
    res = _fd(w, tmp_path / "no_stats.npz", tmp_path / "no_stats.json", sha)
    assert res["sampling"]["method"] == "sde"  # the sample file's settings, as the stage's own result has them
    with pytest.raises(rehearsal.StageError, match="did not use the reference file's mu/sigma"):
        rehearsal.check_score(res, sha)


def _entry_points(commands: list[str]) -> dict[str, tuple[set, set]]:
    """rfengine entry point ('rfengine.sample', 'rfengine/train.py', 'rfengine.evaluate fd', ...) -> (the launcher's
    options, the entry point's options), over shell command lines (torchrun or python, srun allowed in front)."""
    found: dict[str, tuple[set, set]] = {}
    for line in commands:
        tokens = shlex.split(line, comments=True)
        head = next((i for i, t in enumerate(tokens) if t in ("torchrun", "python")), None)
        if head is None:
            continue
        launcher, i = set(), head + 1
        while tokens[i].startswith("-") and tokens[i] != "-m":
            launcher.add(tokens[i].split("=")[0])
            i += 1
        entry = tokens[i + 1] if tokens[i] == "-m" else tokens[i]
        i += 2 if tokens[i] == "-m" else 1
        if entry == "rfengine.evaluate":
            entry, i = f"{entry} {tokens[i]}", i + 1
        if "rfengine" not in entry:
            continue
        seen = found.setdefault(entry, (set(), set()))
        seen[0].update(launcher)
        seen[1].update(t.split("=")[0] for t in tokens[i:] if t.startswith("--"))
    return found


def _walkthrough_commands() -> list[str]:
    text = (ROOT / "docs" / "walkthrough.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [c for b in blocks for c in b.replace("\\\n", " ").splitlines() if c.strip()]


def test_the_walkthroughs_commands_are_the_rehearsals_at_full_size(tmp_path):
    """The same rfengine entry points; each with the same options, but for those the rehearsal names as its own
    (shrinking, stand-ins, JSON); the rehearsal's torchrun options are the walkthrough's one-node ones."""
    walk = _entry_points(_walkthrough_commands())
    rehearsed = _entry_points([shlex.join(c) for c in rehearsal.commands(tmp_path).values()])
    assert sorted(walk) == sorted(rehearsed) == sorted(rehearsal.REHEARSAL_ONLY)
    for entry, (launcher, options) in rehearsed.items():
        assert launcher <= walk[entry][0], f"{entry}: torchrun options {launcher - walk[entry][0]} not in the walkthrough"
        assert options - rehearsal.REHEARSAL_ONLY[entry] == walk[entry][1], \
            f"{entry}: rehearsal {sorted(options - rehearsal.REHEARSAL_ONLY[entry])}, walkthrough {sorted(walk[entry][1])}"
        assert rehearsal.REHEARSAL_ONLY[entry] <= options, f"{entry}: REHEARSAL_ONLY names options it does not pass"
