"""Command line: `torchrun --standalone --nproc_per_node=N rfengine/train.py --config configs/X.yaml`
(or `python -m rfengine.train ...`). `--set section.key=value` overrides any config key."""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script (torchrun rfengine/train.py): import the package, not siblings
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a flow-matching DiT/SiT with rfengine.")
    p.add_argument("--config", help="YAML config file (defaults apply where it is silent)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key; repeatable, e.g. --set train.steps=100")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="'auto': newest complete checkpoint in train.out_dir/checkpoints; or a checkpoint file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from rfengine import config as config_lib
    from rfengine import cli
    from rfengine.storage import WriteError
    from rfengine.trainer import NonFiniteError, Trainer

    try:
        cfg = config_lib.load(args.config, args.overrides)
    except config_lib.ConfigError as e:
        print(f"rfengine: config error: {e}", file=sys.stderr)
        return 2
    return cli.run(lambda: Trainer(cfg, resume=args.resume).run(), (ValueError, FileNotFoundError, NonFiniteError,
                                                                       WriteError))


if __name__ == "__main__":
    sys.exit(main())
