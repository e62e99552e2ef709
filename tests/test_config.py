from rfengine import config


def test_defaults_validate():
    cfg = config.from_dict({})
    assert cfg.objective.adr.steps == 1 and cfg.objective.fc.cutoff == 0.25


def test_shipped_configs_load():
    from pathlib import Path
    files = sorted(Path(__file__).parents[1].glob("configs/*.yaml"))
    assert files
    for f in files:
        config.load(f)


def test_overrides_apply_with_types():
    cfg = config.load(None, ["train.steps=7", "optim.lr=1e-4", "objective.adr.loss=direction",
                             "objective.fc.cutoff=0.5", "train.precision=bf16"])
    assert cfg.train.steps == 7 and cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.objective.adr.loss == "direction" and cfg.objective.fc.cutoff == 0.5


def test_roundtrip_through_yaml(tmp_path):
    cfg = config.load(None, ["objective.name=reflexflow", "optim.betas=[0.9, 0.95]"])
    config.save(cfg, tmp_path / "c.yaml")
    again = config.load(tmp_path / "c.yaml")
    assert again == cfg
