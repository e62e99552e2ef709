"""Shared test setup: deterministic, quiet, and small."""
import os

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
# The fused Triton kernels run on CPU tensors through the interpreter; it must be switched on before
# any @triton.jit function is defined (it changes nothing for CUDA tensors' dispatch).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
