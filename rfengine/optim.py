"""Optimizer, learning-rate schedule and EMA."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger("rfengine")


def build_optimizer(params, cfg, device: torch.device) -> torch.optim.Optimizer:
    """AdamW as `cfg.impl` says: 'torch' (fused kernel on CUDA, foreach elsewhere) or 'apex' (NVIDIA apex's
    FusedAdam in AdamW mode; CUDA only, and apex must be installed: a ValueError naming the key otherwise)."""
    params = [p for p in params if p.requires_grad]
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.impl == "apex":
        if device.type != "cuda":
            raise ValueError(f"optim.impl: apex runs on CUDA only, this run's device is {device.type}; use "
                             "optim.impl: torch")
        try:
            from apex.optimizers import FusedAdam  # the registry's `apex` is an unrelated package
        except ImportError as e:
            raise ValueError(f"optim.impl: apex: NVIDIA apex is not importable ({e}); install it from source "
                             "or use optim.impl: torch") from None
        log.info("optimizer: apex FusedAdam (AdamW mode)")
        return FusedAdam(params, adam_w_mode=True, **kwargs)
    fused = device.type == "cuda"
    log.info("optimizer: torch AdamW (%s)", "fused" if fused else "foreach")
    return torch.optim.AdamW(params, fused=True, **kwargs) if fused else \
        torch.optim.AdamW(params, foreach=True, **kwargs)


def warmup_schedule(optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from lr/warmup to lr over `warmup_steps`, then constant (as in SiT/DiT)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay*ema + (1 - decay)*model over trainable parameters. Under FSDP both are sharded
    the same way and each process updates its own shards (no communication)."""
    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t
    pairs = [(local(e), local(p.detach())) for e, p in zip(ema.parameters(), model.parameters()) if p.requires_grad]
    if pairs:
        torch._foreach_lerp_([e for e, _ in pairs], [p for _, p in pairs], 1.0 - decay)
