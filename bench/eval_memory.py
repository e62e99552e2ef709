"""Peak host memory of `evaluate fd` scoring N samples against an ADM-format reference, the way it scores 50,000
256x256 samples against VIRTUAL_imagenet256_labeled.npz: the samples stream from an .npz on disk, features,
statistics, Inception Score, precision/recall (N x N sample manifold) and FID/sFID at their real sizes.

    python bench/eval_memory.py --dir /scratch/evalbench --n 50000 --size 256 \
        --out bench/results/<machine>_eval_memory.json

It writes a synthetic sample file (N x size x size x 3 uint8: 9.8 GB at 50k x 256^2; free disk is checked first)
and a reference (10,000 images, mu/sigma over 2048 dims, mu_s/sigma_s over 2023), then measures in fresh processes:
  score     the whole scoring path with a cheap stand-in network of the Inception's interface (2048 pool features,
            2023 spatial ones, 1008 logits): running the real network over 60,000 images takes hours on a CPU,
            and its memory does not depend on N;
  network   the real network's own peak: the FID Inception (random weights in the published format) on one feature
            batch of size x size images.
The peak of a real 50k run is about score + (network - its baseline): the network adds its weights and one batch's
activations, nothing that grows with N. Peaks are the processes' max RSS (page cache not counted). The files are
deleted at the end unless --keep.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POOL, SPATIAL, CLASSES = 2048, 2023, 1008


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class CheapInception:
    """The Inception extractor's interface at its real feature sizes, for the cost of an average pool and two small
    projections: pool (N, 2048), spatial (N, 2023), logits (N, 1008)."""

    dim, fd_name = POOL, "fid"
    info = {"network": "cheap stand-in (bench)"}

    def __init__(self):
        import torch
        g = torch.Generator().manual_seed(0)
        self.p_pool = torch.randn(3 * 8 * 8, POOL, generator=g)
        self.p_spatial = torch.randn(3 * 8 * 8, SPATIAL, generator=g)
        self.w = torch.randn(POOL, CLASSES, generator=g) * 0.01

    def extract(self, x):
        import torch
        small = torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)          # (N, 192)
        return {"pool": torch.relu(small @ self.p_pool).numpy(), "spatial": torch.relu(small @ self.p_spatial).numpy()}

    def logits(self, pool):
        return pool.float() @ self.w


def make_files(folder: Path, n: int, ref_n: int, size: int) -> tuple[Path, Path]:
    """samples.npz (n images) and ref.npz (ref_n images + mu/sigma/mu_s/sigma_s), written in chunks."""
    from rfengine.eval.npz import NpzWriter
    rng = np.random.default_rng(0)

    def chunks(count):
        for start in range(0, count, 64):
            yield rng.integers(0, 256, (min(64, count - start), size, size, 3), dtype=np.uint8)

    samples, ref = folder / "samples.npz", folder / "ref.npz"
    with NpzWriter(samples) as w:
        w.stream("arr_0", (n, size, size, 3), np.uint8, chunks(n))
    with NpzWriter(ref) as w:
        w.stream("arr_0", (ref_n, size, size, 3), np.uint8, chunks(ref_n))
        for mu, sigma, dim in (("mu", "sigma", POOL), ("mu_s", "sigma_s", SPATIAL)):
            a = rng.standard_normal((dim, dim)) / dim ** 0.5
            w.add(mu, rng.standard_normal(dim))
            w.add(sigma, a @ a.T + np.eye(dim) * 0.1)
    return samples, ref


def measure_score(samples: str, ref: str, batch: int) -> dict:
    import torch
    from rfengine.eval.score import score
    base = rss_mb()
    t = time.time()
    res = score(samples, ref, CheapInception, batch=batch, device="cpu")
    return {"peak_rss_mb": rss_mb(), "baseline_rss_mb": base, "seconds": time.time() - t,
            "threads": torch.get_num_threads(), "n_samples": res["n_samples"],
            "n_ref": res["precision_recall"]["n_ref"], "fid": res["fid"], "precision": res["precision"]}


def measure_network(size: int, batch: int, folder: str) -> dict:
    import torch
    from rfengine import storage
    from rfengine.eval import InceptionFeatures, inception
    base = rss_mb()
    weights = inception.save_random_weights(Path(folder) / "standin-inception.pth")
    ext = InceptionFeatures(weights, sha256=storage.sha256_file(weights), batch=batch)
    loaded = rss_mb()
    x = torch.rand(batch, 3, size, size) * 2 - 1
    t = time.time()
    ext.extract(x)
    return {"peak_rss_mb": rss_mb(), "baseline_rss_mb": base, "after_weights_mb": loaded,
            "seconds_per_batch": time.time() - t, "batch": batch}


def child(args: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"{args[0]} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, help="scratch folder for the synthetic files")
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--ref-n", type=int, default=10_000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=50, help="feature batch, as evaluate fd's --batch")
    p.add_argument("--out", help="result JSON")
    p.add_argument("--keep", action="store_true", help="keep the synthetic files")
    p.add_argument("--child", choices=["score", "network"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    folder = Path(a.dir)
    if a.child == "score":
        print(json.dumps(measure_score(str(folder / "samples.npz"), str(folder / "ref.npz"), a.batch)))
        return 0
    if a.child == "network":
        print(json.dumps(measure_network(a.size, a.batch, str(folder))))
        return 0

    folder.mkdir(parents=True, exist_ok=True)
    need = (a.n + a.ref_n) * a.size * a.size * 3 + 200e6
    free = shutil.disk_usage(folder).free
    if free < need * 1.1:
        raise SystemExit(f"{folder}: {free / 1e9:.1f} GB free, the files need {need / 1e9:.1f} GB")
    t = time.time()
    samples, ref = make_files(folder, a.n, a.ref_n, a.size)
    written = time.time() - t
    try:
        common = ["--dir", str(folder), "--size", str(a.size), "--batch", str(a.batch)]
        result = {
            "command": " ".join(["python bench/eval_memory.py", *sys.argv[1:]] if argv is None else argv),
            "n": a.n, "ref_n": a.ref_n, "size": a.size, "sample_file_gb": samples.stat().st_size / 1e9,
            "write_seconds": written, "score": child(["--child", "score", *common]),
            "network": child(["--child", "network", *common]),
            "machine": platform.node(), "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=ROOT).stdout.strip(),
        }
        import torch
        result["torch"] = torch.__version__
        net = result["network"]
        result["estimated_peak_mb"] = result["score"]["peak_rss_mb"] + net["peak_rss_mb"] - net["baseline_rss_mb"]
    finally:
        if not a.keep:
            for f in (samples, ref, folder / "standin-inception.pth"):
                f.unlink(missing_ok=True)
    text = json.dumps(result, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
