"""The equal-compute study's jobs, each run in a single-threaded worker process and each resumable:
calibrating the cost of a training step, pretraining FM to its plateau, fine-tuning from it, and
scoring a model. A job writes its result file atomically as its last act, so a killed study redoes
at most the job it was in (and the trainer resumes that job's run from its newest checkpoint).

Compute is measured as CPU seconds of the training process (`time.process_time`) with one thread
per run: on a 2-core CPU two single-thread runs side by side gave 1.21x the images per second of one
two-thread run (docs/study.md), and CPU time, unlike wall-clock, stays honest when the other core is busy.
On a machine with a GPU the runs train there (the trainer picks the device) and the clock is
wall-clock seconds after the GPU has finished its queued work, one run at a time (`clock`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from rfengine import checkpoint, config as config_lib, storage
from rfengine.study.scoring import Scorer

log = logging.getLogger("rfengine")

# The training objectives compared (overrides on top of BASE).
VARIANTS = {
    "fm": ["objective.name=fm"],
    "rf": ["objective.name=reflexflow"],                                    # docs/objectives.md section 3 defaults
    "fc_only": ["objective.name=reflexflow", "objective.adr.weight=0"],     # velocity-space bias
    "fc_input": ["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=input"],
    "direction": ["objective.name=reflexflow", "objective.adr.loss=direction"],
    "prob0.25": ["objective.name=reflexflow", "objective.adr.prob=0.25"],
    # study v3: the strong cheap baselines (docs/objectives.md section 4.1) ...
    "fm_ln": ["objective.name=fm", "objective.time_sampler=logit_normal"],
    "fm_snr": ["objective.name=fm", "objective.weighting=min_snr"],
    "fm_cos": ["objective.name=fm", "objective.cosine_weight=1"],
    # ... and FC's variants (section 4.2), each also run on top of a baseline as "<fc>@<baseline>"
    "fc_input_p0.5": ["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=input",
                      "objective.adr.prob=0.5"],
    "fc_input_p0.25": ["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=input",
                       "objective.adr.prob=0.25"],
    "fc_self": ["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=self"],
    "fc_self_nomask": ["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=self",
                       "objective.fc.mask=none"],
    # study v4: rollouts matched to a sampler (Heun with `infer_steps` steps: the drift of a 2*N-call Heun sampler)
    "fc_input_heun2": ["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=input",
                       "objective.adr.integrator=heun", "objective.adr.infer_steps=2"],
    "fc_input_heun3": ["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=input",
                       "objective.adr.integrator=heun", "objective.adr.infer_steps=3"],
    "fc_input_heun5": ["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=input",
                       "objective.adr.integrator=heun", "objective.adr.infer_steps=5"],
    "rf_heun3": ["objective.name=reflexflow", "objective.adr.integrator=heun", "objective.adr.infer_steps=3"],
}
BASE = ["model.arch=DiT-T/2", "model.class_conditional=false", "data.name=digits", "optim.warmup_steps=50",
        "optim.ema_decay=0.99", "train.log_every=50", "train.progress=false", "train.tensorboard=false",
        "train.sample_every=100000000", "train.batch_size=64", "sample.num_images=10", "sample.steps=20"]


def add_protocol_args(p) -> None:
    """The command-line settings every study shares: the fine-tune budget, the plateau rule of the FM
    pretraining, the scoring, and regime (b)'s tail."""
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ft-fm-steps", type=int, default=1000,
                   help="fine-tune budget: the CPU seconds of this many FM steps, for every variant")
    p.add_argument("--points", type=int, default=2, help="checkpoints scored along each fine-tune")
    p.add_argument("--chunk", type=int, default=1000, help="pretraining: steps between plateau checks")
    p.add_argument("--min-steps", type=int, default=3000)
    p.add_argument("--max-steps", type=int, default=12000)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--tol", type=float, default=0.02)
    p.add_argument("--plateau-samples", type=int, default=1000)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--sample-steps", nargs="+", type=int, default=[5, 10, 20, 50])
    p.add_argument("--tail-fm-steps", type=int, default=2000,
                   help="regime (b): the FM run switches to the variant this many FM steps (in CPU seconds) before its end")


def init_worker(threads: int = 1) -> None:
    """Per worker process: its thread count and quiet logging."""
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")


def on_gpu() -> bool:
    return torch.cuda.is_available()


def clock() -> float:
    """The compute clock: CPU seconds of this process on a CPU machine; on a GPU, wall-clock seconds
    once the device has finished its queued work (the study then runs one job at a time)."""
    if on_gpu():
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


