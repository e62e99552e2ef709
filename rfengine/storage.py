"""Where runs meet the filesystem: files written atomically (complete or not at all), one clear error
for a failed write (which file, why), and the pre-flight check that a run folder can hold what the run
will write before any work starts. Everything that writes a file (checkpoints, samples, latents, the
studies' results) uses `write_atomic`; nothing here knows what a checkpoint is.

A failed write becomes a `WriteError` naming the file and the cause as the operating system words
it (`No space left on device`, `Read-only file system`, `Permission denied`, or the folder that
vanished). Some writers (torch.save's zip writer) lose the errno; the cause is then read off the
filesystem itself: no free space, a folder that no longer exists, or one that is no longer writable.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

MB = 1e6


class WriteError(OSError):
    """Writing a run's file failed; the message names the file and the cause."""


def cause(exc: BaseException, path: Path) -> str:
    """The reason a write of `path` failed, in the operating system's words where it gave one."""
    folder = Path(path).parent
    if not folder.exists():
        return f"{os.strerror(errno.ENOENT)}: the folder {folder} was removed"
    for e in _causes(exc):
        if isinstance(e, OSError) and e.errno:
            return os.strerror(e.errno)
    if not os.access(folder, os.W_OK):
        return f"{os.strerror(errno.EACCES)} (or {os.strerror(errno.EROFS)})"
    free = shutil.disk_usage(folder).free
    if free < 1 * MB:
        return f"{os.strerror(errno.ENOSPC)} ({free / MB:.1f} MB free)"
    exc = next((e for e in _causes(exc) if not isinstance(getattr(e, "failures", None), dict)), exc)
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def write_error(path: Path, exc: BaseException) -> WriteError:
    return WriteError(f"writing {path} failed: {cause(exc, path)}")


def existing_ancestor(path: Path) -> Path:
    """`path` itself if it exists, else its nearest existing parent (where it would be created)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def preflight(out_dir: Path, need_bytes: float, what: str) -> None:
    """Refuse to start (a WriteError, nothing created) when `out_dir` cannot be written or its
    filesystem has less than `need_bytes` free; `what` says what the bytes are for."""
    base = existing_ancestor(out_dir)
    if not base.is_dir():
        raise WriteError(f"train.out_dir: {base} is not a folder, so {out_dir} cannot be created")
    if not os.access(base, os.W_OK | os.X_OK):
        reason = os.strerror(errno.EROFS) if _read_only(base) else os.strerror(errno.EACCES)
        raise WriteError(f"train.out_dir: {base} is not writable ({reason}); nothing was started")
    free = shutil.disk_usage(base).free
    if free < need_bytes:
        raise WriteError(f"train.out_dir: {out_dir} needs {need_bytes / MB:.1f} MB ({what}) but its filesystem "
                         f"has {free / MB:.1f} MB free; free space, lower train.keep_ckpts or pick another folder")


def _causes(exc: BaseException, depth: int = 0) -> list:
    """`exc`, what it was raised from, and the per-process errors inside a torch.distributed.checkpoint
    CheckpointException (`failures`: rank -> (exception, traceback)), which hold the OS's own error."""
    if exc is None or depth > 4:
        return []
    found = [exc]
    failures = getattr(exc, "failures", None)
    for rank_exc in failures.values() if isinstance(failures, dict) else []:
        found += _causes(rank_exc[0] if isinstance(rank_exc, tuple) else rank_exc, depth + 1)
    return found + _causes(exc.__cause__, depth + 1) + _causes(exc.__context__, depth + 1)


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def bytes_in(paths) -> int:
    """Total size of the files (or folders) that exist among `paths`."""
    total = 0
    for p in paths:
        p = Path(p)
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------

def fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_atomic(path: str | Path, write, before_rename=None) -> Path:
    """Make `path` appear complete or not at all: `write(tmp_path)` writes a hidden temporary file,
    which is fsynced, then renamed over `path`, and the folder is fsynced. `before_rename(tmp_path)`,
    if given, runs between the fsync and the rename (the crash tests use it). The folder must exist:
    one that vanished is an error, not silently made again (a lost mount would hide the loss). A
    failure is a `storage.WriteError` naming `path` and the cause; the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_file(tmp)
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except Exception as e:
        raise write_error(path, e) from e
    finally:
        with contextlib.suppress(OSError):  # a read-only or vanished folder: nothing to remove
            if tmp.exists():
                tmp.unlink()
    return path


def write_json(path: str | Path, obj) -> Path:
    """`obj` as indented JSON, written atomically (`write_atomic`)."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1)))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of the bytes of `path`, read in `chunk`-byte pieces (memory does not grow with the file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
