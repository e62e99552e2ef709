"""The ImageNet path rehearsed end to end on a CPU in about a minute: an image folder -> latents -> a plan ->
FSDP training stopped by SIGTERM and continued by the same command -> samples through the VAE -> FID, sFID,
IS and precision/recall against an ADM-format reference file. Read it as the recipe: every stage runs the
command of docs/walkthrough.md with the same entry point and options, made small (fewer images, GPUs, steps
and samples; `REHEARSAL_ONLY` names the options that exist only to shrink it, to point at a stand-in or to read
a result as JSON).

What cannot be had offline is replaced by a stand-in with the real interface:
- ImageNet: a few classes of small random JPEGs in ILSVRC's layout, train/<synset>/<synset>_<n>.JPEG;
- stabilityai/sd-vae-ft-ema: a diffusers AutoencoderKL of the same structure with random weights, in a local
  folder named like the real one;
- the FID Inception's weights file: the same network and file format with random weights, passed with its own
  SHA-256 (the published file's hash is the default; the stand-in is refused without it).
Its numbers therefore mean nothing; what it proves is that the stages fit together and each one leaves the
artifact the next one needs. Each stage checks that artifact, not only the exit code, and stops the script
with one line naming what is wrong. The plan (it reads only the config) and the reference file (it needs only
the images) are made in the background while the latents are extracted and the model trains.

    python scripts/rehearse_imagenet.py [--work DIR]      # DIR defaults to a fresh temporary folder
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rfengine (and the suite's stand-in VAE), wherever it is run from
SYNSETS = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark
PER_CLASS = 4
SIZE = 64           # pixels: 8x8x4 latents through the VAE's 8x downsampling (ImageNet-256: 32x32x4)
STEPS = 8           # training steps; the recipe switches to FC at 88% (step 7), so both phases run
STOP_AFTER = 2      # SIGTERM once the metrics show this step (six steps before the end: slack on a busy machine)
SAMPLES = 4         # precision/recall's k = 3 needs 4 a side
SAMPLE_FILE = f"samples_ema_step{STEPS}_sde4_cfg1.5_ch3_sigma1_lastmean0.04_n{SAMPLES}_seed0.npz"
# The options a stage passes only because the rehearsal is small, uses a stand-in or reads a result as JSON (per
# entry point); every other option is the walkthrough's (tests/test_rehearsal.py holds the two to that).
REHEARSAL_ONLY = {
    "rfengine.extract_latents": {"--batch", "--shard-size", "--workers"},
    "rfengine.plan": {"--set", "--json"},
    "rfengine/train.py": {"--set"},
    "rfengine.sample": {"--batch"},
    "rfengine.evaluate ref": {"--count", "--weights", "--weights-sha256", "--workers", "--device"},
    "rfengine.evaluate fd": {"--weights", "--weights-sha256", "--device"},
}
# The shipped ImageNet recipe, shrunk: a tiny model on 64x64 images, fp32 without compile on the CPU,
# every step logged, a checkpoint every 2 steps and one decoded sample grid at the end.
SHRINK = ["model.arch=DiT-T/2", "data.image_size=64", "data.num_workers=0", "train.batch_size=8",
          f"train.steps={STEPS}", "train.precision=fp32", "train.compile=false", "train.log_every=1",
          "train.ckpt_every=2", f"train.sample_every={STEPS}", "train.progress=false", "sample.steps=2",
          "sample.num_images=4", "parallel.mode=fsdp"]


def commands(w: Path) -> dict[str, list[str]]:
    """Each stage's command line (as a user types it), for the work folder `w`."""
    sets = [a for s in [*SHRINK, f"data.path={w / 'latents'}", f"train.out_dir={w / 'runs' / 'imagenet256_dit'}"]
            for a in ("--set", s)]
    inception = ["--weights", str(w / "standin-inception.pth"), "--weights-sha256", "SHA256", "--device", "cpu"]
    return {
        "extract": ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "rfengine.extract_latents",
                    "--images", str(w / "imagenet" / "train"), "--vae", str(w / "sd-vae-ft-ema"),
                    "--resolution", str(SIZE), "--out", str(w / "latents"),
                    "--batch", "4", "--shard-size", "4", "--workers", "0"],
        "plan": ["python", "-m", "rfengine.plan", "--config", "configs/imagenet256_dit.yaml", "--gpus", "2",
                 "--card", "H100", *sets, "--json"],
        "train": ["torchrun", "--standalone", "--nproc_per_node=2", "rfengine/train.py",
                  "--config", "configs/imagenet256_dit.yaml", "--resume", "auto", *sets],
        "sample": ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "rfengine.sample",
                   "--run-dir", str(w / "runs" / "imagenet256_dit"), "--vae", str(w / "sd-vae-ft-ema"),
                   "--count", str(SAMPLES), "--method", "sde", "--steps", "4", "--cfg", "1.5", "--cfg-channels", "3",
                   "--batch", "2"],
        "reference": ["python", "-m", "rfengine.evaluate", "ref", str(w / "imagenet" / "train"), "--size", str(SIZE),
                      "--out", str(w / "imagenet64_ref.npz"), "--count", str(SAMPLES), "--workers", "0", *inception],
        "score": ["python", "-m", "rfengine.evaluate", "fd", str(w / "runs" / "imagenet256_dit" / "eval" / SAMPLE_FILE),
                  "--ref", str(w / "imagenet64_ref.npz"), *inception],
    }


