"""Process groups and model wrapping. One process is world size 1; torchrun sets RANK/WORLD_SIZE."""
from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("rfengine")


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str = "auto") -> Dist:
    """Join the process group torchrun describes (NCCL on GPU, gloo on CPU) and pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None,
                                store=_attempt_store(rank, world), rank=rank, world_size=world)
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def _attempt_store(rank: int, world: int):
    """The store a restarted torchrun job forms its group on: a namespace of its own per attempt.

    torchrun's agent hosts one TCPStore for the whole job (`TORCHELASTIC_USE_AGENT_STORE=True`) and
    hands every attempt of `--max-restarts` the same address, with the keys of the attempt before still
    in it; torch's `env://` set-up adds no prefix of its own. A restarted rank then reads a peer's
    address (gloo) or unique id (NCCL) of the dead attempt before the peer rewrites it: connection
    refused, or a hang until the store's timeout (measured with torch 2.13: 4 of 6 restarts failed). On
    one node every worker's `TORCHELASTIC_RESTART_COUNT` is the same agent's count, so it names the
    attempt. Across nodes the agents count restarts separately (a node whose workers were healthy
    restarts without counting), so there the launcher turns the shared store off
    (`TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`: a fresh store per attempt) and `env://` is used as it is.
    None (torch's `env://`) outside torchrun's shared store."""
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    one_node = os.environ.get("LOCAL_WORLD_SIZE") == str(world)
    if not shared:
        return None
    if not one_node:
        if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and rank == 0:
            log.warning(
                "torchrun --max-restarts across nodes with the agent's shared store: a restarted group can fail "
                "to form; launch torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (docs/cluster.md)")
        return None
    from torch.distributed.constants import default_pg_timeout
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=default_pg_timeout)
    return dist.PrefixStore(f"rfengine/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


# The wrapping order is fixed: activation checkpointing, then compile per block, then the data-parallel
# wrapper (DDP around the whole model, or FSDP2 per block and then the root). Each step works on the
# blocks the previous one left in place: checkpointing wraps a block's forward, compile compiles the
# block with that forward, and FSDP's all-gather hooks run around the compiled call.

def apply_ac(model: torch.nn.Module, mode: str) -> None:
    """Activation checkpointing of every DiT block, in place. `full`: keep only each block's input
    and recompute the block in the backward pass. `selective`: keep the outputs of the matrix products
    and attention (the expensive ops) and recompute the cheap elementwise ones."""
    if mode == "none":
        return
    if mode not in ("full", "selective"):
        raise ValueError(f"train.activation_checkpointing: expected none, full or selective, got {mode!r}")
    from functools import partial

    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

    aten = torch.ops.aten
    keep = {aten.mm.default, aten.addmm.default, aten.bmm.default,
            aten._scaled_dot_product_flash_attention.default,
            aten._scaled_dot_product_efficient_attention.default,
            aten._scaled_dot_product_flash_attention_for_cpu.default}

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

    for block in model.blocks:
        inner = block.forward
        if mode == "full":
            block.forward = partial(checkpoint, inner, use_reentrant=False)
        else:
            block.forward = partial(checkpoint, inner, use_reentrant=False,
                                    context_fn=partial(create_selective_checkpoint_contexts, policy))


def apply_compile(model: torch.nn.Module, enabled: bool, dynamic_batch: bool = False) -> None:
    """torch.compile each DiT block in place (one graph reused by every block of the same shape).
    With `dynamic_batch` (the objective feeds the model batches of changing size: `adr.prob < 1`
    rolls out a random subset, a scheduled objective switches from FM's batch to ReflexFlow's), the
    model marks the batch dimension dynamic from the first call, so the first graph already has a
    symbolic batch and a new size costs no recompile. Without it, a new size recompiles once (dynamo's
    automatic dynamic shapes) and that graph serves every later size (tests/test_scale.py counts)."""
    if not enabled:
        return
    model.dynamic_batch = dynamic_batch
    for block in model.blocks:
        block.compile()


def apply_ddp(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """DistributedDataParallel when there are several processes; the model itself otherwise."""
    if d.world == 1:
        return model
    ids = [d.device.index] if d.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def apply_fsdp(model: torch.nn.Module, d: Dist, precision: str) -> torch.nn.Module:
    """FSDP2: `fully_shard` every DiT block, then the root, over all processes (in place).

    bf16 runs keep fp32 master weights and gather bf16 copies for compute (`param_dtype`), with
    gradients reduced in fp32 (`reduce_dtype`). The root does not cast its inputs: the timestep t
    stays fp32 into its sinusoidal embedding, and autocast decides the precision of each op there,
    exactly as under DDP. One process: the model is returned as it is (nothing to shard)."""
    if d.world == 1:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(d.device.type, (d.world,))
    param_dtype = torch.bfloat16 if precision == "bf16" else None
    block_mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    root_mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=block_mp)
    fully_shard(model, mesh=mesh, mp_policy=root_mp)
    return model


def reshard(model: torch.nn.Module) -> None:
    """Free the gathered parameters of an FSDP2 model after a forward without backward (the root
    keeps its own gathered after a forward, expecting a backward); nothing otherwise."""
    if hasattr(model, "reshard"):
        model.reshard()


def wrap(model: torch.nn.Module, d: Dist, mode: str, precision: str) -> torch.nn.Module:
    """The data-parallel wrapper for `parallel.mode`: DDP (returns the wrapper) or FSDP2 (in place)."""
    if mode == "fsdp":
        return apply_fsdp(model, d, precision)
    if mode == "ddp":
        return apply_ddp(model, d)
    raise ValueError(f"parallel.mode: expected ddp or fsdp, got {mode!r}")


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor; a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole value of a DTensor (a collective); a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce when a process group exists; a no-op for one process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op)
    return t


def all_gather_object(obj) -> list:
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def broadcast_object(obj, src: int = 0):
    """Process `src`'s `obj` (small and picklable: a list of indices, a message) on every process; a
    collective. One process: `obj` itself."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def side_group():
    """A gloo process group of its own, for collectives that run beside the training loop's (a
    checkpoint written in the background): collective (every process creates it); None for one process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        return dist.new_group(backend="gloo")
    return None


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown(clean: bool = True) -> None:
    """Destroy the process group. After a clean run every process first meets the others, so that
    none tears its connections down while another still uses them (gloo aborts the process then);
    after an error there is no barrier, since another process may be gone. Garbage held in reference
    cycles (an FSDP2 model's own, or a model wrapped by a closure that refers back to it) is collected
    first: a process group such garbage holds would otherwise be torn down by the collector at
    interpreter exit, where gloo can abort the process after a run that succeeded."""
    if dist.is_initialized():
        if clean and dist.get_world_size() > 1:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()
