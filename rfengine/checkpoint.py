"""Checkpoints: atomic writes, discovery of the newest complete one, pruning, state-dict loading
that names every mismatch, sharded (FSDP) checkpoints and a safetensors weight export.

Two formats, both written under a hidden temporary name and renamed into place only when complete
(then the folder is fsynced), so a crash leaves either the old set of checkpoints or the new one:
- `checkpoints/step_XXXXXXXX.pt` (parallel.mode=ddp): one file holding a dict: step, model, ema,
  optimizer, scheduler, rng (one entry per rank), config, code_version, world_size, ...
- `checkpoints/step_XXXXXXXX/` (parallel.mode=fsdp): a `torch.distributed.checkpoint` folder, each
  process writing its own shards of model, ema and optimizer (keyed by parameter name, so it loads
  on any number of processes), plus `meta.pt` with everything else.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from rfengine import storage

log = logging.getLogger("rfengine")
_NAME = re.compile(r"^step_(\d{8})(\.pt)?$")
META = "meta.pt"  # the non-tensor part of a sharded checkpoint
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def checkpoint_path(folder: str | Path, step: int, sharded: bool = False) -> Path:
    return Path(folder) / (f"step_{step:08d}" if sharded else f"step_{step:08d}.pt")


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _fsync_file(path: Path) -> None:
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
        _fsync_file(tmp)
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except Exception as e:
        raise storage.write_error(path, e) from e
    finally:
        with contextlib.suppress(OSError):  # a read-only or vanished folder: nothing to remove
            if tmp.exists():
                tmp.unlink()
    return path


def write_json(path: str | Path, obj) -> Path:
    """`obj` as indented JSON, written atomically (`write_atomic`)."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1)))


def save_atomic(obj, path: str | Path, before_rename=None) -> Path:
    """torch.save `obj` to `path` so that `path` is either absent, the old file or the complete new one."""
    return write_atomic(path, lambda tmp: torch.save(obj, tmp), before_rename)


class BackgroundWriter:
    """Writes checkpoints in a thread, one at a time, so that the training loop pays for a snapshot of
    the state (a copy of its tensors in host memory), not for serialising it and syncing it to storage,
    which on network storage takes tens of seconds. Single files go through `save_atomic` and sharded
    folders through DCP's `async_save` and the same rename as `save_sharded`, so each appears as
    atomically as when written in the foreground and resume is unchanged: a crash during a background
    write leaves the previous checkpoints. At most one write is in flight (memory stays bounded: the
    next write waits for it); a failed write is kept for `failure()` and raised by `wait`."""

    def __init__(self):
        self._thread = None
        self._error = None

    def submit(self, state: dict, path: Path, before_rename=None, after=None) -> None:
        """A single-file checkpoint of `state` (snapshot now, written in the background)."""
        self.wait()
        snap = _snapshot(state)

        def work():
            save_atomic(snap, path, before_rename)
            if after is not None:
                after()
        self.start(work)

    def start(self, work) -> None:
        """Run `work()` in the writer thread (after the write in flight); its error is kept."""
        import threading
        self.wait()

        def run():
            try:
                work()
            except Exception as e:  # kept for the training loop, which stops every process on it
                self._error = e
        self._thread = threading.Thread(target=run, name="rfengine-checkpoint-writer")
        self._thread.start()

    def failure(self) -> Exception | None:
        """A finished write's error, without waiting for one in flight."""
        return self._error

    def wait(self) -> None:
        """Until the write in flight is on disk; raises its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _snapshot(obj):
    """A copy of every tensor in a nested state (host memory), so training can go on changing them."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj)
    return copy.deepcopy(obj)


# DCP warns when it runs without a process group; one process reading or writing a sharded checkpoint
# is intended here. A filter for the whole process, because a background save warns from DCP's own thread.
warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def _raise_if_any(error: Exception | None, tmp: Path, is_main: bool) -> None:
    """Collective: if any process failed, every process raises (none is left waiting in a later
    collective), and the incomplete folder is removed."""
    import torch.distributed as dist
    errors = [error]
    if dist.is_initialized() and dist.get_world_size() > 1:
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, None if error is None else str(error))
    failed = [e for e in errors if e is not None]
    if not failed:
        return
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    raise error if isinstance(error, storage.WriteError) else storage.WriteError(str(failed[0]))


