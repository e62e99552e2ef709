"""The TensorFlow FID Inception-v3 (`inception-2015-12-05`, the graph behind FID, sFID and IS as ADM's evaluator
and most published tables compute them), in PyTorch.

The architecture follows torch-fidelity's `FeatureExtractorInceptionV3` (itself pytorch-fid's FID Inception): the
TF graph differs from torchvision's Inception-v3 in three places (average pools that do not count padding, a max pool
in the last block, 1008 classes), and its input is resized with TF1's `ResizeBilinear` (no half-pixel centres), not
PyTorch's bilinear. Module names equal the keys of the published PyTorch port of the TF weights, the same file from
both libraries (`pt_inception-2015-12-05-6726825d.pth`, `weights-inception-2015-12-05-6726825d.pth`; SHA-256
`PUBLISHED_SHA256`). The file is checked against that hash before it is read, and read with `weights_only=True`.

What ADM's `evaluations/evaluator.py` takes from the TF graph, and where it is here:
  pool_3:0                   -> `forward(...)[0]`: (N, 2048), FID, precision/recall
  mixed_6/conv:0 [..., :7]   -> `forward(...)[1]`: Mixed_6d's 1x1 branch, first 7 channels, flattened in TF's
                                (H, W, C) order: (N, 17*17*7 = 2023), sFID
  softmax/logits/MatMul      -> `logits(pool)`: pool @ W without the bias, (N, 1008), Inception Score
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from rfengine import storage

log = logging.getLogger("rfengine")

PUBLISHED_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
# The same bytes under two names; the first is downloaded when neither is in the torch hub cache.
WEIGHTS_URLS = {
    "weights-inception-2015-12-05-6726825d.pth":
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    "pt_inception-2015-12-05-6726825d.pth":
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
}
SIZE = 299          # the graph resizes every input to 299 x 299
SPATIAL_CHANNELS = 7


# --------------------------------------------------------------------------- input resize, as TF1 does it

def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 `ResizeBilinear(align_corners=False)` of float (N, C, H, W) to (N, C, size, size): source coordinate
    `i * in/out` (no half-pixel offset, unlike PyTorch's bilinear), computed in float32 as TF does, interpolated
    along x first, then y."""
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"resize: expected float (N, C, H, W), got {x.dtype} {tuple(x.shape)}")

    def weights(n_in: int):
        scale = torch.tensor(float(n_in), device=x.device) / size      # float32 division, as TF computes it
        src = torch.arange(size, dtype=torch.float32, device=x.device) * scale
        lo = src.floor()
        frac = (src - lo).to(x.dtype)
        lo = lo.long().clamp(max=n_in - 1)
        return lo, (lo + 1).clamp(max=n_in - 1), frac

    y0, y1, fy = weights(x.shape[2])
    x0, x1, fx = weights(x.shape[3])
    left, right = x.index_select(3, x0), x.index_select(3, x1)
    rows = left + (right - left) * fx                                   # (N, C, H, size)
    top, bottom = rows.index_select(2, y0), rows.index_select(2, y1)
    return top + (bottom - top) * fy[:, None]                            # (N, C, size, size)


# --------------------------------------------------------------------------- blocks

class BasicConv2d(nn.Module):
    """Conv (no bias) + batch norm (TF's epsilon 0.001) + ReLU."""

    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x):
    # TF's average pool divides by the number of real pixels under the window, not by 9
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def branches(self, x):
        return [self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool_tf(x))]

    def forward(self, x):
        return torch.cat(self.branches(x), 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions; `c7` inner channels."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def branches(self, x):
        dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            dbl = conv(dbl)
        return [self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                dbl,
                self.branch_pool(_avg_pool_tf(x))]

    def forward(self, x):
        return torch.cat(self.branches(x), 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs. `max_pool`: the TF graph's last block pools with max where the
    paper (and torchvision) average."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x),
                          self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
                          self.branch_pool(pooled)], 1)


# --------------------------------------------------------------------------- the network

