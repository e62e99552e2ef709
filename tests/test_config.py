import pytest

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


@pytest.mark.parametrize("override, words", [
    (["train.stepz=3"], ["train.stepz", "did you mean 'train.steps'"]),
    (["trian.steps=3"], ["trian", "did you mean 'train'"]),
    (["objective.adr.pairng=grid"], ["objective.adr.pairng", "objective.adr.pairing"]),
    (["train.steps=abc"], ["train.steps", "expected int"]),
    (["train.steps=0"], ["train.steps", ">= 1"]),
    (["objective.name=foo"], ["objective.name", "'reflexflow'"]),
    (["objective.fc.cutoff=0"], ["objective.fc.cutoff", "> 0"]),
    (["objective.adr.steps=0"], ["objective.adr.steps", ">= 1"]),
    (["objective.adr.weight=-1"], ["objective.adr.weight", ">= 0"]),
    (["model.arch=DiT-Q/2"], ["model.arch", "DiT-S/2"]),
    (["data.name=folder"], ["data.path", "required"]),
    (["train.steps"], ["section.key=value"]),
    (["train.steps.x=1"], ["train.steps", "expected int"]),
])
def test_bad_keys_name_the_problem(override, words):
    with pytest.raises(config.ConfigError) as e:
        config.load(None, override)
    for w in words:
        assert w in str(e.value)


def test_roundtrip_through_yaml(tmp_path):
    cfg = config.load(None, ["objective.name=reflexflow", "optim.betas=[0.9, 0.95]"])
    config.save(cfg, tmp_path / "c.yaml")
    again = config.load(tmp_path / "c.yaml")
    assert again == cfg


def test_missing_file():
    with pytest.raises(config.ConfigError, match="not found"):
        config.load("/nonexistent/x.yaml")
