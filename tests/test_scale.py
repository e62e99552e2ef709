"""Speed features that must not change the math: activation checkpointing (full, selective) and
per-block torch.compile give the same loss and gradients as the plain model; attention backends
refuse clearly where they cannot serve."""
import pytest
import torch

from rfengine import config, parallel
from rfengine.models import build_model
from rfengine.models.attention import check_backend
from rfengine.objectives import build_objective


def _loss_and_grads(ac="none", compiled=False, name="reflexflow"):
    torch.manual_seed(0)
    model = build_model("DiT-T/4", in_channels=1, input_size=16, num_classes=10)
    parallel.apply_ac(model, ac)
    parallel.apply_compile(model, compiled)
    obj = build_objective(config.load(None, [f"objective.name={name}"]).objective)
    g = torch.Generator().manual_seed(1)
    x1, y = torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    torch.manual_seed(2)
    loss, _ = obj.loss(model, x1, y, 0)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("ac", ["full", "selective"])
def test_activation_checkpointing_keeps_loss_and_gradients(ac):
    base_loss, base_grads = _loss_and_grads()
    loss, grads = _loss_and_grads(ac=ac)
    assert torch.equal(loss, base_loss)
    for a, b in zip(grads, base_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_per_block_compile_keeps_loss_and_gradients(inductor_cache):
    base_loss, base_grads = _loss_and_grads(name="fm")
    loss, grads = _loss_and_grads(compiled=True, ac="full", name="fm")
    torch.testing.assert_close(loss, base_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, base_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_partial_rollout_under_compile_does_not_recompile_per_subset_size(inductor_cache):
    """A ramped adr.prob (0.5 of a 16-sample batch reached over 5 steps: 2, 3, 5, 6, 8, 8 rolled samples)
    sends a different number of samples through the model every step; the objective has the model mark
    its batch dimension dynamic from the first step, so the first step's graphs (training forward and the
    rollout's inference forward) serve every later size."""
    from torch._dynamo.utils import counters
    counters.clear()
    torch.manual_seed(0)
    model = build_model("DiT-T/4", in_channels=1, input_size=16, num_classes=10)
    cfg = config.load(None, ["objective.name=reflexflow", "objective.adr.prob=0.5", "objective.start=1",
                             "objective.ramp=5", "train.steps=10"])
    obj = build_objective(cfg.objective, total_steps=10)
    assert obj.varies_batch
    parallel.apply_compile(model, True, dynamic_batch=obj.varies_batch)
    g = torch.Generator().manual_seed(1)
    x1, y = torch.randn(16, 1, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)
    graphs, sizes = [], set()
    hook = model.register_forward_pre_hook(lambda m, args: sizes.add(args[0].shape[0]))
    for step in range(1, 7):
        torch.manual_seed(10 + step)
        loss, _ = obj.loss(model, x1, y, step)
        loss.backward()
        graphs.append(counters["stats"]["unique_graphs"])
    hook.remove()
    assert len(sizes) >= 5, sizes  # the subset size did vary
    assert graphs[-1] == graphs[0] <= 2, graphs  # no new graph after the first step


def test_attention_backends_agree_and_refuse_clearly():
    q, k, v = torch.randn(3, 2, 2, 5, 8).unbind(0)
    from rfengine.models.attention import attention
    torch.testing.assert_close(attention(q, k, v, "sdpa"), attention(q, k, v, "math"), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError) as e:
        check_backend("xformers", torch.device("cpu"), 36)
    msg = str(e.value)
    assert "runs on CUDA only" in msg and "head size 36" in msg and "Use sdpa" in msg
    with pytest.raises(ValueError, match="model.attention: expected one of"):
        check_backend("flash", torch.device("cpu"), 64)
    check_backend("sdpa", torch.device("cpu"), 36)
