"""Checkpoints: atomic writes, discovery of the newest complete one, pruning, state-dict loading
that names every mismatch, sharded (FSDP) checkpoints and a safetensors weight export.

Two formats, both written under a hidden temporary name and renamed into place only when complete
(then the folder is fsynced), so a crash leaves either the old set of checkpoints or the new one:
- `checkpoints/step_XXXXXXXX.pt` (parallel.mode=ddp): one file holding a dict: step, model, ema,
  optimizer, scheduler, rng (one entry per rank), config, code_version, world_size, ...
- `checkpoints/step_XXXXXXXX/` (parallel.mode=fsdp): a `torch.distributed.checkpoint` folder, each
  process writing its own shards of model, ema and optimizer (keyed by parameter name, so it loads
  on any number of processes), plus `meta.pt` with everything else.

The package's files, one job each: `folder` (names, discovery, pruning, pre-flight), `reading` (loading
without running code), `background` (atomic single files and the background writer), `sharded` (DCP
folders) and `state` (state dicts, RNG states, the safetensors export). Atomic file writes live in
`rfengine.storage`, so that code that writes other files needs no checkpointing.
"""
from rfengine.checkpoint.background import BackgroundWriter, save_atomic
from rfengine.checkpoint.folder import (checkpoint_path, estimate_bytes, list_checkpoints, preflight,
                                        remove_temporaries, resume_hint, run_bytes)
from rfengine.checkpoint.reading import META, UnsafeFileError, complete, latest, load, prune, read_pt, unreadable
from rfengine.checkpoint.sharded import load_sharded, save_sharded
from rfengine.checkpoint.state import (capture_rng, export_safetensors, load_model_state, load_safetensors,
                                       read_safetensors, restore_rng,
                                       strip_prefixes)
from rfengine.storage import write_atomic, write_json

__all__ = ["BackgroundWriter", "save_atomic", "checkpoint_path", "estimate_bytes", "list_checkpoints", "preflight",
           "remove_temporaries", "resume_hint", "run_bytes", "META", "UnsafeFileError", "complete", "latest", "load",
           "prune", "read_pt", "unreadable", "load_sharded", "save_sharded", "capture_rng", "export_safetensors",
           "load_model_state", "load_safetensors", "read_safetensors", "restore_rng", "strip_prefixes", "write_atomic",
           "write_json"]
