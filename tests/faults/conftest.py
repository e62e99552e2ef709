"""Fixtures of the fault tests."""
import pytest

from tests.faults.runs import STEPS, launch
from tests.helpers import read_metrics


@pytest.fixture(scope="session")
def straight(tmp_path_factory):
    """`get(nproc, mode="ddp", run=())`: the folder of an uninterrupted run of `tests.faults.runs.RUN`, made
    once per (process count, mode, overrides) in each test process (xdist worker) and shared by its fault
    tests. Only overrides that change the numbers belong in `run` (not keep_ckpts, not the logging)."""
    made = {}

    def get(nproc: int, mode: str = "ddp", run=()):
        key = (nproc, mode, tuple(run))
        if key not in made:
            out = tmp_path_factory.mktemp(f"straight{nproc}{mode}")
            r = launch(nproc, out, mode=mode, run=run)
            assert r.returncode == 0, r.stderr[-3000:]
            assert [row["step"] for row in read_metrics(out)] == list(range(1, STEPS + 1))
            made[key] = out
        return made[key]
    return get
