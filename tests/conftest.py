"""Shared test setup: deterministic, quiet, and small."""
import os

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
# One intra-op thread per process (and per subprocess, which inherits it): the suite's models are tiny, and
# on a small machine two threads per process shared with the multi-process tests run them several times
# slower than one (a study re-creation test: 110 s on two threads against 12 s on one, with the cores busy).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The fused Triton kernels run on CPU tensors through the interpreter; it must be switched on before
# any @triton.jit function is defined (it changes nothing for CUDA tensors' dispatch).
os.environ.setdefault("TRITON_INTERPRET", "1")
# The kernels' value checks (times in [0, 1]) read tensors back to the host, so they are off on the
# training path; the suite runs with them on, and tests/test_device.py turns them off to count reads.
os.environ.setdefault("RFENGINE_CHECK_VALUES", "1")

import logging

import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def inductor_cache(tmp_path_factory, monkeypatch):
    """One torch.compile cache folder per test process (TORCHINDUCTOR_CACHE_DIR; each xdist worker has its
    own), fresh each run: a test that compiles a graph another test compiled before reuses its C++ build instead of running the
    compiler again (each build takes seconds on a small CPU), and dynamo starts from a reset."""
    path = tmp_path_factory.getbasetemp() / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(path))
    torch._dynamo.reset()
    return path


@pytest.fixture(autouse=True)
def _no_stale_log_handlers():
    """A command run in-process (`main([...])`) installs rfengine's stderr and log.txt handlers on the root
    logger; bound to that test's captured stderr, they would write into a closed stream in a later test."""
    yield
    root = logging.getLogger()
    for h in root.handlers[:]:
        if type(h) is logging.StreamHandler or isinstance(h, logging.FileHandler):
            root.removeHandler(h)
            h.close()
