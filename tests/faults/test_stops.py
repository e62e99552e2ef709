"""Stops that hold: a SIGTERM is never lost, whenever in the step it lands, and every process stops at
the same step, even when only one of them received it."""
import json
import multiprocessing
import os
import signal
import socket

import pytest
import torch

from rfengine import checkpoint, parallel
from rfengine.trainer import Trainer
from tests.helpers import tiny_cfg

STOP = ["train.steps=8", "train.log_every=1000"]  # no logged step before the stop: the flag read is the only reduction


def _checkpointed(out) -> list[int]:
    return [step for step, _ in checkpoint.list_checkpoints(out / "checkpoints")]


def test_a_sigterm_inside_the_flag_read_stops_the_run(tmp_path, monkeypatch):
    """On a GPU the step waits in the flag read, so that is where a preemption notice usually lands.
    The request must survive the read (not be overwritten by the value agreed before it) and stop the
    run at that step or the next, with a checkpoint."""
    tr = Trainer(tiny_cfg(tmp_path, *STOP))
    real = parallel.all_reduce

    def signalled(t, op=torch.distributed.ReduceOp.SUM):
        out = real(t, op=op)
        if tr.step == 2:  # the third step's flag read
            os.kill(os.getpid(), signal.SIGTERM)
        return out
    monkeypatch.setattr(parallel, "all_reduce", signalled)
    out = tr.run()
    assert out["stopped"] and out["step"] in (3, 4), out
    assert _checkpointed(tmp_path) == [out["step"]]


def _rank(rank: int, port: int, out, mode: str) -> None:
    """One process of a two-process run; rank 1 alone gets SIGTERM, after the third step's flag read."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tr = Trainer(tiny_cfg(out, *STOP, f"parallel.mode={mode}"))
    step = tr.train_step

    def train_step(x1, y):
        result = step(x1, y)
        if rank == 1 and tr.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return result
    tr.train_step = train_step
    summary = tr.run()
    (out / f"rank{rank}.json").write_text(json.dumps(summary))
    parallel.shutdown()  # meet before teardown: a rank that tears gloo down while the other still talks aborts


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_sigterm_on_one_rank_stops_every_rank_at_the_same_step(tmp_path, mode):
    """Rank 1's request is agreed at the next step's flag read: both processes stop at step 4 and save it,
    where acting on the local request sent rank 1 into the save while rank 0 went on training (a hang)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(rank, port, tmp_path, mode)) for rank in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    hung = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, f"processes {hung} still running after 120 s: the ranks split on the stop"
    assert [p.exitcode for p in procs] == [0, 0]
    summaries = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert summaries == [{"step": 4, "stopped": True}] * 2
    assert _checkpointed(tmp_path) == [4]
