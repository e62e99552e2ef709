"""Will this run fit, and how long will it take? One real training step of the configured model and
objective runs under `FakeTensorMode` (no memory, no compute) while a dispatch mode counts the bytes
of every live tensor storage; parameters, gradients, optimizer state and EMA are counted from the
model. Per GPU, for DDP and FSDP.

    python -m rfengine.plan --config configs/imagenet256_dit.yaml --gpus 8 [--card H100] [--mfu 0.4]

What is counted as on the GPU: fp32 parameters, gradients, AdamW's two moments and the EMA (under
FSDP each 1/N, plus the gathered parameters of two blocks in the training precision: the one in
use and the one prefetched); DDP's gradient buckets (one more copy of the gradients); the step's
activations at the per-GPU batch, including ReflexFlow's rollout and concatenated branches and the
autocast weight copies. Attention is counted the way the GPU kernels the config selects keep it
(flash / memory-efficient: the output and log-sum-exp, not the T x T matrix; `math`: the matrix).
Not counted: the CUDA context and allocator fragmentation (`--reserve-gib`, default 2 GiB).

The whole run: `train.steps` at the step time (a scheduled objective's steps before its switch at the
step time of plain FM), in days; and the disk its folder needs for checkpoints and the EMA export
(`train.keep_ckpts` + 1 checkpoints, as the run's own pre-flight check counts them).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import weakref
from dataclasses import dataclass, replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from rfengine import config as config_lib
from rfengine.telemetry import PEAK_TFLOPS, ModelRows

GIB = 2 ** 30
# Memory a process can use on each card (GiB, as torch.cuda reports the device's total).
CARD_MEMORY_GIB = {"H200": 139.8, "H100": 79.2, "A100": 79.2, "A100-40GB": 39.4, "L40S": 44.4, "RTX 4090": 23.6}


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of every tensor storage created inside it that is still alive, and the peak.
    A storage is alive while any tensor made in here points at it (views share their base's storage).
    `nonzero_frac` stands in for data: under FakeTensorMode `nonzero` has no values to count, so it
    returns that share of the elements (ReflexFlow's rolled samples at adr.prob)."""

    def __init__(self, nonzero_frac: float = 1.0):
        super().__init__()
        self.frac = nonzero_frac
        self.live: dict[int, list[int]] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.nonzero.default:
            x = args[0]
            out = torch.empty((int(round(self.frac * x.numel())), x.dim()), dtype=torch.long, device=x.device)
        else:
            out = func(*args, **kwargs)
        # An output that shares an input's storage (in-place ops, views) made no new memory; if that
        # storage existed before the count began (parameters, optimizer state), it stays uncounted.
        before = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t, before)
        return out

    def _track(self, t: torch.Tensor, inputs: set) -> None:
        st = t.untyped_storage()
        key = st._cdata
        entry = self.live.get(key)
        if entry is None and key in inputs:
            return
        if entry is None:
            entry = self.live[key] = [st.nbytes(), 0]
            self.now += entry[0]
            self.peak = max(self.peak, self.now)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[key]


@dataclass
class StepMemory:
    """One training step of one process: its peak of step-made tensors and the model rows it ran."""
    peak_bytes: int
    forward_units: int
    params: int
    optimizer_state_bytes: int
    largest_block_params: int
    flops_per_forward: float


