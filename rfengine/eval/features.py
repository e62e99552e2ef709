"""Feature extractors for Fréchet distances.

- `digits`: a small CNN classifier of the embedded digits (16x16); its 64-d penultimate layer is the
  feature space (the docs/objectives.md section 6 study's "FD in the feature space of a small digit classifier").
  Its weights ship with the package (`digits_classifier.safetensors`, study v3's pinned classifier),
  so a digits FD means the same on every machine: training it again is not bit-reproducible across
  machines (one machine's retrained classifier scored the same model 20.2 where another's gave 25.6).
  Its held-out accuracy is reported with every score. `train_digits_classifier` made it.
- `inception`: the TF FID Inception-v3 (`rfengine.eval.inception`: torch-fidelity's architecture, TF1 bilinear
  resize, the published weights file checked by SHA-256 and read without running code): pool features (2048-d)
  for FID and precision/recall, the spatial features (2023-d) for sFID and the logits for the Inception Score,
  as ADM's evaluator takes them from the TF graph. docs/evaluation.md says why this network and how close.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rfengine import storage
from rfengine.eval import inception

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
    fd_name = "fd"  # a Fréchet distance, not the FID

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

    def extract(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """{"pool": (N, 64)}: the features of `__call__`, under the name the scoring code reads."""
        return {"pool": self(x)}

    @property
    def info(self) -> dict:
        return {"network": "digits classifier", "weights": str(self.path), "accuracy": self.accuracy}


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
    """The FID Inception (`rfengine.eval.inception`) on `device`: `extract(x)` -> {"pool": (N, 2048),
    "spatial": (N, 2023)} float32 of images x (N, C, H, W) in [-1, 1] (C = 1 is repeated to RGB), `__call__` the
    pool features alone, `logits(pool)` the (N, 1008) logits behind the Inception Score. The weights file is
    checked against `sha256` (the published file's) before it is read; `info` names it."""

    dim = 2048
    fd_name = "fid"

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu",
                 sha256: str = inception.PUBLISHED_SHA256, batch: int = 50):
        self.device = torch.device(device)
        self.net, path, digest = inception.load_inception(weights, sha256, device=self.device)
        self.batch = batch
        self.info = {"network": "inception-2015-12-05 (TF FID Inception-v3, PyTorch port)", "weights": str(path),
                     "sha256": digest, "published_weights": digest == inception.PUBLISHED_SHA256}

    @torch.no_grad()
    def extract(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"inception features: expected images (N, 1 or 3, H, W), got {tuple(x.shape)}")
        pool, spatial = [], []
        # full float32 convolutions on GPUs too (cuDNN would use TF32 by default): the TF graph runs in float32
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            for b in x.split(self.batch):
                pixels = ((b.to(self.device, torch.float32) + 1) * 127.5).round().clamp(0, 255)  # the uint8 values
                p, s = self.net(pixels.expand(-1, 3, -1, -1))
                pool.append(p.cpu())
                spatial.append(s.cpu())
        return {"pool": torch.cat(pool).numpy(), "spatial": torch.cat(spatial).numpy()}

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return self.extract(x)["pool"]

    @torch.no_grad()
    def logits(self, pool: torch.Tensor) -> torch.Tensor:
        return self.net.logits(pool.to(self.device, torch.float32)).cpu()


def build_extractor(name: str, weights: str | None = None, device="cpu", sha256: str | None = None,
                    batch: int = 50):
    """`digits` (the shipped classifier, or `weights`) or `inception` (`weights`: a local file, or None for the
    torch hub cache / download; `sha256`: the expected hash, the published file's by default; `batch`: images per
    network pass)."""
    if name == "digits":
        return DigitsFeatures(weights)
    if name == "inception":
        return InceptionFeatures(weights, device, sha256 or inception.PUBLISHED_SHA256, batch)
    raise ValueError(f"features: expected 'digits' or 'inception', got {name!r}")
