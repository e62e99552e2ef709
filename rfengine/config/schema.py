"""The run configuration's schema: one typed dataclass per section. Every field's type is its
annotation; `Literal[...]` lists the allowed values and a field's `metadata` may carry bounds (`ge`,
`gt`, `le`, `lt`), checked by `rfengine.config.validate`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


class ConfigError(ValueError):
    """A config key is unknown, mistyped or out of range."""


def _bound(default, **bounds):
    return field(default=default, metadata=bounds)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    """The DiT/SiT network; input shape and class count come from the data set."""
    arch: str = "DiT-T/2"
    learn_sigma: bool = False
    class_dropout: float = _bound(0.1, ge=0.0, le=1.0)
    class_conditional: bool = True
    attention: Literal["sdpa", "xformers", "math"] = "sdpa"


@dataclass
class DataConfig:
    """Where images come from. `digits` is embedded; `folder` and `latents` read `path`; `synthetic`
    is random tensors of `channels` x image_size^2 with `num_classes` labels (for benchmarks)."""
    name: Literal["digits", "folder", "latents", "synthetic"] = "digits"
    path: str = ""
    image_size: int = _bound(16, gt=0)
    flip: bool = False
    num_workers: int = _bound(0, ge=0)
    # Synthetic data only.
    channels: int = _bound(4, ge=1)
    num_classes: int = _bound(1000, ge=0)
    # Latent shards only: the metadata the shards must agree with.
    vae: str = ""
    scale_factor: float = _bound(0.18215, gt=0.0)


@dataclass
class ADRConfig:
    """Anti-Drift Rectification (docs/objectives.md section 3, steps 1-5)."""
    steps: int = _bound(1, ge=1)
    pairing: Literal["grid", "uniform"] = "grid"
    infer_steps: int = _bound(10, ge=1)
    # The rollout matched to a sampler (objective docs, "rollouts matched to a sampler"): its integrator
    # (heun: two no-grad forwards a step) and its grid's time shift (`rfengine.flow.shift_time`); grid pairing only.
    integrator: Literal["euler", "heun"] = "euler"
    shift: float = _bound(1.0, gt=0.0)
    prob: float = _bound(1.0, ge=0.0, le=1.0)
    loss: Literal["x1", "mse", "direction"] = "x1"
    weight: float = _bound(1.0, ge=0.0)
    grad_through_rollout: bool = False


@dataclass
class FCConfig:
    """Frequency Compensation (docs/objectives.md section 3, steps 6-7)."""
    # velocity: sg(v(x_t)) - sg(v(xhat)); input: xhat - x_t; self: sg(v(x_t) - u), the training forward's
    # own error (no rollout, no extra forward: docs/objectives.md section 4.2)
    bias_space: Literal["velocity", "input", "self"] = "velocity"
    mask: Literal["circle", "box", "gaussian", "none"] = "circle"
    cutoff: float = _bound(0.25, gt=0.0)
    alpha: float = _bound(1.0, ge=0.0)
    t_max: float = _bound(1.0, ge=0.0, le=1.0)
    weight: float = _bound(1.0, ge=0.0)


@dataclass
class IPConfig:
    """Input perturbation baseline (docs/objectives.md section 4)."""
    gamma: float = _bound(0.1, ge=0.0)


@dataclass
class ObjectiveConfig:
    """Which training objective and its switches."""
    name: Literal["fm", "ip", "ss", "reflexflow"] = "fm"
    time_sampler: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = _bound(1.0, gt=0.0)
    # The FM branch's per-sample weight over t (docs/objectives.md section 4.1): none, or Min-SNR-gamma for the velocity
    # loss, min(t^2, gamma*(1-t)^2)/c with c its mean under time_sampler.
    weighting: Literal["none", "min_snr"] = "none"
    min_snr_gamma: float = _bound(5.0, gt=0.0)
    # LightningDiT's cosine velocity loss added to the FM branch: cosine_weight * mean_b(1 - cos(v_b, u_b)).
    cosine_weight: float = _bound(0.0, ge=0.0)
    # Run the clean and drifted gradient branches as one concatenated model call.
    concat_branches: bool = True
    # Plain FM before this step (a step if >= 1, a fraction of train.steps if < 1; 0: from the start),
    # then this objective, with adr.prob ramped linearly from 0 over `ramp` steps (same units).
    start: float = _bound(0.0, ge=0.0)
    ramp: float = _bound(0.0, ge=0.0)
    adr: ADRConfig = field(default_factory=ADRConfig)
    fc: FCConfig = field(default_factory=FCConfig)
    ip: IPConfig = field(default_factory=IPConfig)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, gradient clipping and an EMA of the weights."""
    lr: float = _bound(1e-4, gt=0.0)
    betas: tuple = (0.9, 0.999)
    weight_decay: float = _bound(0.0, ge=0.0)
    warmup_steps: int = _bound(0, ge=0)
    grad_clip: float = _bound(1.0, ge=0.0)
    ema_decay: float = _bound(0.9999, ge=0.0, le=1.0)
    # The AdamW kernel: torch's (fused on CUDA, foreach elsewhere) or NVIDIA apex's FusedAdam (CUDA, built
    # from source; its optimizer state is its own format, and it is untested with FSDP2's sharded parameters).
    impl: Literal["torch", "apex"] = "torch"


@dataclass
class TrainConfig:
    """The loop: length, batch, precision, logging and checkpoint cadence."""
    steps: int = _bound(1000, ge=1)
    batch_size: int = _bound(64, ge=1)
    out_dir: str = "runs/default"
    seed: int = _bound(0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    log_every: int = _bound(50, ge=1)
    ckpt_every: int = _bound(1000, ge=1)
    sample_every: int = _bound(1000, ge=1)
    keep_ckpts: int = _bound(3, ge=1)
    # Write checkpoints in the background (single files in a thread, sharded ones through DCP's async save):
    # the loop pays for a copy of the state, not for serialising it and syncing it to storage.
    async_ckpt: bool = True
    max_bad_steps: int = _bound(10, ge=1)
    progress: bool = True
    compile: bool = False
    activation_checkpointing: Literal["none", "full", "selective"] = "none"
    tensorboard: bool = True
    # Dense peak TFLOP/s of one device for MFU; 0 looks the device up in telemetry.PEAK_TFLOPS.
    peak_tflops: float = _bound(0.0, ge=0.0)
    # Start a new run (step 0, fresh optimizer and schedule) from the model weights in this file:
    # an rfengine checkpoint, sharded folder or safetensors export, or a released SiT/DiT checkpoint.
    init_from: str = ""
    init_weights: Literal["ema", "raw"] = "ema"


@dataclass
class SampleConfig:
    """Sampler used for the grids written during training (and the sampling CLI's defaults)."""
    method: Literal["euler", "heun", "dpmpp2m", "ab2"] = "euler"
    steps: int = _bound(50, ge=1)
    cfg_scale: float = _bound(1.0, ge=0.0)
    shift: float = _bound(1.0, gt=0.0)
    num_images: int = _bound(64, ge=1)


@dataclass
class ParallelConfig:
    """How processes cooperate: `ddp` replicates the model (single-file checkpoints); `fsdp` shards
    parameters, gradients, optimizer state and EMA per DiT block (FSDP2; sharded checkpoints)."""
    mode: Literal["ddp", "fsdp"] = "ddp"
    backend: Literal["auto", "nccl", "gloo"] = "auto"


@dataclass
class Config:
    """A whole run."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
