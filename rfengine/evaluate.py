"""Measurement from the command line: python -m rfengine.evaluate

    # FD (+ precision/recall) of a sample file against the embedded digits, in digit-classifier features
    python -m rfengine.evaluate fd --samples runs/x/eval/samples_ema_euler50_cfg1_n1000_seed0.npz --ref digits
    # standard FID: Inception-v3 from a local TorchScript file, reference images as an .npz (uint8 NHWC)
    python -m rfengine.evaluate fd --samples S.npz --ref ref.npz --features inception --weights inception-2015-12-05.pt
    # exposure-bias diagnostics of a run (SPEC section 2): curves and spectra as JSON and PNG
    python -m rfengine.evaluate bias --run-dir runs/tiny --steps 20

Every score is written as JSON next to the samples with the sampler settings read from the sample
file's metadata (sampler, steps, CFG, weights, count, seed).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from rfengine.eval import build_extractor, feature_stats, frechet_distance, precision_recall


def load_images(spec: str) -> torch.Tensor:
    """'digits' (the embedded set) or an .npz with arr_0 uint8 (N, H, W, C) -> (N, C, H, W) in [-1, 1]."""
    if spec == "digits":
        from rfengine.data.digits import DigitsDataset
        return DigitsDataset(16).images
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"images not found: {path} (expected 'digits' or an .npz with arr_0)")
    with np.load(path) as f:
        if "arr_0" not in f:
            raise ValueError(f"{path}: no arr_0 (expected uint8 images N x H x W x C)")
        arr = f["arr_0"]
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise ValueError(f"{path}: arr_0 must be uint8 (N, H, W, C), got {arr.dtype} {arr.shape}")
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


def fd_command(a) -> dict:
    fake = load_images(a.samples)
    real = load_images(a.ref)
    extractor = build_extractor(a.features, a.weights, a.device)
    ff, rf = extractor(fake), extractor(real)
    result = {"fd": frechet_distance(*feature_stats(ff), *feature_stats(rf)), "n_fake": len(ff), "n_real": len(rf),
              "features": a.features, "feature_weights": a.weights, "ref": a.ref, "samples": a.samples}
    if a.features == "digits":
        result["feature_accuracy"] = extractor.accuracy
    if len(ff) * len(rf) <= 25_000_000:  # pairwise distances stay cheap
        result["precision"], result["recall"] = precision_recall(rf, ff)
    meta = Path(a.samples).with_suffix(".json")
    if meta.is_file():
        result["sampling"] = json.loads(meta.read_text())
    out = Path(a.out) if a.out else Path(a.samples).with_name(Path(a.samples).stem + f"_fd_{a.features}.json")
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "sampling"}, indent=1))
    return result


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
    f = sub.add_parser("fd", help="Fréchet distance (+ precision/recall) of samples against reference images")
    f.add_argument("--samples", required=True, help=".npz from python -m rfengine.sample (arr_0 uint8 NHWC)")
    f.add_argument("--ref", default="digits", help="'digits' or an .npz of reference images")
    f.add_argument("--features", default="digits", choices=["digits", "inception"])
    f.add_argument("--weights", help="feature network file (inception: a local TorchScript file)")
    f.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    f.add_argument("--out", help="JSON output (default: next to the samples)")
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
        (fd_command if a.command == "fd" else bias_command)(a)
    except (ValueError, FileNotFoundError) as e:
        print(f"rfengine.evaluate: error: {e}", file=__import__("sys").stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