write_json = storage.write_json


def overrides(variant: str) -> list[str]:
    """The config overrides of a variant: a name of VARIANTS, or "<fc>@<baseline>", an FC variant on top
    of a baseline's time sampler and weighting (the FC variant's objective name wins)."""
    table = VARIANTS
    fc, _, base = variant.partition("@")
    unknown = [n for n in (fc, base) if n and n not in table]
    if unknown:
        raise ValueError(f"study variant {variant!r}: unknown {', '.join(unknown)}; known: {', '.join(table)}")
    if not base:
        return list(table[fc])
    return [o for o in table[base] if not o.startswith("objective.name=")] + list(table[fc])


def is_fm(variant: str) -> bool:
    """Whether the variant trains `objective.name=fm` (a baseline; no schedule switch to make)."""
    return "objective.name=fm" in overrides(variant)


def _config(variant: str, seed: int, out: Path, steps: int, extra: list[str]):
    return config_lib.load(None, [*BASE, *overrides(variant), *extra, f"train.seed={seed}", f"train.steps={steps}",
                                  f"train.out_dir={out}"])


# ---------------------------------------------------------------------------------------------
# Calibration: CPU seconds per training step of each variant, measured side by side
# ---------------------------------------------------------------------------------------------

def calibrate(variant: str, lr: float, warm: int = 10, steps: int = 40) -> float:
    """CPU seconds per training step of `variant` (after `warm` steps), through the trainer's own step."""
    import tempfile

    from rfengine.data import batches
    from rfengine.trainer import Trainer
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(variant, 0, Path(tmp), warm + steps, [f"optim.lr={lr}"])
        tr = Trainer(cfg)
        data = batches(tr.dataset, cfg.train.batch_size, rank=0, world=1, seed=0, flip=False, start_batch=0,
                       num_workers=0, device=tr.dist.device)
        for i in range(warm + steps):
            if i == warm:
                t0 = clock()
            tr.train_step(*next(data))
        return (clock() - t0) / steps


# ---------------------------------------------------------------------------------------------
# Training jobs
# ---------------------------------------------------------------------------------------------

def train(variant: str, seed: int, run_dir: Path, steps: int, ckpt_every: int, extra: list[str],
          start: int = 0, branch_from: Path | None = None) -> float | None:
    """Train one run from its checkpoint at `start` (or from scratch, or from another run's checkpoint
    `branch_from` while this run has none) to `steps`; returns the CPU seconds it spent, or None when
    it resumed an interrupted call (a checkpoint past `start`: the seconds before it were not kept)."""
    from rfengine.trainer import Trainer
    cfg = _config(variant, seed, run_dir, steps, [f"train.ckpt_every={ckpt_every}", "train.keep_ckpts=1000", *extra])
    own = checkpoint.list_checkpoints(run_dir / "checkpoints")
    resumed = any(step > start for step, _ in own)
    resume = str(branch_from) if branch_from is not None and not own else "auto"
    t0 = clock()
    if Trainer(cfg, resume=resume).run().get("stopped"):  # SIGTERM: checkpointed; its scores would be stale
        raise RuntimeError(f"{run_dir}: stopped by a signal; run the study again to continue from its checkpoint")
    return None if resumed else clock() - t0


