"""Feature extractors for Fréchet distances.

- `digits`: a small CNN classifier of the embedded digits (16x16); its 64-d penultimate layer is the
  feature space (the SPEC section 6 study's "FD in the feature space of a small digit classifier").
  Its weights ship with the package (`digits_classifier.safetensors`, study v3's pinned classifier),
  so a digits FD means the same on every machine: training it again is not bit-reproducible across
  machines (one machine's retrained classifier scored the same model 20.2 where another's gave 25.6).
  Its held-out accuracy is reported with every score. `train_digits_classifier` made it.
- `inception`: Inception-v3 pool features (2048-d) from a local TorchScript file with the interface
  of the widely used `inception-2015-12-05.pt` (the TF FID network ported to TorchScript, as used by
  StyleGAN2-ADA/StyleGAN3 and clean-fid): `net(images_uint8_nchw, return_features=True)`, images
  resized to 299. Nothing is downloaded; pass the path. Numbers from it are comparable with FID as
  published by those code bases; this has not been checked here (no weights file offline).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rfengine import storage

log = logging.getLogger("rfengine")


class DigitsNet(nn.Module):
    def __init__(self, width: int = 32, feat: int = 64, classes: int = 10):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),            # 8x8
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 4x4
        )
        self.fc = nn.Linear(2 * width * 16, feat)
        self.head = nn.Linear(feat, classes)

    def features(self, x):
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x):
        return self.head(self.features(x))


SHIPPED = Path(__file__).with_name("digits_classifier.safetensors")


class DigitsFeatures:
    """The digit classifier's features; `__call__(x in [-1, 1], (N, 1, 16, 16))` -> (N, 64) features.
    `path`: the shipped weights when None, else a `.safetensors` file of the same form or a `.pt`
    state ({"model", "accuracy"}, read with `weights_only`)."""

    dim = 64

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else SHIPPED
        if not self.path.is_file():
            raise FileNotFoundError(f"digits features: no classifier weights at {self.path}"
                                    + ("" if path else " (the package's own file is missing: reinstall rfengine)"))
        self.net = DigitsNet()
        if self.path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(self.path), "pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
                self.accuracy = float((f.metadata() or {}).get("accuracy", "nan"))
        else:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            state, self.accuracy = saved["model"], float(saved["accuracy"])
        self.net.load_state_dict(state)
        self.net.eval()

    def save(self, path: str | Path) -> Path:
        """These weights as a `.pt` state (a study pins its copy)."""
        return _save_pt(path, self.net, self.accuracy)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> np.ndarray:
        if x.shape[1:] != (1, 16, 16):
            raise ValueError(f"digits features: expected images (N, 1, 16, 16), got {tuple(x.shape)}")
        return torch.cat([self.net.features(b.float().cpu()) for b in x.split(512)]).numpy()


def train_digits_classifier(path: str | Path, seed: int = 0) -> DigitsFeatures:
    """A new digit classifier trained on the embedded digits (held out: 300 of them, chosen by `seed`),
    saved at `path` as a `.pt` state: how the shipped weights were made. Another machine trains other
    weights from the same seed, so scores made with two such files are not comparable."""
    from rfengine.data.digits import DigitsDataset
    net = DigitsNet()
    ds = DigitsDataset(16)
    x, y = ds.images, ds.labels
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ds), generator=g)
    test, train = perm[:300], perm[300:]
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(15):
        for idx in train[torch.randperm(len(train), generator=g)].split(64):
            xb = x[idx] + 0.05 * torch.randn(x[idx].shape, generator=g)  # a little noise: robust features
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (net(x[test]).argmax(1) == y[test]).float().mean().item()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _save_pt(path, net, acc)
    log.info("trained a digit feature classifier: held-out accuracy %.3f, saved at %s", acc, path)
    return DigitsFeatures(path)


def _save_pt(path: str | Path, net: DigitsNet, accuracy: float) -> Path:
    """A classifier as a `.pt` state ({"model", "accuracy"}, readable with `weights_only`), written atomically."""
    return storage.write_atomic(path, lambda tmp: torch.save({"model": net.state_dict(), "accuracy": accuracy}, tmp))


class InceptionFeatures:
    """Inception-v3 pool features from a local TorchScript file (see the module docstring)."""

    dim = 2048

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"inception weights not found: {path} (pass a local TorchScript file; "
                                    "nothing is downloaded)")
        self.device = torch.device(device)
        self.net = torch.jit.load(str(path), map_location=self.device).eval()
        self.accuracy = None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> np.ndarray:
        out = []
        for b in x.split(100):
            b = b.to(self.device).float()
            if b.shape[1] == 1:
                b = b.repeat(1, 3, 1, 1)
            b = ((b.clamp(-1, 1) + 1) * 127.5).round()                     # uint8 range, as the net expects
            b = F.interpolate(b, size=(299, 299), mode="bilinear", align_corners=False)
            out.append(self.net(b.to(torch.uint8), return_features=True).float().cpu())
        return torch.cat(out).numpy()


def build_extractor(name: str, weights: str | None = None, device="cpu"):
    if name == "digits":
        return DigitsFeatures(weights)
    if name == "inception":
        if not weights:
            raise ValueError("features=inception needs --weights PATH (a local TorchScript Inception file)")
        return InceptionFeatures(weights, device)
    raise ValueError(f"features: expected 'digits' or 'inception', got {name!r}")
