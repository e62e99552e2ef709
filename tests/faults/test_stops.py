"""Stops that hold: a SIGTERM is never lost, whenever in the step it lands, and every process stops at
the same step, even when only one of them received it."""
import atexit
import faulthandler
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


def _train(rank: int, out, mode: str) -> dict:
    """The trainer's run, rank 1 alone getting SIGTERM after the third step's flag read. The wrapper and the
    trainer refer to each other: the wrapper is removed after the run, so that the trainer is freed on
    return, as a command's is. (An FSDP2 model's own reference cycles still need the collector:
    `parallel.shutdown` runs it before the teardown.)"""
    tr = Trainer(tiny_cfg(out, *STOP, f"parallel.mode={mode}"))
    step = tr.train_step

    def train_step(x1, y):
        result = step(x1, y)
        if rank == 1 and tr.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return result
    tr.train_step = train_step
    try:
        return tr.run()
    finally:
        del tr.train_step


def _rank(rank: int, port: int, out, mode: str) -> None:
    """One process of a two-process run. Where it got to (`rank<r>.stages`) and, should it die of a signal,
    every thread's stack (`rank<r>.fault`) are kept for the test's message."""
    fault = open(out / f"rank{rank}.fault", "w")
    faulthandler.enable(fault, all_threads=True)
    stages = open(out / f"rank{rank}.stages", "w", buffering=1)
    atexit.register(stages.write, "exit\n")  # at interpreter exit, after the last line below
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    summary = _train(rank, out, mode)
    (out / f"rank{rank}.json").write_text(json.dumps(summary))
    stages.write("run\n")
    parallel.shutdown()
    stages.write("shutdown\n")


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
    died = {r: ((tmp_path / f"rank{r}.stages").read_text().split(), (tmp_path / f"rank{r}.fault").read_text())
            for r, p in enumerate(procs) if p.exitcode != 0}
    assert not died, f"exit codes {[p.exitcode for p in procs]}; stages reached and stacks: {died}"
    summaries = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert summaries == [{"step": 4, "stopped": True}] * 2
    assert _checkpointed(tmp_path) == [4]


def test_shutdown_frees_garbage_that_holds_the_process_group_before_tearing_it_down(tmp_path, monkeypatch):
    """A model kept alive only by a reference cycle is collected by `shutdown`, while the interpreter is
    whole, not by the collector at exit (where a gloo group's teardown can abort a finished run)."""
    import gc
    import weakref
    torch.distributed.init_process_group("gloo", store=torch.distributed.FileStore(str(tmp_path / "store"), 1),
                                         rank=0, world_size=1)
    gc.disable()  # no automatic collection: only shutdown's own can free the cycle
    try:
        class Holder:
            pass
        h = Holder()
        h.group, h.me = torch.distributed.group.WORLD, h  # a cycle holding the group
        alive = weakref.ref(h)
        del h
        assert alive() is not None
        real, freed_first = torch.distributed.destroy_process_group, []

        def destroy(*args, **kwargs):
            freed_first.append(alive() is None)
            return real(*args, **kwargs)
        monkeypatch.setattr(torch.distributed, "destroy_process_group", destroy)
        parallel.shutdown()
        assert freed_first == [True] and alive() is None and not torch.distributed.is_initialized()
    finally:
        gc.enable()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
