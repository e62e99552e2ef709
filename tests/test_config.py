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


def test_every_config_key_is_documented_in_the_readme():
    """The README's config tables name every key (shorthand rows like `train.log_every`, `ckpt_every`
    count for the keys they list; `objective.adr.*` rows for their section)."""
    import dataclasses
    from pathlib import Path
    rows = [line for line in (Path(__file__).parents[1] / "README.md").read_text().splitlines()
            if line.startswith("| `")]

    def keys(cls, prefix=""):
        for f in dataclasses.fields(cls):
            value = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(value):
                yield from keys(type(value), f"{prefix}{f.name}.")
            else:
                yield prefix + f.name

    def documented(key):
        section, _, name = key.rpartition(".")
        top = key.split(".")[0]
        return any(f"`{key}`" in r or (f"`{top}." in r and f"`{name}`" in r) or f"`{section}.*`" in r
                   or (section.count(".") == 1 and f"`{section.split('.')[1]}.{name}`" in r) for r in rows)

    missing = [k for k in keys(config.Config) if not documented(k)]
    assert not missing, f"config keys missing from the README: {missing}"
