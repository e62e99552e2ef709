"""Bad input gets an error that names the problem, before any work starts: config keys, data folders,
latent shards. (Kernel inputs: tests/kernels; checkpoints: test_checkpoints.py.)"""
import pytest

from rfengine import config
from rfengine.data import build_dataset
from tests.data.test_data import latent_cfg, make_folder, make_shards
from tests.helpers import torchrun


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


def test_missing_file():
    with pytest.raises(config.ConfigError, match="not found"):
        config.load("/nonexistent/x.yaml")


def test_cli_config_error_exits_2_before_any_work(tmp_path):
    r = torchrun(1, "--config", "configs/tiny_fm.yaml", "--set", "train.stepz=3", "--set", f"train.out_dir={tmp_path}/run")
    assert r.returncode != 0
    assert "did you mean 'train.steps'" in r.stderr
    assert not (tmp_path / "run").exists()  # nothing was created


def test_image_folder_errors(tmp_path):
    cfg = lambda p: config.from_dict({"data": {"name": "folder", "path": str(p), "image_size": 8}}).data
    with pytest.raises(FileNotFoundError, match="not found"):
        build_dataset(cfg(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        build_dataset(cfg(tmp_path / "empty"))
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        build_dataset(cfg(tmp_path / "noimg"))
    root = make_folder(tmp_path / "bad")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    ds = build_dataset(cfg(root))
    bad = [i for i, (f, _) in enumerate(ds.files) if f.name == "broken.png"][0]
    with pytest.raises(ValueError, match="broken.png"):
        ds[bad]


@pytest.mark.parametrize("kw, words", [
    (dict(vae="other-vae"), "encoded with"),
    (dict(scale_factor=0.13025), "scale_factor"),
    (dict(image_size=256), "made at 32"),
])
def test_latent_metadata_mismatch(tmp_path, kw, words):
    root = make_shards(tmp_path / "lat")
    with pytest.raises(ValueError, match=words):
        build_dataset(latent_cfg(root, **kw))


def test_latent_flip_policy_and_missing_meta(tmp_path):
    root = make_shards(tmp_path / "lat", flip="none")
    with pytest.raises(ValueError, match="need 'both'"):
        build_dataset(latent_cfg(root, flip=True))
    (tmp_path / "nometa").mkdir()
    with pytest.raises(FileNotFoundError, match="has no meta.json"):
        build_dataset(latent_cfg(tmp_path / "nometa"))
    with pytest.raises(FileNotFoundError) as e:  # the error says how to make the shards, or how to try without
        build_dataset(latent_cfg(tmp_path / "missing"))
    assert "does not exist" in str(e.value) and "python -m rfengine.extract_latents" in str(e.value)
    assert "--set data.name=synthetic" in str(e.value)
