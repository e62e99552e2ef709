from pathlib import Path

import pytest

from rfengine import config


def test_defaults_validate():
    cfg = config.from_dict({})
    assert cfg.objective.adr.steps == 1 and cfg.objective.fc.cutoff == 0.25


CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    data = config.compose(path)
    init = data.get("train", {}).get("init_from")
    # a fine-tune config names weights made by another run; any existing file stands in for them here
    config.load(path, [f"train.init_from={path}"] if init else [])


@pytest.mark.parametrize("path", [p for p in CONFIGS if "base:" in p.read_text()],
                         ids=lambda p: p.name)
def test_overlay_configs_copy_nothing_from_their_base(path):
    """An overlay sets only what differs from its base: no value equal to the base's, no stale copy."""
    own = config.read_yaml(path)
    base = config.compose(path.parent / own.pop("base"))

    def same(a, b, key=""):
        for k, v in a.items():
            if isinstance(v, dict):
                yield from same(v, b.get(k, {}), f"{key}{k}.")
            elif k in b and b[k] == v:
                yield f"{key}{k}"
    assert not list(same(own, base)), f"{path.name} repeats its base's values"


def test_base_composes_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("train:\n  steps: 5\n  batch_size: 8\noptim:\n  lr: 0.5\n")
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\ntrain:\n  steps: 7\n")
    (tmp_path / "c.yaml").write_text("base: sub/b.yaml\noptim:\n  lr: 0.25\n")
    cfg = config.load(tmp_path / "c.yaml")
    assert (cfg.train.steps, cfg.train.batch_size, cfg.optim.lr) == (7, 8, 0.25)
    config.save(cfg, tmp_path / "resolved.yaml")  # what a run folder records: no base, every value
    assert "base" not in (tmp_path / "resolved.yaml").read_text() and config.load(tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize("text, match", [
    ("base: a.yaml\n", "circular base"),
    ("base: missing.yaml\n", "config file not found: .*missing.yaml \\(the base of"),
    ("base: 3\n", "base: expected the path"),
    ("train:\n  steps: 3\n  steps: 4\n", "a.yaml:3:3: duplicated key 'steps' \\(first at line 2\\)"),
    ("train:\n\tsteps: 3\n", "a.yaml:2:1: invalid YAML: .*tab"),
    ("train: [1,\n", "a.yaml:2:1: invalid YAML"),
    ("- 1\n- 2\n", "expected a mapping of config sections"),
])
def test_bad_yaml_is_one_config_error(tmp_path, text, match):
    (tmp_path / "a.yaml").write_text(text)
    with pytest.raises(config.ConfigError, match=match) as e:
        config.load(tmp_path / "a.yaml")
    assert "\n" not in str(e.value)


def test_bad_yaml_exits_2_with_one_line(tmp_path):
    from tests.helpers import train_cli
    (tmp_path / "a.yaml").write_text("train:\n  steps: 3\n\tbatch_size: 4\n")
    r = train_cli("--config", str(tmp_path / "a.yaml"))
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rfengine: config error: ") and "a.yaml:3:1" in lines[0]


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


def test_every_config_key_is_documented():
    """The config tables of the docs (docs/configs.md) name every key (shorthand rows like
    `train.log_every`, `ckpt_every` count for the keys they list; `objective.adr.*` rows for their
    section)."""
    import dataclasses
    from pathlib import Path
    root = Path(__file__).parents[1]
    rows = [line for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]
            for line in doc.read_text().splitlines() if line.startswith("| `")]

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
    assert not missing, f"config keys missing from the docs' config tables: {missing}"