def _attention_context(backend: str):
    """Count attention as the GPU kernels keep it: flash-like (O(T)) for sdpa/xformers, the full
    matrix for `math`."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(SDPBackend.MATH if backend == "math" else SDPBackend.FLASH_ATTENTION)


def step_memory(cfg, batch: int, ac: str | None = None, fake: bool = True, step: int | None = None) -> StepMemory:
    """Build the model and objective of `cfg` and run two training steps (the second is measured,
    with the optimizer state already there) at `batch` samples per process on CPU tensors: fake ones
    (no memory) when `fake`, else real ones (to check the count against the allocator). `step`: the
    training step whose objective runs (default: the configured objective's first, after any switch)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from rfengine import parallel
    from rfengine.data import expected_shape
    from rfengine.models import build_model
    from rfengine.objectives import build_objective
    from rfengine.optim import build_optimizer
    shape, classes = expected_shape(cfg)
    mode = FakeTensorMode() if fake else contextlib.nullcontext()
    attn = "sdpa" if cfg.model.attention == "xformers" else cfg.model.attention  # xformers: CUDA only, same memory
    with mode:
        torch.manual_seed(0)
        model = build_model(cfg.model.arch, in_channels=shape[0], input_size=shape[1:], num_classes=classes,
                            learn_sigma=cfg.model.learn_sigma, class_dropout=cfg.model.class_dropout, attention=attn)
        parallel.apply_ac(model, ac or cfg.train.activation_checkpointing)
        # (torch's AdamW stands in for apex's FusedAdam here: the same two fp32 moments per parameter)
        optimizer = build_optimizer(model.parameters(), replace(cfg.optim, impl="torch"),
                                    torch.device("cpu"))
        objective = build_objective(cfg.objective, total_steps=cfg.train.steps)
        rows = ModelRows(model)
        x1 = torch.randn((batch, *shape))
        y = torch.randint(0, max(classes, 1), (batch,)) if classes else None
        if step is None:  # the configured objective
            step = int(config_lib.resolve_steps(cfg.objective.start, cfg.train.steps))
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")
        frac = cfg.objective.adr.prob if cfg.objective.name in ("reflexflow", "ss") else 1.0
        for _ in range(2):  # the second step is measured: AdamW's state exists by then, as in training
            optimizer.zero_grad(set_to_none=True)
            rows.forward_units()
            tracker = LiveBytes(frac)
            with tracker, _attention_context(attn):
                with autocast:
                    loss, _ = objective.loss(model, x1, y, step)
                loss.backward()
                del loss
                optimizer.step()
            units = rows.forward_units()
        rows.remove()
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        opt_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                        if isinstance(t, torch.Tensor) and t.dim() > 0)
        block = max((sum(p.numel() for p in b.parameters()) for b in model.blocks), default=0)
        flops = model.forward_flops()
    return StepMemory(tracker.peak, units, params, opt_bytes, block, flops)


