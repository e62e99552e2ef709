"""Measurement from the command line: python -m rfengine.evaluate

    # FID, sFID, Inception Score, precision/recall of 50,000 samples against ADM's reference batch (its mu/sigma:
    # the whole training set; its 10,000 images: the precision/recall reference), in the TF FID Inception's features
    python -m rfengine.evaluate fd --ref VIRTUAL_imagenet256_labeled.npz eval/samples_....npz
    # FD (+ precision/recall) of a digits run's samples against the embedded digits, in digit-classifier features
    python -m rfengine.evaluate fd --ref digits runs/x/eval/samples_ema_euler50_cfg1_n1000_seed0.npz
    # a reference file in ADM's format from your own image folder (statistics over all of it, 10,000 as arr_0)
    python -m rfengine.evaluate ref /data/imagenet/train --size 256 --out imagenet256_ref.npz
    # exposure-bias diagnostics of a run (docs/objectives.md section 2): curves and spectra as JSON and PNG
    python -m rfengine.evaluate bias --run-dir runs/tiny --steps 20

Every score is written as JSON next to the samples with the sampler settings read from the sample
file's metadata (sampler, steps, CFG, weights, count, seed). docs/evaluation.md describes the metrics, the
Inception network and its weights, reference files and how the numbers relate to ADM's evaluator.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from rfengine import storage
from rfengine.eval import build_extractor
from rfengine.eval.score import ImageSource, score


def load_images(spec: str) -> torch.Tensor:
    """'digits' (the embedded set) or an .npz with arr_0 uint8 (N, H, W, C) -> (N, C, H, W) in [-1, 1], all at once
    (for small sets; `evaluate fd` streams)."""
    with ImageSource(spec) as src:
        if not src.has_images:
            raise ValueError(f"{spec}: no arr_0 (expected uint8 images N x H x W x C)")
        return torch.cat(list(src.batches(4096)))


def fd_command(a) -> dict:
    samples = a.samples_pos or a.samples
    if not samples or (a.samples_pos and a.samples and a.samples_pos != a.samples):
        raise ValueError("fd: give the sample file once (SAMPLES.npz, or --samples SAMPLES.npz)")
    features = a.features or ("digits" if a.ref == "digits" else "inception")
    result = score(samples, a.ref, lambda: build_extractor(features, a.weights, a.device, a.weights_sha256, a.batch),
                   a.batch, a.pr_batch, a.device)
    meta = Path(samples).with_suffix(".json")
    if meta.is_file():
        result["sampling"] = json.loads(meta.read_text())
    out = Path(a.out) if a.out else Path(samples).with_name(Path(samples).stem + f"_fd_{features}.json")
    storage.write_json(out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "sampling"}, indent=1))
    for note in result["notes"]:
        print(f"rfengine.evaluate: note: {note}", file=sys.stderr)
    return result


def ref_command(a) -> dict:
    from rfengine.eval.reference import make_reference
    extractor = build_extractor("inception", a.weights, a.device, a.weights_sha256, a.batch)
    res = make_reference(a.folder, a.out, extractor, a.size, a.count, a.batch, a.workers, a.seed)
    print(f"wrote {res['out']}: statistics over {res['n']} images, {res['arr_0']} of them as arr_0")
    return res


def bias_command(a) -> dict:
    from rfengine.eval.diagnostics import exposure_bias
    from rfengine import weights
    path = weights.resolve(a.run, a.ckpt)
    model, cfg, shape, _ = weights.load_model(path, a.weights)
    x1 = load_images(a.ref)
    g = torch.Generator().manual_seed(a.seed)
    idx = torch.randperm(len(x1), generator=g)[: a.count]
    x1 = x1[idx]
    if tuple(x1.shape[1:]) != tuple(shape):
        raise ValueError(f"reference images are {tuple(x1.shape[1:])}, the model takes {shape}")
    y = None
    if model.num_classes > 0:
        y = torch.full((len(x1),), model.null_class, dtype=torch.long)  # unconditional velocity
    x0 = torch.randn(x1.shape, generator=g)
    res = exposure_bias(model, x0, x1, y, a.steps)
    out = Path(a.out) if a.out else (Path(a.run) if a.run else path.parent.parent) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    res.update(checkpoint=str(path), weights=a.weights, steps=a.steps, num=len(x1), seed=a.seed)
    (out / f"exposure_bias_{a.weights}_{a.steps}.json").write_text(json.dumps(res, indent=1))
    _plot_bias(res, out / f"exposure_bias_{a.weights}_{a.steps}.png")
    print(f"paired error at the last step {res['paired_error'][-1]:.4f}, energy gap {res['energy_gap'][-1]:+.4f}; "
          f"wrote {out}")
    return res


def _plot_bias(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(res["t"], res["paired_error"], marker=".")
    axes[0].set_title("paired error ||xhat_t - x_t||^2 / d")
    axes[1].plot(res["t"], res["energy_gap"], marker=".")
    axes[1].axhline(0, color="k", lw=0.5)
    axes[1].set_title("energy gap (E||xhat_t||^2 - E||x_t||^2) / d")
    for t, spec in res["spectra"].items():
        axes[2].semilogy(spec, label=f"t = {t}")
    axes[2].set_title("radial power spectrum of the bias")
    axes[2].legend()
    for ax in axes[:2]:
        ax.set_xlabel("t")
    axes[2].set_xlabel("radial frequency (index)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="rfengine measurements: FD/FID and exposure-bias diagnostics.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fd", help="FID, sFID, Inception Score and precision/recall of samples against a reference",
                       description="Scores SAMPLES.npz (arr_0 uint8 N x H x W x C) against --ref. The reference's "
                       "mu/sigma (and mu_s/sigma_s) are used where the file has them (ADM's reference batches), "
                       "else statistics of its arr_0; its arr_0 is the precision/recall reference. Images are read "
                       "a batch at a time. The JSON result names the statistics used and the images behind each side.")
    f.add_argument("samples_pos", nargs="?", metavar="SAMPLES.npz", help=".npz from python -m rfengine.sample")
    f.add_argument("--samples", help="the same, as an option")
    f.add_argument("--ref", default="digits", help="'digits', or an .npz in ADM's format: arr_0 images and/or "
                   "mu, sigma (mu_s, sigma_s), e.g. VIRTUAL_imagenet256_labeled.npz")
    f.add_argument("--features", choices=["digits", "inception"],
                   help="feature network (default: digits for --ref digits, else inception)")
    f.add_argument("--weights", help="feature network weights: inception: pt_inception-2015-12-05-6726825d.pth "
                   "(pytorch-fid) or weights-inception-2015-12-05-6726825d.pth (torch-fidelity), the same file; "
                   "default: the torch hub cache, else downloaded there. digits: the shipped classifier")
    f.add_argument("--weights-sha256", help="expected SHA-256 of the inception weights (default: the published "
                   "file's); another file is refused before it is read")
    f.add_argument("--batch", type=int, default=50, help="images per feature batch")
    f.add_argument("--pr-batch", type=int, default=1024, help="rows per precision/recall distance block")
    f.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    f.add_argument("--out", help="JSON output (default: next to the samples)")
    r = sub.add_parser("ref", help="an ADM-format reference file (mu/sigma, mu_s/sigma_s over every image, a random "
                       "subset as arr_0) from an image folder root/<class>/<image>")
    r.add_argument("folder", help="image folder with one sub-folder per class (ImageNet's train/)")
    r.add_argument("--out", required=True, help=".npz to write")
    r.add_argument("--size", type=int, default=256, help="image size (the run's data.image_size)")
    r.add_argument("--count", type=int, default=10_000, help="images kept as arr_0 (ADM: 10,000)")
    r.add_argument("--weights", help="as for fd")
    r.add_argument("--weights-sha256", help="as for fd")
    r.add_argument("--batch", type=int, default=50)
    r.add_argument("--workers", type=int, default=4, help="image decoding processes")
    r.add_argument("--seed", type=int, default=0, help="which images become arr_0")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    b = sub.add_parser("bias", help="exposure-bias curves and spectra along Euler trajectories")
    b.add_argument("--run-dir", dest="run", help="run folder (its newest checkpoint)")
    b.add_argument("--ckpt")
    b.add_argument("--weights", default="ema", choices=["ema", "raw"])
    b.add_argument("--ref", default="digits", help="'digits' or an .npz of data images (the x1 of each pair)")
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--count", type=int, default=256, help="trajectories (data/noise pairs)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        {"fd": fd_command, "ref": ref_command, "bias": bias_command}[a.command](a)
    except (ValueError, FileNotFoundError) as e:
        print(f"rfengine.evaluate: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
