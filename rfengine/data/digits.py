"""The embedded default data set: scikit-learn's handwritten digits (1797 real 8x8 images, 10
classes, shipped inside the scikit-learn package, so nothing is downloaded), upsampled to
`image_size` and scaled to [-1, 1]."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class DigitsDataset(torch.utils.data.Dataset):
    """Items: (image (1, S, S) float32 in [-1, 1], label int64)."""

    num_classes = 10

    def __init__(self, image_size: int = 16):
        from sklearn.datasets import load_digits  # reads the copy inside the installed package

        d = load_digits()
        x = torch.from_numpy(d.images).float().unsqueeze(1) / 16.0            # (N, 1, 8, 8) in [0, 1]
        if image_size != 8:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        self.images = (x.clamp(0, 1) * 2 - 1).contiguous()                    # (N, 1, S, S)
        self.labels = torch.from_numpy(d.target).long()
        self.shape = tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]
