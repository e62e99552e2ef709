"""What every study driver does around its own job graph: freeze the protocol at the first start, pin the
feature extractor, adopt pretrained models, calibrate the step costs, run the jobs in single-thread workers,
summarize; and the planner's FLOP floor of each variant's step."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from rfengine.study import runs
from rfengine.study.calibration import calibrate
from rfengine.study.pool import Pool

log = logging.getLogger("rfengine")
CLASSIFIER = "digits_classifier.pt"  # a study's pinned feature extractor (`pin_classifier`)


def freeze_protocol(args, out: Path, keys) -> None:
    """The settings `keys` of `args`, frozen in protocol.json at the first start: continuing with other
    settings is refused."""
    path = out / "protocol.json"
    want = {k: getattr(args, k) for k in keys}
    if path.is_file():
        have = json.loads(path.read_text())
        diff = [k for k in dict.fromkeys([*want, *have]) if have.get(k) != want.get(k)]
        if diff:
            raise SystemExit(f"rfengine: error: {out} was started with other settings ({', '.join(diff)}); "
                             "use another --out or the same settings")
    else:
        runs.write_json(path, want)


def pin_classifier(out: Path) -> Path:
    """The digit classifier every score of this study uses, pinned in the study folder at its first start
    (committed with the results): a copy of the package's shipped classifier (v3's own pin became the
    shipped one), so that a study keeps its feature space if the package's file ever changes."""
    path = out / CLASSIFIER
    if not path.is_file():
        from rfengine.eval import DigitsFeatures
        DigitsFeatures().save(path)
    return path

def adopt(args, out: Path) -> None:
    """The selection seeds' pretrained FM models (plateau.json, pretrained.safetensors) copied from
    `--adopt-from`, so that their `pretrain` jobs find them finished. Their scores are not copied: the
    `start` jobs score them again with this study's pinned classifier."""
    if not args.adopt_from:
        return
    for s in args.select_seeds:
        src, dst = Path(args.adopt_from) / "pretrain" / f"s{s}", out / "pretrain" / f"s{s}"
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("plateau.json", "pretrained.safetensors"):
            if not (dst / name).is_file():
                if not (src / name).is_file():
                    raise SystemExit(f"rfengine: error: --adopt-from {args.adopt_from}: {src / name} is missing")
                shutil.copyfile(src / name, dst / name)


def one_at_a_time_on_gpu(args) -> None:
    """With a GPU present, one job at a time (`args.workers` = 1): wall-clock seconds are the compute measure."""
    if runs.on_gpu() and args.workers != 1:
        log.warning("a GPU is present: one run at a time (wall-clock seconds are the compute measure)")
        args.workers = 1


def run(args, keys, jobs, summarize, desc: str) -> dict:
    """A study from its arguments: `jobs(args, out, calibration)` is its job graph (`Pool.run`),
    `summarize(args, out, calibration)` its summary; `--summarize` only summarizes, `--stop-after calibration`
    stops after the calibration."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    freeze_protocol(args, out, keys)
    pin_classifier(out)
    adopt(args, out)
    one_at_a_time_on_gpu(args)
    if args.summarize:
        return summarize(args, out, json.loads((out / "calibration.json").read_text()))
    pool = Pool(args.workers, out / "logs")
    cal = calibrate(args, out, pool)
    if args.stop_after == "calibration":
        return {}
    pool.run(jobs(args, out, cal), desc)
    return summarize(args, out, cal)


def flop_floors(variants) -> dict:
    """Per variant, the planner's model rows of one step relative to an FM step (a backward counted as
    two forwards): the FLOP floor that the measured cost is compared with."""
    from rfengine import config as config_lib
    from rfengine.plan import step_memory
    units = {}
    for v in variants:
        cfg = config_lib.load(None, [*runs.BASE, *runs.overrides(v)])
        units[v] = step_memory(cfg, 64).forward_units
    return {v: u / units["fm"] for v, u in units.items()} if "fm" in units else {}