def save_sharded(tensors: dict, meta: dict, path: str | Path, is_main: bool, before_rename=None,
                 writer: BackgroundWriter | None = None, group=None, after=None) -> Path:
    """Collective: every process writes its shards of `tensors` (nested state dicts of DTensors or
    plain tensors) with torch.distributed.checkpoint into a hidden folder; rank 0 adds `meta.pt`
    and renames the folder into place once all shards are on disk (DCP's last step gathers every
    process's write result on rank 0, so rank 0 finishing means every shard is written), then runs
    `after`. A failed write on any process raises a `storage.WriteError` on every process and
    leaves no folder behind.

    With a `writer`, the state is staged (copied to host memory) now and written in the background
    by DCP's `async_save` over `group` (a process group of its own, so its collectives never meet
    the training loop's); a failure is then the writer's (`failure()`, `wait()`) on every process
    where DCP's write failed, and on rank 0 where the rename failed."""
    import torch.distributed.checkpoint as dcp
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-dcp")
    error = None
    if is_main:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        except OSError as e:
            error = storage.write_error(tmp, e)
    _raise_if_any(error, tmp, is_main)

    def finish():
        try:
            torch.save(meta, tmp / META)  # no rename of its own: the folder's rename below makes it appear
            _fsync_file(tmp / META)
            _fsync_dir(tmp)
            if before_rename is not None:
                before_rename(tmp)
            if path.exists():  # the same step saved again (a resumed run): replace it whole
                shutil.rmtree(path)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except Exception as e:
            raise storage.write_error(path, e) from e
        if after is not None:
            after()

    if writer is not None:
        future = None
        try:
            future = dcp.async_save(tensors, checkpoint_id=str(tmp), process_group=group)
        except (Exception, dcp.api.CheckpointException) as e:
            error = storage.write_error(path, e)
        _raise_if_any(error, tmp, is_main)

        def work():
            try:
                future.result()
                if is_main:
                    finish()
            except (Exception, dcp.api.CheckpointException) as e:
                if is_main:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise e if isinstance(e, storage.WriteError) else storage.write_error(path, e) from None
        writer.start(work)
        return path
    try:
        dcp.save(tensors, checkpoint_id=str(tmp))  # files are fsynced by the writer
    except (Exception, dcp.api.CheckpointException) as e:  # DCP's own error is a BaseException
        error = storage.write_error(path, e)
    _raise_if_any(error, tmp, is_main)
    if is_main:
        try:
            finish()
        except storage.WriteError as e:
            error = e
    _raise_if_any(error, tmp, is_main)
    return path