class StageError(RuntimeError):
    """A stage's artifact is missing or wrong."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise StageError(what)


def _env() -> dict:
    # this checkout's rfengine, one thread a process (two processes share a small CPU)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}


def _argv(cmd: list[str], sha: str) -> list[str]:
    """A typed command as this Python runs it (torchrun and python of this interpreter)."""
    head = {"torchrun": [sys.executable, "-m", "torch.distributed.run"], "python": [sys.executable]}[cmd[0]]
    return head + [sha if a == "SHA256" else a for a in cmd[1:]]


def run(name: str, cmd: list[str], sha: str = "", log: Path | None = None) -> str:
    """Runs a stage's command to the end; its output, or StageError naming the exit code and the output's tail."""
    print(f"\n== {name}: {shlex.join(cmd)}", flush=True)
    p = subprocess.run(_argv(cmd, sha), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    if log:
        log.write_text(p.stdout + p.stderr)
    check(p.returncode == 0, f"{name}: exit code {p.returncode}\n{(p.stdout + p.stderr)[-3000:]}")
    return p.stdout


# ------------------------------------------------------------------ stand-ins for what is not offline

def make_standins(w: Path) -> str:
    """ImageNet's layout with random JPEGs, a random sd-vae-ft-ema, random Inception weights; returns their SHA-256."""
    from PIL import Image

    from rfengine import storage
    from rfengine.eval import inception
    from tests.helpers import tiny_vae  # the suite's tiny AutoencoderKL with sd-vae-ft-ema's structure
    rng = np.random.default_rng(0)
    for synset in SYNSETS:
        folder = w / "imagenet" / "train" / synset
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):  # odd sizes, as ImageNet's: resized and centre-cropped
            Image.fromarray(rng.integers(0, 256, (SIZE + 7 * i, SIZE + 5, 3), dtype=np.uint8)).save(
                folder / f"{synset}_{i}.JPEG", quality=90)
    tiny_vae(w / "sd-vae-ft-ema")
    return storage.sha256_file(inception.save_random_weights(w / "standin-inception.pth"))


# ------------------------------------------------------------------ the stages and their artifacts