def pretrain(seed: int, run_dir: Path, rule: dict, lr: float, scorer_args: dict) -> dict:
    """FM from scratch in chunks of `rule['chunk']` steps until FD at 20 Euler steps stops improving:
    after each chunk the EMA model is scored (FD@20, `rule['samples']` samples, fixed noise); training
    stops at the first chunk where the best FD of the last `patience` chunks is not `tol` (relative)
    better than the best before them (and at least `min_steps` were trained), or at `max_steps`.
    The model at the stopping chunk is the pretrained model (`pretrained.safetensors`)."""
    state_path = run_dir / "plateau.json"
    fresh = {"rule": rule, "history": [], "cpu_seconds": 0.0}
    state = json.loads(state_path.read_text()) if state_path.is_file() else fresh
    if "stopped_at" not in state and state["history"]:
        last = state["history"][-1]["step"]
        if not checkpoint.checkpoint_path(run_dir / "run" / "checkpoints", last).is_file():
            # a history without its run (another machine: run folders are not committed) starts over
            log.warning("pretrain s%d: no checkpoint at step %d for its history; starting over", seed, last)
            state = fresh
    scorer = Scorer(**scorer_args)
    while "stopped_at" not in state:
        step = (len(state["history"]) + 1) * rule["chunk"]
        spent = train("fm", seed, run_dir / "run", step, rule["chunk"], [f"optim.lr={lr}"], start=step - rule["chunk"])
        state["cpu_seconds"] = None if spent is None or state["cpu_seconds"] is None else state["cpu_seconds"] + spent
        model = load(run_dir / "run" / "ema.safetensors")
        fd = scorer.fd(model, 20, rule["samples"])
        state["history"].append({"step": step, "fd20": fd})
        fds = [h["fd20"] for h in state["history"]]
        p = rule["patience"]
        if step >= rule["max_steps"]:
            state.update(stopped_at=step, reason=f"reached max_steps={rule['max_steps']}")
        elif step >= rule["min_steps"] and len(fds) > p and min(fds[-p:]) > (1 - rule["tol"]) * min(fds[:-p]):
            state.update(stopped_at=step, reason=f"the last {p} chunks did not improve FD@20 by {rule['tol']:.0%} "
                                                 f"on the best before them ({min(fds[:-p]):.2f})")
        log.warning("pretrain s%d: step %d FD@20 %.2f%s", seed, step, fd,
                    f" -> stop ({state['reason']})" if "stopped_at" in state else "")
        if "stopped_at" in state:
            shutil.copyfile(run_dir / "run" / "ema.safetensors", run_dir / "pretrained.safetensors")
        write_json(state_path, state)
    # The chunk checkpoints stay (about 5 MB each, not committed): a scheduled run (FM, then ReflexFlow
    # for the last part of the same run) branches from them with its optimizer state and data position.
    return state


def finetune(variant: str, seed: int, run_dir: Path, init: Path, steps: int, points: int, lr: float,
             scorer_args: dict) -> dict:
    """`variant` from the pretrained weights `init` (step 0, fresh optimizer) for `steps` steps; the
    EMA is scored at `points` evenly spaced checkpoints: FD@20 along the way, the full score at the end."""
    result_path = run_dir / "scores.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    every = steps // points
    cpu = train(variant, seed, run_dir / "run", steps, every, [f"optim.lr={lr}", f"train.init_from={init}",
                                                               "train.init_weights=ema"])
    scorer = Scorer(**scorer_args)
    curve = []
    for step, path in checkpoint.list_checkpoints(run_dir / "run" / "checkpoints"):
        model = load(path)
        if step < steps:
            curve.append({"step": step, "fd20": scorer.fd(model, 20, scorer.samples)})
    meta = json.loads((run_dir / "run" / "summary.json").read_text())
    head = {"variant": variant, "seed": seed, "steps": steps, "cpu_seconds_measured": cpu,
            "wall_seconds": meta["seconds"], "curve": curve}
    result = score_final(run_dir, head, scorer)
    result["curve"].append({"step": steps, "fd20": result["by_steps"]["20"]["fd"]})  # the end of the curve
    write_json(result_path, result)
    return result


def score_final(run_dir: Path, head: dict, scorer: "Scorer") -> dict:
    """`head` and the full score of the run's final EMA; the run's step checkpoints are deleted (the
    caller writes the result)."""
    result = {**head, **scorer.full(load(run_dir / "run" / "ema.safetensors"))}
    for ckpt in (run_dir / "run" / "checkpoints").glob("step_*.pt"):
        ckpt.unlink()
    return result


def finetune_results(out: Path, regime: str = "finetune") -> dict:
    """(variant, seed) -> scores of every finished run of a regime under the study folder `out`: a sub-folder
    name, `finetune` or `scheduled` (v2's committed folders also hold `scratch` and `controls`)."""
    results = {}
    for f in sorted((out / regime).glob("*/scores.json")):
        r = json.loads(f.read_text())
        results[(r["variant"], r["seed"])] = r
    return results


def score_file(path: Path, scorer_args: dict, out: Path) -> dict:
    """The full score of the model in `path` (cached in `out`)."""
    if out.is_file():
        return json.loads(out.read_text())
    result = Scorer(**scorer_args).full(load(path))
    write_json(out, result)
    return result


def load(path: Path):
    from rfengine.weights import load_model
    model, _, _, _ = load_model(path, "ema")
    return model


def cpu_info() -> dict:
    """What the seconds were measured on."""
    name = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = on_gpu()
    return {"cpu": name, "cores": os.cpu_count(), "torch": torch.__version__, "threads_per_run": 1,
            "device": torch.cuda.get_device_name(0) if gpu else "cpu",
            "clock": "wall-clock seconds, one run at a time" if gpu else "CPU seconds of the process"}
