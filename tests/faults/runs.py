"""The run every fault test kills, fills or restarts, and the one way it is launched: 12 steps of the tiny
digits DiT with ReflexFlow, label dropout and flips (so that the noise, the dropout and the data order all
have to resume exactly), checkpoints every 4 steps. An uninterrupted run of it is the `straight` fixture
(tests/faults/conftest.py), made once per process count and mode for the whole session."""
from __future__ import annotations

from tests.helpers import TINY, set_args, torchrun, train_cli

STEPS = 12
RUN = [*TINY, f"train.steps={STEPS}", "train.ckpt_every=4", "objective.name=reflexflow", "data.flip=true",
       "model.class_dropout=0.3", "train.tensorboard=false"]


def launch(nproc: int, out, *extra: str, env: dict | None = None, mode: str = "ddp", run=(), restarts: int = 0,
           timeout: int = 240):
    """`RUN` (plus the overrides `run`) into `out` on `nproc` processes (1: `python -m rfengine.train`; more:
    torchrun, restarting the group up to `restarts` times); `extra` goes to the command line."""
    args = ["--config", "configs/tiny_fm.yaml", *set_args(*RUN, *run, f"train.out_dir={out}", f"parallel.mode={mode}"),
            *extra]
    if nproc == 1:
        return train_cli(*args, env=env, timeout=timeout)
    return torchrun(nproc, *args, env=env, timeout=timeout, restarts=restarts)