class TFInceptionV3(nn.Module):
    """The FID Inception. `forward(x)`: float (N, 3, H, W) pixel values in [0, 255] -> pool (N, 2048) and spatial
    (N, 2023) float32 features; `logits(pool)` -> (N, 1008)."""

    pool_dim, spatial_dim, classes = 2048, 17 * 17 * SPATIAL_CHANNELS, 1008

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, self.classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"inception: expected images (N, 3, H, W), got {tuple(x.shape)}")
        x = resize_bilinear_tf1(x.float(), SIZE)                           # (N, 3, 299, 299)
        x = (x - 128) / 128                                                 # the graph's Sub and Mul (by 2^-7)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))   # (N, 64, 147, 147)
        x = F.max_pool2d(x, 3, stride=2)                                    # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                       # (N, 192, 71, 71)
        x = F.max_pool2d(x, 3, stride=2)                                    # (N, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))                  # (N, 288, 35, 35)
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))                  # (N, 768, 17, 17)
        parts = self.Mixed_6d.branches(x)
        spatial = parts[0][:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)  # (N, 2023), TF's HWC order
        x = self.Mixed_6e(torch.cat(parts, 1))                              # (N, 768, 17, 17)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))                  # (N, 2048, 8, 8)
        return x.mean((2, 3)), spatial                                      # (N, 2048), (N, 2023)

    def logits(self, pool: torch.Tensor) -> torch.Tensor:
        """(N, 2048) pool features -> (N, 1008) logits without the bias, as ADM's softmax graph takes them."""
        return pool @ self.fc.weight.T


# --------------------------------------------------------------------------- weights

def find_weights(path: str | Path | None = None, download: bool = True) -> Path:
    """The weights file: `path` when given; else either published name in the torch hub cache
    (`torch.hub.get_dir()/checkpoints`); else (with `download`) torch-fidelity's release file, fetched there."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"inception weights not found: {path}")
        return path
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for name in WEIGHTS_URLS:
        if (cache / name).is_file():
            return cache / name
    name, url = next(iter(WEIGHTS_URLS.items()))
    if not download:
        raise FileNotFoundError(f"inception weights: none in {cache}; pass --weights PATH to a copy of {name} "
                                f"(or pytorch-fid's {list(WEIGHTS_URLS)[1]}, the same file)")
    cache.mkdir(parents=True, exist_ok=True)
    log.info("downloading the FID Inception weights from %s to %s", url, cache / name)
    try:
        torch.hub.download_url_to_file(url, str(cache / name), progress=False)
    except Exception as e:  # urllib raises several types offline; the user needs the way out
        raise FileNotFoundError(f"inception weights: none in {cache} and the download of {url} failed ({e}); "
                                f"pass --weights PATH to a local copy") from e
    return cache / name


def load_inception(path: str | Path | None = None, sha256: str = PUBLISHED_SHA256, download: bool = True,
                   device: str | torch.device = "cpu") -> tuple[TFInceptionV3, Path, str]:
    """The network with the weights at `path` (see `find_weights`), in eval mode on `device`, and the file and its
    SHA-256. A file whose SHA-256 is not `sha256` is refused before it is read."""
    path = find_weights(path, download)
    digest = storage.sha256_file(path)
    if digest != sha256.lower():
        which = " (the published pt_inception-2015-12-05-6726825d.pth)" if sha256 == PUBLISHED_SHA256 else ""
        raise ValueError(f"inception weights {path}: SHA-256 {digest} is not the expected {sha256}{which}; "
                         "refusing to read it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"inception weights {path}: holds objects other than tensors, which reading would run as "
                         "code; refusing it") from e
    try:
        net = TFInceptionV3()
        net.load_state_dict(state)
    except Exception as e:  # not a dict, missing or extra keys, wrong shapes: one line naming the file
        why = " ".join(str(e).split())
        raise ValueError(f"inception weights {path}: not the FID Inception's state dict "
                         f"({why[:300]}{'...' if len(why) > 300 else ''})") from e
    return net.to(device).eval().requires_grad_(False), path, digest


def save_random_weights(path: str | Path, seed: int = 0) -> Path:
    """A stand-in for the published weights file: the same format (a `torch.save`d state dict with the same keys and
    shapes) holding random weights (He-normal convolutions, so features keep their scale through the 94 layers).
    For rehearsing the scoring path where the real file cannot be had; its numbers mean nothing, and it loads only
    with its own SHA-256 passed as the expected one. Written atomically."""
    g = torch.Generator().manual_seed(seed)
    net = TFInceptionV3()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
        net.fc.weight.copy_(torch.randn(net.fc.weight.shape, generator=g) * 0.05)
        net.fc.bias.copy_(torch.randn(net.fc.bias.shape, generator=g))
    return storage.write_atomic(path, lambda tmp: torch.save(net.state_dict(), tmp))
