"""Writing checkpoints off the training loop's path: `save_atomic` (one file, complete or absent) and
`BackgroundWriter` (one write at a time in a thread, from a host snapshot of the state)."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from rfengine.storage import write_atomic


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
