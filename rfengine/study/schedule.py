"""Regime (b), scheduled: an FM pretraining run switched to another objective for its last part, and the
chunk checkpoints it branches from. Run folders are not committed, so on a new machine a seed's chunk
checkpoints are re-created by training its FM run again (`recreate`). A re-creation on another machine is
not always bit-identical (study v3's seeds 10-14: FD@20 at the branch step 0.3% to 4.5% off the recorded
history, `results/digits_v3/pretrain/s*/recreated.json`), so
the branch point carries an identity (`identity`: the step, the SHA-256 of its EMA weights, its FD@20),
every branch records the identity it started from, and a comparison pairs only branches from the same
checkpoint (`same_start`)."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from rfengine import checkpoint
from rfengine.study.runs import is_fm, load, score_final, train, write_json
from rfengine.study.scoring import Scorer

log = logging.getLogger("rfengine")
# How far a re-created run's FD@20 may be from the original's before the re-creation is taken for a broken
# one (another learning rate, data order or seed) rather than a machine's floating-point difference.
SANITY = 0.10


def weights_sha256(path: Path) -> str:
    """SHA-256 of the EMA weights in the checkpoint `path` (names and values in name order): equal for the
    same weights whatever the file's container bytes."""
    h = hashlib.sha256()
    for name, t in sorted(load(path).state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def identity(pre: Path, step: int) -> dict:
    """The identity of seed folder `pre`'s chunk checkpoint at `step` on this machine: step, weights hash
    and, where recreated.json recorded it at that step, its FD@20."""
    ckpt = checkpoint.checkpoint_path(pre / "run" / "checkpoints", step)
    rec = pre / "recreated.json"
    done = json.loads(rec.read_text()) if rec.is_file() else {}
    fd = done.get("fd20_recreated") if done.get("steps") == step else None
    return {"step": step, "sha256": weights_sha256(ckpt), "fd20": fd}


def same_start(a: dict, b: dict) -> bool:
    """Whether two branches started from the same checkpoint (both recorded it, and identically)."""
    return a.get("branch_from") is not None and a.get("branch_from") == b.get("branch_from")


def recreate(seed: int, pre: Path, rule: dict, lr: float, scorer_args: dict, tail: int | None = None) -> dict:
    """The chunk checkpoints of seed `seed`'s FM pretraining run, made again on this machine: the same run,
    chunk by chunk, keeping every chunk checkpoint for the regime (b) branches, and checked
    (`recreated.json`, with `miss`, the relative FD@20 difference; beyond `SANITY` the job stops with
    both numbers). With `tail` (a pretraining scored by this study's classifier), only to the branch step
    `tail` steps before its end, whose EMA is checked against the FD@20 `plateau.json` recorded then.
    Without it (a history scored by another study's classifier), to where the run stopped, compared with the
    committed `pretrained.safetensors` weight for weight and by FD@20. `branch_from` is the identity of
    the branch step's checkpoint that the branches must record."""
    result_path = pre / "recreated.json"
    plateau = json.loads((pre / "plateau.json").read_text())
    end = plateau["stopped_at"]
    upto = end - (tail or 0)
    steps = range(rule["chunk"], upto + 1, rule["chunk"])
    chunks = [checkpoint.checkpoint_path(pre / "run" / "checkpoints", s) for s in steps]
    if tail is not None and upto not in steps:
        raise ValueError(f"recreate s{seed}: the branch step {upto} is not a chunk checkpoint (chunk {rule['chunk']})")
    if result_path.is_file() and all(c.is_file() for c in chunks):
        done = json.loads(result_path.read_text())
        if done["steps"] >= upto and "branch_from" in done:
            return done
    # a committed recreated.json without its chunk checkpoints (another machine): made again and checked again
    for step, path in zip(steps, chunks):
        if not path.is_file():
            train("fm", seed, pre / "run", step, rule["chunk"], [f"optim.lr={lr}"], start=step - rule["chunk"])
    scorer = Scorer(**scorer_args)
    fd_made = scorer.fd(load(chunks[-1]), 20, rule["samples"])
    result = {"seed": seed, "steps": upto, "samples": rule["samples"], "fd20_recreated": fd_made}
    if tail is not None:
        fd_then = {h["step"]: h["fd20"] for h in plateau["history"]}[upto]
        result.update(checked_against="plateau.json's FD@20 at the branch step", fd20_original=fd_then,
                      identical_fd=fd_made == fd_then)
    else:
        from safetensors.torch import load_file
        made, committed = load_file(pre / "run" / "ema.safetensors"), load_file(pre / "pretrained.safetensors")
        diff = max(float((made[k].float() - committed[k].float()).abs().max()) for k in committed)
        fd_then = scorer.fd(load(pre / "pretrained.safetensors"), 20, rule["samples"])
        result.update(checked_against="the committed pretrained.safetensors", fd20_original=fd_then,
                      identical=diff == 0.0, max_abs_weight_diff=diff)
    result["miss"] = fd_made / fd_then - 1
    if abs(result["miss"]) > SANITY:
        raise RuntimeError(f"recreate s{seed}: the re-created FM run does not score as the original at step {upto} "
                           f"(FD@20 {fd_made:.3f} vs {fd_then:.3f}, beyond the {SANITY:.0%} sanity bound)")
    write_json(result_path, result)  # the branch identity reads fd20_recreated from it
    result["branch_from"] = identity(pre, end - tail) if tail is not None else None
    write_json(result_path, result)
    return result


def branch(variant: str, seed: int, run_dir: Path, pre: Path, tail: int, steps: int, lr: float,
           scorer_args: dict) -> dict:
    """Regime (b), scheduled: seed `seed`'s FM pretraining run, switched to `variant` for its last
    part. From the run's chunk checkpoint `tail` FM steps before it stopped (its optimizer state and
    data position), `steps` steps of `variant` (`objective.start` at the branch: the same seconds as
    the `tail` FM steps). The EMA is scored; `branch_from` records the checkpoint's identity. A finished
    branch is kept unless this machine holds that checkpoint with other weights (a re-creation that came
    out differently), when it is run again from the checkpoint here."""
    result_path = run_dir / "scores.json"
    end = json.loads((pre / "plateau.json").read_text())["stopped_at"]
    at = end - tail
    ckpt = checkpoint.checkpoint_path(pre / "run" / "checkpoints", at)
    if result_path.is_file():
        done = json.loads(result_path.read_text())
        made_from = (done.get("branch_from") or {"sha256": None}) if "branch_from" in done else None
        if made_from is None or not ckpt.is_file() or made_from["sha256"] == weights_sha256(ckpt):
            return done  # (a branch from before identities were recorded is kept as it is)
        log.warning("scheduled %s s%d: started from other weights than step %d here; run again", variant, seed, at)
        result_path.unlink()
        for old in (run_dir / "run" / "checkpoints").glob("step_*.pt"):
            old.unlink()
    if not ckpt.is_file():
        raise FileNotFoundError(f"scheduled {variant} s{seed}: no FM checkpoint at step {at} ({ckpt}); the "
                                "pretraining's chunk checkpoints are kept on the machine that ran it")
    start = identity(pre, at)
    switch = [] if is_fm(variant) else [f"objective.start={at}"]  # an FM baseline's tail has no switch to make
    cpu = train(variant, seed, run_dir / "run", at + steps, steps, [f"optim.lr={lr}", *switch],
                start=at, branch_from=ckpt)
    result = score_final(run_dir, {"regime": "scheduled", "variant": variant, "seed": seed, "branch_step": at,
                                   "end_step": end, "steps": steps, "fm_steps": tail, "cpu_seconds_measured": cpu,
                                   "branch_from": start}, Scorer(**scorer_args))
    write_json(result_path, result)
    return result

