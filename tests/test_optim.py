"""The optimizer is an explicit choice (`optim.impl`): torch's AdamW by default (fused on CUDA, foreach
elsewhere) even where apex imports; apex's FusedAdam only when asked, on CUDA, and refused with FSDP2."""
import sys
import types

import pytest
import torch

from rfengine import config
from rfengine.optim import build_optimizer


class FakeFusedAdam(torch.optim.Adam):
    """Stands in for apex.optimizers.FusedAdam (apex is built from source; not on this machine)."""

    def __init__(self, params, adam_w_mode=True, **kwargs):
        super().__init__(params, **kwargs)


@pytest.fixture
def apex_importable(monkeypatch):
    apex, optimizers = types.ModuleType("apex"), types.ModuleType("apex.optimizers")
    optimizers.FusedAdam, apex.optimizers = FakeFusedAdam, optimizers
    monkeypatch.setitem(sys.modules, "apex", apex)
    monkeypatch.setitem(sys.modules, "apex.optimizers", optimizers)


def _params():
    return [torch.nn.Parameter(torch.zeros(3))]


def test_torch_adamw_is_the_default_even_where_apex_imports(apex_importable):
    cfg = config.load(None, [])
    assert cfg.optim.impl == "torch"
    cuda = build_optimizer(_params(), cfg.optim, torch.device("cuda"))  # the choice only; the step is not taken
    assert type(cuda) is torch.optim.AdamW and cuda.defaults["fused"]
    cpu = build_optimizer(_params(), cfg.optim, torch.device("cpu"))
    assert type(cpu) is torch.optim.AdamW and cpu.defaults["foreach"] and not cpu.defaults["fused"]


def test_apex_only_when_asked_on_cuda_and_installed(apex_importable, monkeypatch):
    optim = config.load(None, ["optim.impl=apex"]).optim
    assert type(build_optimizer(_params(), optim, torch.device("cuda"))) is FakeFusedAdam
    with pytest.raises(ValueError, match="optim.impl: apex runs on CUDA only"):
        build_optimizer(_params(), optim, torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "apex.optimizers", None)  # not installed
    with pytest.raises(ValueError, match="optim.impl: apex: NVIDIA apex is not importable"):
        build_optimizer(_params(), optim, torch.device("cuda"))


def test_apex_with_fsdp_is_refused_in_one_line():
    with pytest.raises(config.ConfigError, match="optim.impl: apex is untested with parallel.mode=fsdp"):
        config.load(None, ["optim.impl=apex", "parallel.mode=fsdp"])
    with pytest.raises(config.ConfigError, match="optim.impl: got 'fused'"):
        config.load(None, ["optim.impl=fused"])
