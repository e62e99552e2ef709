"""Image and statistics files in the format of ADM's evaluator (`.npz`): `arr_0` uint8 images (N, H, W, C), and in a
reference file optionally the FID statistics `mu` (D,), `sigma` (D, D) and the sFID ones `mu_s`, `sigma_s`.

`NpzImages` reads `arr_0` batch by batch from the zip member's stream, so memory holds one batch whatever N is.
`np.load(mmap_mode=...)` cannot map a member of an `.npz`; the stream works for both kinds numpy writes: `np.savez`
(members stored) and `np.savez_compressed` (deflated). Nothing is unpickled: an object array is refused.
`NpzWriter` writes such a file member by member, an array's rows in chunks (stored, as `np.savez` does).
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.lib.format as npformat

# the statistics of each kind of feature, under the names of ADM's reference batches
STATS_KEYS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}


class _OpenZip:
    """An open zip (`self._zip`) closed by `close()` or at the end of a `with` block."""

    def close(self) -> None:
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class NpzImages(_OpenZip):
    """`arr_0` of an `.npz` file: `shape` (N, H, W, C), `batches(size)` yields uint8 (b, H, W, C) arrays in file order.
    Use as a context manager or call `close()`."""

    def __init__(self, path: str | Path, key: str = "arr_0"):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"images not found: {self.path} (expected an .npz with {key})")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile as e:
            raise ValueError(f"{self.path}: not an .npz file ({e})") from e
        self._key, self._member = key, f"{key}.npy"
        try:
            if self._member not in self._zip.namelist():
                raise ValueError(f"{self.path}: no {key} (expected uint8 images N x H x W x C)")
            with self._zip.open(self._member) as f:
                shape, dtype = _read_header(f, self.path, key)
            if dtype != np.uint8 or len(shape) != 4 or shape[3] not in (1, 3):
                raise ValueError(f"{self.path}: {key} must be uint8 (N, H, W, C) with C 1 or 3, got {dtype} {shape}")
        except Exception:
            self._zip.close()
            raise
        self.shape = tuple(int(s) for s in shape)

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """uint8 arrays (b, H, W, C), b = `size` except for the last, read in order from the start of the file."""
        if size < 1:
            raise ValueError(f"batch size: expected >= 1, got {size}")
        per_image = int(np.prod(self.shape[1:]))
        with self._zip.open(self._member) as f:
            _read_header(f, self.path, self._key)
            for start in range(0, len(self), size):
                b = min(size, len(self) - start)
                buf = bytearray(b * per_image)
                got, view = 0, memoryview(buf)
                try:
                    while got < len(buf) and (n := f.readinto(view[got:])):
                        got += n
                except (zipfile.BadZipFile, OSError) as e:  # a CRC or decompression error: damaged bytes
                    raise ValueError(f"{self.path}: {self._key} is damaged ({e})") from e
                if got != len(buf):
                    raise ValueError(f"{self.path}: {self._key} ends after {start + got // per_image} of "
                                     f"{len(self)} images (a truncated file)")
                yield np.frombuffer(buf, np.uint8).reshape(b, *self.shape[1:])


def _read_header(f, path: Path, key: str) -> tuple[tuple, np.dtype]:
    try:
        version = npformat.read_magic(f)
        read = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f".npy format version {version}")
        shape, fortran, dtype = read(f)
    except (ValueError, zipfile.BadZipFile, OSError) as e:  # a bad header, or a CRC/decompression error
        raise ValueError(f"{path}: {key} is not a readable .npy array ({e})") from e
    if fortran:
        raise ValueError(f"{path}: {key} is stored in Fortran order; save it C-contiguous (np.ascontiguousarray)")
    return shape, dtype


def read_stats(path: str | Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int | None]:
    """The statistics a reference file carries, float64: ({"pool": (mu, sigma), "spatial": (mu_s, sigma_s)}, each
    where present, empty for a file of images only), and the number of images behind them where the file records it
    (`stats_count`, written by `rfengine.eval.reference`; ADM's files do not). A mean without its covariance (or the
    reverse) is refused; a member that cannot be read (an object array, damaged bytes) is named with the file."""
    try:
        f = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not an .npz file ({e})") from e
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single .npy array, expected an .npz (arr_0 and/or mu, sigma, mu_s, sigma_s)")
    out = {}
    with f:
        for kind, (m, s) in STATS_KEYS.items():
            if (m in f) != (s in f):
                raise ValueError(f"{path}: has {m if m in f else s} without {s if m in f else m}")
            if m in f:
                mu, sigma = _member(f, m, path).astype(np.float64), _member(f, s, path).astype(np.float64)
                if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
                    raise ValueError(f"{path}: {m} must be (D,) and {s} (D, D), got {mu.shape} and {sigma.shape}")
                out[kind] = (mu, sigma)
        count = int(_member(f, "stats_count", path)) if "stats_count" in f else None
    return out, count


def _member(f, name: str, path) -> np.ndarray:
    """Member `name` of an open .npz, or a ValueError naming the file and the member."""
    try:
        return f[name]
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: {name} cannot be read ({e})") from e


class NpzWriter(_OpenZip):
    """An `.npz` that `np.load` reads, written member by member: `add(name, array)` for a small array,
    `stream(name, shape, dtype, chunks)` for a large one whose rows arrive in chunks (memory holds one chunk).
    Members are stored uncompressed, in ZIP64 form, as `np.savez` writes them, with a fixed timestamp, so the
    same arrays make the same bytes. Use as a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._zip = zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True)

    def add(self, name: str, array: np.ndarray) -> None:
        with self._zip.open(self._member(name), "w", force_zip64=True) as f:
            npformat.write_array(f, np.asanyarray(array), allow_pickle=False)

    def stream(self, name: str, shape: tuple, dtype, chunks) -> None:
        """Writes `name`.npy of `shape` and `dtype` from `chunks`, arrays whose rows (first axis) follow each other
        and add up to shape[0]; a missing or extra row is an error naming the member."""
        dtype = np.dtype(dtype)
        rows = 0
        with self._zip.open(self._member(name), "w", force_zip64=True) as f:
            npformat.write_array_header_1_0(f, {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False,
                                                "shape": tuple(shape)})
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=dtype)
                if chunk.shape[1:] != tuple(shape[1:]):
                    raise ValueError(f"{self.path}: {name} rows are {tuple(shape[1:])}, a chunk has {chunk.shape[1:]}")
                f.write(memoryview(chunk).cast("B"))  # no copy of the chunk
                rows += len(chunk)
        if rows != shape[0]:
            raise ValueError(f"{self.path}: {name} was declared with {shape[0]} rows, {rows} were written")

    @staticmethod
    def _member(name: str) -> zipfile.ZipInfo:
        return zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
