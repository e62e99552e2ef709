"""Peak host memory of each sampling process at FID scale: does it stay at one chunk whatever the count?
`python -m rfengine.sample` runs as users run it, on 2 processes (torchrun), for a tiny latent model
(DiT-T/4 on 4x32x32 latents, 1000 classes) decoded by a tiny random diffusers AutoencoderKL with
sd-vae-ft-ema's structure into 256x256x3 images, so every image weighs what an ImageNet-256 sample
weighs (196,608 bytes). Each process records its peak resident set (VmHWM); rank 0's includes the
merge into the .npz, measured apart (the high-water mark is reset between the phases).

    python bench/sample_memory.py --counts 2000 8000 --out bench/results/<machine>_sample_memory

The merge, the one phase whose work grows with the count, is also measured alone at full scale
(`--merge-counts 50000`): a process writes the shards of a 50,000-sample run (random 256x256x3 uint8
images, chunks of `--batch`, labelled), then a fresh process merges them into the .npz with
`rfengine.sample_shards.merge`, as rank 0 does, and records its peak resident set; the merged file is
then checked chunk by chunk against the shards' images and labels (read back memory-mapped).

    python bench/sample_memory.py --counts --merge-counts 50000 --out ...

Writes sample_memory.json (peaks per rank and count, the chunk and file sizes, device, versions,
commit) and prints one line per count.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGE_BYTES = 256 * 256 * 3


def _peak_mib(reset: bool = False) -> float:
    """This process's resident-set high-water mark (VmHWM) since start or the last reset; `reset` then
    starts a new one (Linux: /proc/self/clear_refs)."""
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    return hwm / 1024


def worker(argv: list[str], report: Path) -> int:
    """One torchrun process: the sampling command line, with this process's peak RSS in each phase into
    `report`: up to the merge (start-up, model and VAE, sampling its chunks), the merge (rank 0), and
    after it (the grid and the metadata, rank 0)."""
    from rfengine import sample, sample_shards
    phases = {}
    merge = sample_shards.merge

    def measured_merge(*args, **kwargs):
        phases["sampling"] = _peak_mib(reset=True)
        try:
            return merge(*args, **kwargs)
        finally:
            phases["merge"] = _peak_mib(reset=True)
    sample_shards.merge = measured_merge
    rc = sample.sample_main(argv)
    phases["after merge" if "merge" in phases else "sampling"] = _peak_mib()
    rank = int(os.environ.get("RANK", "0"))
    (report / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "peak_rss_mib": phases, "rc": rc}))
    return rc


def measure(count: int, batch: int, procs: int, folder: Path, model: Path, vae: Path) -> dict:
    report = folder / f"report_{count}"
    report.mkdir()
    args = ["--ckpt", str(model), "--config", str(ROOT / "configs" / "imagenet256_fm.yaml"), "--set",
            "model.arch=DiT-T/4", "--vae", str(vae), "--count", str(count), "--batch", str(batch), "--steps", "1",
            "--out", str(folder / f"samples_{count}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           str(Path(__file__).resolve()), "worker", str(report), *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"sampling {count} failed:\n{r.stderr[-3000:]}")
    ranks = sorted((json.loads(p.read_text()) for p in report.glob("rank*.json")), key=lambda x: x["rank"])
    npz = next((folder / f"samples_{count}").glob("*.npz"))
    return {"count": count, "processes": procs, "chunk_images": batch, "chunk_mib": batch * IMAGE_BYTES / 2**20,
            "npz_mib": npz.stat().st_size / 2**20, "all_images_mib": count * IMAGE_BYTES / 2**20,
            "peak_rss_mib_by_rank": [x["peak_rss_mib"] for x in ranks], "seconds": seconds}


def _shard_images(j: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk j's stand-in samples: (n, 256, 256, 3) uint8 and (n,) int64 labels, a function of j only."""
    rng = np.random.default_rng(j)
    return rng.integers(0, 256, (n, 256, 256, 3), dtype=np.uint8), rng.integers(0, 1000, n, dtype=np.int64)


def merge_worker(folder: Path, count: int, batch: int) -> int:
    """The merge of a `count`-sample run's shards (written by `write_shards`) into one .npz, in this fresh
    process; prints its peak RSS (MiB) before and during the merge as JSON."""
    from rfengine import sample_shards
    plan = sample_shards.chunks(count, batch)
    before = _peak_mib(reset=True)
    sample_shards.merge(folder / "parts", plan, folder / "merged.npz", labelled=True)
    print(json.dumps({"before merge": before, "merge": _peak_mib()}))
    return 0


