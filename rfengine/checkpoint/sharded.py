"""Sharded (FSDP) checkpoints: every process writes its shards with torch.distributed.checkpoint into a
hidden folder, rank 0 adds `meta.pt` and renames the folder into place when all shards are on disk; a
failure on any process raises on every process. Loads into any process count."""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch

from rfengine import storage
from rfengine.checkpoint.background import BackgroundWriter
from rfengine.checkpoint.reading import META
from rfengine.storage import fsync_dir, fsync_file


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
            fsync_file(tmp / META)
            fsync_dir(tmp)
            if before_rename is not None:
                before_rename(tmp)
            old = path.with_name(f".{path.name}.old")
            if path.exists():  # the same step saved again: the old set keeps a name until the new one has its
                shutil.rmtree(old, ignore_errors=True)  # (a crash between the renames: `remove_temporaries`
                os.replace(path, old)  # puts the old set back)
            os.replace(tmp, path)
            fsync_dir(path.parent)
            shutil.rmtree(old, ignore_errors=True)
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
