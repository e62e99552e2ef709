"""Export a checkpoint's weights (EMA or raw) to one safetensors file that loads into a
single-process model: `python -m rfengine.export --run-dir RUN [--weights ema|raw] [--out FILE]`.

Works for single-file and sharded (FSDP) checkpoints alike, on one process and without a GPU; the
file's header carries the config, data shape and class count, so `rfengine.sample --ckpt FILE`
needs nothing else. Training runs also export `<run>/ema.safetensors` when they finish.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def export(ckpt: str | Path, out: str | Path, weights: str = "ema") -> Path:
    from rfengine import checkpoint, config as config_lib
    from rfengine.sample import load_model_with_meta
    model, cfg, shape, meta = load_model_with_meta(ckpt, weights)  # the checkpoint is read once
    info = {"step": int(meta.get("step", -1)), "config": config_lib.to_dict(cfg), "data_shape": list(shape),
            "num_classes": model.num_classes, "code_version": meta.get("code_version", "unknown"), "weights": weights}
    return checkpoint.export_safetensors(model.state_dict(), out, info)


def main(argv=None) -> int:
    from rfengine import cli
    from rfengine.sample import _resolve_checkpoint
    p = argparse.ArgumentParser(description="Export checkpoint weights to one safetensors file.")
    p.add_argument("--run-dir", dest="run", help="run folder (its newest checkpoint)")
    p.add_argument("--ckpt", help="a checkpoint file or sharded checkpoint folder")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"])
    p.add_argument("--out", help="output file (default: <run>/<weights>_step<N>.safetensors)")
    a = p.parse_args(argv)

    def body():
        path = _resolve_checkpoint(a.run, a.ckpt)
        out = Path(a.out) if a.out else path.parent.parent / f"{a.weights}_{path.name.split('.')[0]}.safetensors"
        print(f"wrote {export(path, out, a.weights)}")
    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