def load_sharded(path: str | Path, tensors: dict) -> dict:
    """Fill `tensors` (nested state dicts laid out for this run: sharded or not, any process count)
    in place from a sharded checkpoint; a key or shape mismatch raises a ValueError naming it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
    try:
        dcp.load(tensors, checkpoint_id=str(path))
    except (Exception, CheckpointException) as e:
        failures = getattr(e, "failures", None)  # DCP gathers each rank's exception
        first = next(iter(failures.values())) if failures else e
        if isinstance(first, tuple):  # (exception, traceback frames)
            first = first[0]
        raise ValueError(f"checkpoint {path} does not match this model: {type(first).__name__}: {first}") from e
    return tensors


def estimate_bytes(model: torch.nn.Module, world: int = 1) -> int:
    """Bytes of one checkpoint of `model` (any device, `meta` included): model and EMA state, AdamW's
    two fp32 moments per trainable parameter, and the per-tensor and per-process overhead of the
    file formats (RNG states, config; measured on small checkpoints, generous)."""
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = [p for p in model.parameters() if p.requires_grad]
    moments = sum(8 * p.numel() for p in trainable)
    tensors = 2 * len(model.state_dict()) + 3 * len(trainable)
    return int(2 * state + moments + 1024 * tensors + 64 * 1024 * world)


def preflight(out: Path, model: torch.nn.Module, world: int, keep: int, other_bytes: int, other: str) -> None:
    """Before a run creates anything: its folder must be writable and have room for `keep + 1`
    checkpoints (the kept ones and the one being written), the EMA export (a quarter of a
    checkpoint) and `other_bytes` (`other`, e.g. sample grids), less what a resumed run already has
    there. Raises `storage.WriteError` naming the folder, the space needed and the space free."""
    ckpt = estimate_bytes(model, world)
    have = storage.bytes_in([p for _, p in list_checkpoints(Path(out) / "checkpoints")] + [Path(out) / "ema.safetensors"])
    need = (keep + 1) * ckpt + ckpt // 4 + other_bytes + 10**6 - have
    storage.preflight(Path(out), need, f"{keep + 1} checkpoints of {ckpt / 1e6:.1f} MB, the EMA export and {other}")


def resume_hint(folder: Path) -> str:
    """Where a stopped run resumes from, in words. From the names alone (a checkpoint gets its name only
    when complete): this runs on every process on an error path, where reading a file costs time."""
    found = list_checkpoints(folder)
    if not found:
        return "no complete checkpoint was written yet"
    step, path = found[-1]
    return (f"the last complete checkpoint is {path} (step {step}); once the cause is fixed, run the "
            "same command with --resume auto")


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every file named like a checkpoint, oldest first (temporary files never match)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


# What a .pt file may hold beyond tensors and plain containers, read without running code: SiT's
# training checkpoints keep their argparse.Namespace under `args`; rfengine checkpoints written
# before the RNG states were stored as tensors hold numpy's Mersenne-Twister state (a uint32 array).
_SAFE_GLOBALS = [argparse.Namespace, np.zeros(1).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]
_BLOCKED = re.compile(r"GLOBAL (\S+)")


class UnsafeFileError(ValueError):
    """A .pt file that could only be read by running code named in it (a pickle global outside the
    allow-list): refused, never skipped as merely damaged."""


def read_pt(path: str | Path, what: str = "checkpoint"):
    """A .pt file read onto the CPU without running code: `torch.load(weights_only=True)` with a short
    allow-list (`_SAFE_GLOBALS`). A file that needs anything else raises `UnsafeFileError` naming the
    global it asked for; any other failure propagates."""
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _BLOCKED.search(str(e))
        if found is None:
            raise
        raise UnsafeFileError(
            f"{what} {path} refused: reading it would call {found.group(1)}, code named inside the file. rfengine "
            "reads .pt files without running code (torch.load weights_only=True); a file you trust can be "
            "converted to a plain state dict or a .safetensors file first") from None


def load(path: str | Path) -> dict:
    """Read a checkpoint onto the CPU; a missing, truncated or foreign file raises a ValueError naming it.
    For a sharded checkpoint this is its `meta.pt` plus `sharded: <folder>`; the tensors are read with
    `load_sharded` into the layout of the run that resumes."""
    path = Path(path)
    if path.is_dir():
        if not (path / ".metadata").is_file() or not (path / META).is_file():
            raise ValueError(f"checkpoint {path} is not a complete sharded checkpoint (no .metadata or {META})")
        try:
            meta = read_pt(path / META)
        except UnsafeFileError:
            raise
        except Exception as e:
            raise ValueError(f"checkpoint {path}/{META} is corrupt ({type(e).__name__}: {e})") from e
        if not isinstance(meta, dict) or "step" not in meta:
            raise ValueError(f"checkpoint {path} is not an rfengine training checkpoint (no step)")
        return {**meta, "sharded": str(path)}
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        ckpt = read_pt(path)
    except UnsafeFileError:
        raise
    except Exception as e:  # torch raises several types for a damaged archive
        raise ValueError(f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
        raise ValueError(f"checkpoint {path} is not an rfengine training checkpoint (no model/step)")
    return ckpt


def latest(folder: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint in `folder` that loads, skipping (and reporting) damaged ones. A file that
    would run code (`UnsafeFileError`) is not skipped: it stops the caller."""
    for step, path in reversed(list_checkpoints(folder)):
        try:
            return path, load(path)
        except UnsafeFileError:
            raise
        except ValueError as e:
            log.warning("skipping damaged checkpoint: %s", e)
    return None


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files left by a writer that was killed mid-write; returns what was removed."""
    folder = Path(folder)
    gone = sorted(folder.glob(".step_*.tmp-*")) if folder.is_dir() else []
    for p in gone:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        log.warning("removed an incomplete checkpoint left by a crashed writer: %s", p.name)
    return gone


def prune(folder: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (one that cannot be deleted is a warning: the
    new checkpoint is complete, and the next prune tries again)."""
    for _, path in list_checkpoints(folder)[:-keep]:
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as e:
            log.warning("old checkpoint %s not removed: %s", path, storage.cause(e, path))


def strip_prefixes(state: dict) -> dict:
    """Remove DDP (`module.`) and torch.compile (`_orig_mod.`) wrapper prefixes from parameter names."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def load_model_state(model: torch.nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Load weights strictly; a mismatch raises a ValueError naming missing, unexpected and
    wrongly shaped keys (for example a checkpoint from another model config)."""
    state = strip_prefixes(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                parts.append(f"{title} ({len(items)}): {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}")
        raise ValueError(f"{source} does not match this model: " + "; ".join(parts))
    model.load_state_dict(state)


def capture_rng() -> dict:
    """Every random state this process uses, as tensors and plain types (so that a checkpoint loads
    with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    npr = state["numpy"]
    if isinstance(npr, dict):
        npr = (npr["name"], npr["keys"].numpy().astype(np.uint32), npr["pos"], npr["has_gauss"], npr["cached_gaussian"])
    np.random.set_state(npr)  # (or the tuple of checkpoints written before: numpy arrays, read by the allow-list)
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Weight export: one safetensors file that loads into a single-process model
# ---------------------------------------------------------------------------------------------

def export_safetensors(state: dict, path: str | Path, metadata: dict) -> Path:
    """Write full (unsharded) weights atomically as safetensors; `metadata` (JSON-able) goes into the
    header under `rfengine` so that the file alone rebuilds the model."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in strip_prefixes(state).items()}

    def write(tmp):
        save_file(tensors, str(tmp), metadata={"rfengine": json.dumps(metadata)})
        os.chmod(tmp, 0o644)
    return write_atomic(path, write)


def load_safetensors(path: str | Path) -> tuple[dict, dict]:
    """(state dict, rfengine metadata) from a file written by `export_safetensors`."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("rfengine", "null"))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path} has no rfengine metadata; it was not written by rfengine's export")
    return state, meta
