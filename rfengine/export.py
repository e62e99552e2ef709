"""Export a checkpoint's weights (EMA or raw) to one safetensors file that loads into a
single-process model: `python -m rfengine.export --run-dir RUN [--weights ema|raw] [--out FILE]`.

Works for single-file and sharded (FSDP) checkpoints alike, on one process and without a GPU; the
file's header carries the config, data shape and class count, so `rfengine.sample --ckpt FILE`
needs nothing else. Training runs also export `<run>/ema.safetensors` when they finish.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def export(ckpt: str | Path, out: str | Path, weights: str = "ema", cfg=None) -> Path:
    """The weights of `ckpt` (any file `rfengine.weights` reads; released weights with `cfg`) as an
    rfengine safetensors export whose header rebuilds the model."""
    from rfengine import checkpoint, config as config_lib, weights as weights_lib
    model, cfg, shape, meta = weights_lib.load_model(ckpt, weights, cfg)  # the checkpoint is read once
    info = {"step": int(meta.get("step", -1)), "config": config_lib.to_dict(cfg), "data_shape": list(shape),
            "num_classes": model.num_classes, "code_version": meta.get("code_version", "unknown"), "weights": weights}
    return checkpoint.export_safetensors(model.state_dict(), out, info)


def main(argv=None) -> int:
    from rfengine import cli
    from rfengine import config as config_lib, weights as weights_lib
    p = argparse.ArgumentParser(description="Export checkpoint weights to one safetensors file.")
    p.add_argument("--run-dir", dest="run", help="run folder (its newest checkpoint)")
    p.add_argument("--ckpt", help="a checkpoint file or sharded checkpoint folder")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"])
    p.add_argument("--config", help="the model released SiT/DiT weights fit (model.arch, model.learn_sigma, data)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="output file (default: <run>/<weights>_step<N>.safetensors)")
    a = p.parse_args(argv)

    def body():
        path = weights_lib.resolve(a.run, a.ckpt)
        given = config_lib.load(a.config, a.overrides) if (a.config or a.overrides) else None
        out = Path(a.out) if a.out else path.parent.parent / f"{a.weights}_{path.name.split('.')[0]}.safetensors"
        print(f"wrote {export(path, out, a.weights, given)}")
    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
