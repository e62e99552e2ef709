"""Optimizer, learning-rate schedule and EMA."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger("rfengine")


def build_optimizer(params, cfg, device: torch.device) -> torch.optim.Optimizer:
    """AdamW: NVIDIA apex's FusedAdam when importable on CUDA, else torch's fused (CUDA) or foreach kernel."""
    params = [p for p in params if p.requires_grad]
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if device.type == "cuda":
        try:
            from apex.optimizers import FusedAdam  # optional; the registry's `apex` is unrelated
            log.info("optimizer: apex FusedAdam (AdamW mode)")
            return FusedAdam(params, adam_w_mode=True, **kwargs)
        except ImportError:
            log.info("optimizer: torch AdamW (fused)")
            return torch.optim.AdamW(params, fused=True, **kwargs)
    log.info("optimizer: torch AdamW (foreach)")
    return torch.optim.AdamW(params, foreach=True, **kwargs)


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
