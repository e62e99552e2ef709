"""Building a run's model, EMA, objective and optimizer in the fixed wrapping order: activation
checkpointing, then per-block compile, then the data-parallel wrapper (DDP around the model, or FSDP2
per block and then the root; the EMA is sharded the same way), then the optimizer (FSDP2 replaces the
parameters with sharded ones)."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

from rfengine import parallel, weights
from rfengine.models import build_model as _build_model
from rfengine.models.attention import check_backend as check_attention
from rfengine.objectives import Objective, build_objective
from rfengine.optim import build_optimizer, warmup_schedule

log = logging.getLogger("rfengine")


@dataclass
class Built:
    """What a run trains: `model` (bare: its state dict and parameters), `wrapped` (what the objective
    calls: the DDP, FSDP or bare model), the EMA, the objective, the optimizer and its LR schedule."""
    model: torch.nn.Module
    wrapped: torch.nn.Module
    ema: torch.nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sharded: bool
    init_source: str | None  # the weights the run started from (train.init_from), or None


def build_model(cfg, shape: tuple[int, int, int], num_classes: int, device) -> torch.nn.Module:
    """The DiT/SiT of `cfg.model` for inputs of `shape` (C, H, W) on `device`."""
    c, h, w = shape
    classes = num_classes if cfg.model.class_conditional else 0
    return _build_model(cfg.model.arch, in_channels=c, input_size=(h, w), num_classes=classes,
                        learn_sigma=cfg.model.learn_sigma, class_dropout=cfg.model.class_dropout,
                        attention=cfg.model.attention).to(device)


def build(cfg, dist: parallel.Dist, shape: tuple[int, int, int], num_classes: int, init: bool = True) -> Built:
    """Everything a run trains, built identically on every process (seeded by `train.seed`); with `init`
    (a run that does not resume) starting from `train.init_from`'s weights, if set."""
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = build_model(cfg, shape, num_classes, dist.device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    init_source = None
    if cfg.train.init_from and init:
        init_source = weights.init_weights(model, ema, cfg.train.init_from, cfg.train.init_weights)
        log.info("initial weights from %s", init_source)
    check_attention(cfg.model.attention, dist.device, model.blocks[0].attn.head_dim)
    sharded = cfg.parallel.mode == "fsdp"
    objective = build_objective(cfg.objective, metrics_every=cfg.train.log_every, total_steps=cfg.train.steps)
    parallel.apply_ac(model, cfg.train.activation_checkpointing)
    parallel.apply_compile(model, cfg.train.compile, dynamic_batch=objective.varies_batch)
    wrapped = parallel.wrap(model, dist, cfg.parallel.mode, cfg.train.precision)
    if sharded:
        parallel.apply_fsdp(ema, dist, "fp32")
    optimizer = build_optimizer(model.parameters(), cfg.optim, dist.device)
    scheduler = warmup_schedule(optimizer, cfg.optim.warmup_steps)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model %s: %.2fM parameters, input %s, %d classes; objective %s",
             cfg.model.arch, n_params / 1e6, shape, model.num_classes, cfg.objective.name)
    log.info("parallel %s, attention %s, activation checkpointing %s, compile %s", cfg.parallel.mode,
             cfg.model.attention, cfg.train.activation_checkpointing, "per block" if cfg.train.compile else "off")
    if sharded:
        held = sum(parallel.local(p).numel() for p in model.parameters() if p.requires_grad)
        log.info("FSDP: this process holds %.2fM of the %.2fM parameters (and their gradients, optimizer "
                 "state and EMA)", held / 1e6, n_params / 1e6)
    return Built(model, wrapped, ema, objective, optimizer, scheduler, sharded, init_source)