def plan(cfg, gpus: int, card: str = "H100", mfu: float = 0.4, reserve_gib: float = 2.0) -> dict:
    """The per-GPU memory plan and the step time of `cfg` on `gpus` cards."""
    if cfg.train.batch_size % gpus:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} does not split over {gpus} GPUs")
    if card not in CARD_MEMORY_GIB:
        raise ValueError(f"--card: unknown {card!r}; known: {', '.join(CARD_MEMORY_GIB)}")
    per_gpu = cfg.train.batch_size // gpus
    shard = cfg.parallel.mode == "fsdp"
    half = max(1, per_gpu // 2)
    runs = {ac: step_memory(cfg, per_gpu, ac) for ac in ("none", "selective", "full")}
    low = {ac: step_memory(cfg, half, ac).peak_bytes for ac in runs} if half != per_gpu else None
    m = runs[cfg.train.activation_checkpointing]
    p4 = 4 * m.params
    n = gpus if shard else 1
    static = {"parameters": p4 / n, "gradients": p4 / n, "optimizer state": m.optimizer_state_bytes / n,
              "EMA": p4 / n}
    if shard:
        dt = 2 if cfg.train.precision == "bf16" else 4
        static["FSDP gathered blocks (2)"] = 2 * m.largest_block_params * dt
    elif gpus > 1:
        static["DDP gradient buckets"] = p4
    # The step's count includes the gradients it makes; the static table holds them already.
    act = {ac: max(r.peak_bytes - p4 / n, 0.0) for ac, r in runs.items()}
    usable = CARD_MEMORY_GIB[card] * GIB - reserve_gib * GIB
    static_total = sum(static.values())
    fits = {}
    for ac, r in runs.items():
        if low is None:
            per_sample = act[ac] / per_gpu
            base = 0.0
        else:
            per_sample = (r.peak_bytes - low[ac]) / (per_gpu - half)
            base = act[ac] - per_sample * per_gpu
        fits[ac] = int((usable - static_total - base) // per_sample) if per_sample > 0 else None
    flops = m.forward_units * m.flops_per_forward  # per GPU
    kind = "bf16" if cfg.train.precision == "bf16" else "tf32"
    peak = PEAK_TFLOPS[card.split("-")[0]][kind] if card.split("-")[0] in PEAK_TFLOPS else None
    step_s = flops / (peak * 1e12 * mfu) if peak else None
    switch = int(config_lib.resolve_steps(cfg.objective.start, cfg.train.steps))
    before_s = step_s
    if switch and peak:  # a scheduled objective: plain FM steps until the switch
        fm = step_memory(cfg, per_gpu, step=0)
        before_s = fm.forward_units * fm.flops_per_forward / (peak * 1e12 * mfu)
    disk = _checkpoint_disk(cfg, gpus)
    return {"config": {"arch": cfg.model.arch, "objective": cfg.objective.name, "precision": cfg.train.precision,
                       "parallel": cfg.parallel.mode, "activation_checkpointing": cfg.train.activation_checkpointing,
                       "global_batch": cfg.train.batch_size},
            "gpus": gpus, "card": card, "per_gpu_batch": per_gpu, "params": m.params, "static_bytes": static,
            "activation_bytes": act, "peak_bytes": static_total + act[cfg.train.activation_checkpointing],
            "usable_bytes": usable, "max_per_gpu_batch": fits, "model_tflop_per_step_per_gpu": flops / 1e12,
            "forward_units": m.forward_units, "mfu": mfu, "peak_tflops": peak, "step_seconds": step_s,
            "train_steps": cfg.train.steps, "switch_step": switch, "step_seconds_before_switch": before_s,
            "run_days": (switch * before_s + (cfg.train.steps - switch) * step_s) / 86400 if peak else None, **disk}


def _checkpoint_disk(cfg, gpus: int) -> dict:
    """One checkpoint's bytes and what the run folder holds at most in checkpoints and the export."""
    from rfengine import checkpoint
    from rfengine.data import expected_shape
    from rfengine.models import build_model
    shape, classes = expected_shape(cfg)
    with torch.device("meta"):
        model = build_model(cfg.model.arch, in_channels=shape[0], input_size=shape[1:], num_classes=classes,
                            learn_sigma=cfg.model.learn_sigma, class_dropout=cfg.model.class_dropout)
    return {"checkpoint_bytes": checkpoint.estimate_bytes(model, gpus), "keep_ckpts": cfg.train.keep_ckpts,
            "run_folder_bytes": checkpoint.run_bytes(model, gpus, cfg.train.keep_ckpts)}


def render(p: dict) -> str:
    c = p["config"]
    g = lambda b: f"{b / GIB:.2f} GiB"  # noqa: E731
    lines = [f"plan: {c['arch']}, {c['objective']}, {c['precision']}, {c['parallel']}, global batch "
             f"{c['global_batch']} on {p['gpus']} x {p['card']} ({p['per_gpu_batch']} per GPU); "
             f"{p['params'] / 1e6:.1f}M parameters", "", "per GPU:"]
    for k, v in p["static_bytes"].items():
        lines.append(f"  {k:<28} {g(v)}")
    for ac, v in p["activation_bytes"].items():
        mark = "  <- configured" if ac == c["activation_checkpointing"] else ""
        lines.append(f"  activations (AC {ac:<9})   {g(v)}{mark}")
    fit = "fits" if p["peak_bytes"] <= p["usable_bytes"] else "DOES NOT FIT"
    lines += [f"  peak                         {g(p['peak_bytes'])} of {g(p['usable_bytes'])} usable: {fit}",
              "  largest per-GPU batch that fits: " + ", ".join(
                  f"AC {ac} {b if b is not None else 'not estimated'}" for ac, b in p["max_per_gpu_batch"].items())
              + (" (a sample's activations too small to measure)" if None in p["max_per_gpu_batch"].values() else ""),
              f"model compute: {p['model_tflop_per_step_per_gpu']:.2f} TFLOP per step per GPU "
              f"({p['forward_units']} image forwards, a backward counted as two)"]
    if p["step_seconds"]:
        lines.append(f"step time at {p['mfu']:.0%} MFU of {p['peak_tflops']:g} TFLOP/s: {p['step_seconds']:.3f} s "
                     f"({p['per_gpu_batch'] * p['gpus'] / p['step_seconds']:.0f} images/s in all)")
        before = (f" (plain FM before the switch at step {p['switch_step']:,}: {p['step_seconds_before_switch']:.3f} "
                  "s/step)" if p["switch_step"] else "")
        lines.append(f"the run: {p['train_steps']:,} steps in {p['run_days']:.1f} days "
                     f"({p['run_days'] * 24:.0f} hours) at this step time{before}")
    lines.append(f"disk: a checkpoint {p['checkpoint_bytes'] / 1e9:.1f} GB; the run folder holds up to "
                 f"{p['run_folder_bytes'] / 1e9:.1f} GB ({p['keep_ckpts'] + 1} checkpoints while one is written, "
                 "the EMA export)")
    return "\n".join(lines)


def main(argv=None) -> int:
    from rfengine.cli import run
    ap = argparse.ArgumentParser(description="Memory and time plan of a training config, without a GPU.")
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--card", default="H100", choices=list(CARD_MEMORY_GIB))
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation for the step time")
    ap.add_argument("--reserve-gib", type=float, default=2.0, help="per GPU, for the CUDA context and fragmentation")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.gpus < 1 or not 0 < a.mfu <= 1:
        ap.error("--gpus must be >= 1 and --mfu in (0, 1]")

    try:
        cfg = config_lib.load(a.config, a.overrides)
    except config_lib.ConfigError as e:
        print(f"rfengine: config error: {e}", file=sys.stderr)
        return 2

    def body():
        import json
        p = plan(cfg, a.gpus, a.card, a.mfu, a.reserve_gib)
        print(json.dumps(p, indent=1) if a.json else render(p))
    return run(body)


if __name__ == "__main__":
    raise SystemExit(main())
