"""Image folders with one sub-folder per class (CIFAR-10, CelebA-64 style): resized on the short
side, centre-cropped to `image_size`, scaled to [-1, 1]."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is `size` (bicubic), then crop the centre square."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


class ImageFolderDataset(torch.utils.data.Dataset):
    """Items: (image (3, S, S) float32 in [-1, 1], label int64). Classes are the sorted sub-folders."""

    def __init__(self, root: str | Path, image_size: int):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data.path: image folder not found: {root}")
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"data.path: {root} has no class sub-folders (expected root/<class>/<image>)")
        self.files: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            for f in sorted((root / name).rglob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    self.files.append((f, label))
        if not self.files:
            raise ValueError(f"data.path: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
        self.num_classes = len(self.classes)
        self.image_size = image_size
        self.shape = (3, image_size, image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path, label = self.files[i]
        try:
            with Image.open(path) as img:
                img = center_crop_resize(img.convert("RGB"), self.image_size)
                arr = np.asarray(img, dtype=np.float32)
        except Exception as e:  # PIL raises several types; the user needs the file name
            raise ValueError(f"unreadable image file {path}: {e}") from e
        x = torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0
        return x, torch.tensor(label, dtype=torch.long)