def measure_merge(count: int, batch: int, folder: Path) -> dict:
    """Write the shards of a `count`-sample run, merge them in a fresh process (its peak RSS), and check the
    merged file against the shards."""
    from tqdm import tqdm

    from rfengine import sample_shards
    plan = sample_shards.chunks(count, batch)
    parts = folder / "parts"
    sample_shards.open_parts(parts, {"merge benchmark": count}, len(plan))
    for j, rows in enumerate(tqdm(plan, desc=f"shards of {count}", unit="chunk")):
        sample_shards.write_chunk(parts, j, *_shard_images(j, len(rows)), None)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "merge-worker", str(folder), str(count),
                        str(batch)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                       text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"merge of {count} failed:\n{r.stderr[-3000:]}")
    peaks = json.loads(r.stdout.strip().splitlines()[-1])
    npz = folder / "merged.npz"
    size = npz.stat().st_size
    from rfengine.eval.npz import NpzImages
    with np.load(npz) as f:
        labels = f["arr_1"]
    with NpzImages(npz) as f:  # streamed: the check holds one chunk at a time too
        for j, (rows, got) in enumerate(tqdm(zip(plan, f.batches(batch)), total=len(plan), desc="check",
                                             unit="chunk")):
            images, want = _shard_images(j, len(rows))
            if not (np.array_equal(got, images) and np.array_equal(labels[rows.start:rows.stop], want)):
                raise SystemExit(f"merged file differs from chunk {j}'s shard")
    shutil.rmtree(parts)
    npz.unlink()
    return {"count": count, "chunk_images": batch, "chunk_mib": batch * IMAGE_BYTES / 2**20,
            "npz_mib": size / 2**20, "all_images_mib": count * IMAGE_BYTES / 2**20,
            "peak_rss_mib": peaks, "merge_seconds": seconds, "checked": "every chunk equal to its shard"}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        return worker(sys.argv[3:], Path(sys.argv[2]))
    if len(sys.argv) > 1 and sys.argv[1] == "merge-worker":
        return merge_worker(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", type=int, nargs="*", default=[2000, 8000],
                   help="sample counts of whole sampling runs (none: only --merge-counts)")
    p.add_argument("--merge-counts", type=int, nargs="*", default=[],
                   help="sample counts whose merge alone is measured (needs about 2 x count x 192 KiB of disk)")
    p.add_argument("--batch", type=int, default=250, help="samples per chunk (the CLI's default)")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--vae-channels", type=int, nargs=4, default=[8, 8, 16, 16],
                   help="the stand-in VAE's channels per block (4 4 4 4 with --vae-layers 0 decodes faster on a "
                        "CPU, for a whole 50,000-sample run)")
    p.add_argument("--vae-layers", type=int, default=1, help="the stand-in VAE's layers per block")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    import torch

    from bench.conftest import device_info
    from rfengine.models import build_model
    from tests.helpers import tiny_vae
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = build_model("DiT-T/4", in_channels=4, input_size=32, num_classes=1000)
        torch.save(model.state_dict(), tmp / "model.pt")
        vae = tiny_vae(tmp / "vae", channels=tuple(a.vae_channels), layers_per_block=a.vae_layers)
        for count in a.counts:
            res = measure(count, a.batch, a.procs, tmp, tmp / "model.pt", vae)
            results.append(res)
            peaks = "; ".join(f"rank {r}: " + ", ".join(f"{k} {v:.0f}" for k, v in ph.items())
                              for r, ph in enumerate(res["peak_rss_mib_by_rank"]))
            print(f"N={count}: peak RSS (MiB) {peaks} (chunk {res['chunk_mib']:.0f} MiB, all images "
                  f"{res['all_images_mib']:.0f} MiB, .npz {res['npz_mib']:.0f} MiB), {res['seconds']:.0f} s",
                  flush=True)
        merges = []
        for count in a.merge_counts:
            res = measure_merge(count, a.batch, tmp)
            merges.append(res)
            print(f"merge of N={count}: peak RSS (MiB) {res['peak_rss_mib']['merge']:.0f} (before it "
                  f"{res['peak_rss_mib']['before merge']:.0f}; chunk {res['chunk_mib']:.0f} MiB, .npz "
                  f"{res['npz_mib']:.0f} MiB), {res['merge_seconds']:.0f} s", flush=True)
    info = device_info()
    info["command"] = "python bench/sample_memory.py " + " ".join(sys.argv[1:])
    info["vae"] = {"block_out_channels": a.vae_channels, "layers_per_block": a.vae_layers}
    (out / "sample_memory.json").write_text(json.dumps({"machine": info, "results": results, "merges": merges}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