def extract(w: Path, cmd: list[str]) -> dict:
    run("extract latents", cmd)
    meta = json.loads((w / "latents" / "meta.json").read_text())
    n = len(SYNSETS) * PER_CLASS
    check(meta["count"] == n and meta["classes"] == SYNSETS and meta["num_classes"] == len(SYNSETS),
          f"extract: meta.json says {meta['count']} images of {meta['classes']}, expected {n} of {SYNSETS}")
    check(meta["channels"] == 4 and meta["latent_size"] == SIZE // 8 and meta["flip"] == "both"
          and len(meta["vae_sha256"]) == 64, f"extract: meta.json's latents or VAE identity are wrong: {meta}")
    labels = np.concatenate([np.load(w / "latents" / s["labels"]) for s in meta["shards"]])
    lat = [np.load(w / "latents" / s["latents"], mmap_mode="r") for s in meta["shards"]]
    check(labels.tolist() == sorted(labels.tolist()) and np.bincount(labels).tolist() == [PER_CLASS] * len(SYNSETS),
          f"extract: labels {labels.tolist()} are not {PER_CLASS} of each class in folder order")
    check(all(a.shape[1:] == (2, 4, SIZE // 8, SIZE // 8) and np.isfinite(a).all() for a in lat)
          and sum(len(a) for a in lat) == n, "extract: shards are not (n, 2 views, 4, h, w) finite latents")
    return meta


def plan(running: Future) -> dict:
    """Waits for the plan stage's command, `running` in the background (it reads only the config), then checks
    the plan it printed."""
    res = json.loads(running.result())
    check(res["gpus"] == 2 and res["peak_bytes"] < res["usable_bytes"] and res["switch_step"] == int(0.88 * STEPS)
          and res["train_steps"] == STEPS, f"plan: unexpected plan {res}")
    return res


def _steps_logged(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip().endswith("}")]


def train(w: Path, cmd: list[str]) -> list[dict]:
    """The same command twice: the first run gets SIGTERM (as a preemption notice reaches torchrun) mid-run."""
    from rfengine import checkpoint
    run_dir = w / "runs" / "imagenet256_dit"
    print(f"\n== train (SIGTERM after step {STOP_AFTER}): {shlex.join(cmd)}", flush=True)
    proc = subprocess.Popen(_argv(cmd, ""), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and max(_steps_logged(run_dir), default=0) < STOP_AFTER and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # to torchrun's agent, which passes it to both ranks
    out, _ = proc.communicate(timeout=120)
    (w / "train_first.log").write_text(out)
    saved = [s for s, _ in checkpoint.list_checkpoints(run_dir / "checkpoints")]
    check("stopped at step" in out and saved and STOP_AFTER <= max(saved) < STEPS,
          f"train: SIGTERM did not stop the run mid-way with a checkpoint (checkpoints {saved})\n{out[-3000:]}")
    stopped = max(saved)
    check(max(_steps_logged(run_dir)) == stopped, f"train: steps after the stop's checkpoint {stopped} were logged")

    out = run("train, the same command again", cmd, log=w / "train_second.log")
    log = (w / "train_second.log").read_text()
    check(f"at step {stopped}" in log and "resumed from" in log, f"train: the second run did not resume at {stopped}")
    check(_steps_logged(run_dir) == list(range(1, STEPS + 1)),
          f"train: metrics rows are not steps 1..{STEPS} once each: {_steps_logged(run_dir)}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    check(all(np.isfinite(r["loss"]) for r in rows) and all("fc_w_mean" in r for r in rows[int(0.88 * STEPS):]),
          "train: a loss is not finite, or FC's weights were not logged after the recipe's switch")
    check(max(s for s, _ in checkpoint.list_checkpoints(run_dir / "checkpoints")) == STEPS
          and (run_dir / "ema.safetensors").is_file(), "train: no final checkpoint or ema.safetensors")
    from PIL import Image
    grid = run_dir / "samples" / f"step_{STEPS:08d}.png"
    check(grid.is_file() and Image.open(grid).mode == "RGB", f"train: no sample grid {grid} decoded into RGB")
    return rows


def sample(w: Path, cmd: list[str], vae_sha: str) -> Path:
    run("sample", cmd)
    npz = w / "runs" / "imagenet256_dit" / "eval" / SAMPLE_FILE
    check(npz.is_file() and not npz.with_suffix(".parts").exists(), f"sample: {npz} missing, or its chunks left")
    with np.load(npz) as f:
        images, labels = f["arr_0"], f["arr_1"]
    check(images.shape == (SAMPLES, SIZE, SIZE, 3) and images.dtype == np.uint8 and images.std() > 0,
          f"sample: arr_0 is {images.dtype} {images.shape}, not {SAMPLES} decoded {SIZE}x{SIZE} RGB images")
    check(labels.shape == (SAMPLES,) and 0 <= labels.min() and labels.max() < len(SYNSETS),
          f"sample: arr_1 {labels} are not class labels")
    settings = json.loads(npz.with_suffix(".json").read_text())
    check(settings["vae_sha256"] == vae_sha and settings["step"] == STEPS and settings["world"] == 2,
          f"sample: the settings file does not record the latents' VAE, step {STEPS} and 2 processes: {settings}")
    return npz


def reference(w: Path, running: Future) -> Path:
    """Waits for the reference stage's command, `running` in the background (it needs only the images and the
    Inception weights, so it runs while the model is trained and sampled), then checks its file."""
    running.result()
    ref = w / "imagenet64_ref.npz"
    with np.load(ref) as f:
        check(f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048) and f["mu_s"].shape == (2023,)
              and f["arr_0"].shape == (SAMPLES, SIZE, SIZE, 3) and int(f["stats_count"]) == len(SYNSETS) * PER_CLASS,
              f"reference: {ref} does not hold ADM's members over every image")
    return ref


def score(w: Path, cmd: list[str], sha: str, samples: Path) -> dict:
    run("score", cmd, sha)
    return check_score(json.loads(samples.with_name(samples.stem + "_fd_inception.json").read_text()), sha)


def check_score(res: dict, sha: str) -> dict:
    """The score stage's checks of `evaluate fd`'s result `res` (its JSON), made with the Inception weights of
    SHA-256 `sha`; returns `res`."""
    check(all(np.isfinite(res[k]) and res[k] >= 0 for k in ("fid", "sfid", "inception_score"))
          and 0 <= res["precision"] <= 1 and 0 <= res["recall"] <= 1, f"score: metrics missing or not finite: {res}")
    stats = res["statistics"]["fid"]
    check(stats["ref"]["source"] == "statistics stored in the reference file"
          and stats["ref"]["n"] == len(SYNSETS) * PER_CLASS and stats["samples"]["n"] == SAMPLES,
          f"score: the FID did not use the reference file's mu/sigma over every image: {stats}")
    check(res["sampling"]["method"] == "sde" and res["features"]["sha256"] == sha,
          "score: the result does not record the sampler and the Inception weights")
    return res


def rehearse(w: Path) -> dict:
    """Every stage in the work folder `w`, in order but for the plan and the reference (run in the background
    until their results are needed); returns what each produced."""
    w.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    seconds = {}

    def timed(name, stage, *args):
        t = time.monotonic()
        out = stage(*args)
        seconds[name] = round(time.monotonic() - t, 1)
        return out
    sha = timed("stand-ins", make_standins, w)
    cmds = commands(w)
    with ThreadPoolExecutor(2) as background:  # the stages that need only the config, or the images
        planning = background.submit(run, "plan (in the background)", cmds["plan"])
        making_ref = background.submit(run, "reference (in the background)", cmds["reference"], sha)
        meta = timed("extract", extract, w, cmds["extract"])
        timed("plan (waited for)", plan, planning)
        rows = timed("train", train, w, cmds["train"])
        samples = timed("sample", sample, w, cmds["sample"], meta["vae_sha256"])
        ref = timed("reference (waited for)", reference, w, making_ref)
    res = timed("score", score, w, cmds["score"], sha, samples)
    total = time.monotonic() - t0
    print(f"\nrehearsal passed in {total:.0f} s ({', '.join(f'{k} {v} s' for k, v in seconds.items())}): FID "
          f"{res['fid']:.2f} (stand-in networks: the number means nothing), {len(rows)} training steps, {samples}")
    return {"work": w, "samples": samples, "ref": ref, "score": res, "inception_sha256": sha, "seconds": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", help="an empty or new folder for everything the rehearsal makes (default: a temporary one)")
    a = p.parse_args(argv)
    w = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="rehearse_imagenet_"))
    if w.exists() and any(w.iterdir()):
        print(f"rehearse_imagenet: error: --work {w} is not empty", file=sys.stderr)
        return 2
    try:
        rehearse(w)
    except StageError as e:
        print(f"rehearse_imagenet: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
