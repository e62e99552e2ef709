"""Checkpoints: atomic writes, damaged files never chosen, a checkpoint from another model named key by key."""
import pytest
import torch

from rfengine import checkpoint
from rfengine.models import build_model
from rfengine.trainer import Trainer
from tests.helpers import read_metrics, set_args, tiny_cfg, train_cli


def test_interrupted_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "step_00000001.pt"
    checkpoint.save_atomic({"step": 1, "model": {}}, path)

    def crash(tmp):
        assert tmp.exists() and tmp.name.startswith(".step_00000001.pt.tmp-")
        raise KeyboardInterrupt  # as if the process were interrupted between write and rename

    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({"step": 2, "model": {}}, path, before_rename=crash)
    assert checkpoint.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # temporary file cleaned up


def test_latest_skips_corrupt_and_ignores_temporaries(tmp_path, caplog):
    for step in (2, 4):
        checkpoint.save_atomic({"step": step, "model": {}}, checkpoint.checkpoint_path(tmp_path, step))
    newest = checkpoint.checkpoint_path(tmp_path, 6)
    newest.write_bytes(checkpoint.checkpoint_path(tmp_path, 4).read_bytes()[:100])  # torn (non-atomic copy)
    (tmp_path / ".step_00000008.pt.tmp-123").write_bytes(b"half")
    path, ckpt = checkpoint.latest(tmp_path)
    assert path.name == "step_00000004.pt" and ckpt["step"] == 4
    assert "skipping damaged checkpoint" in caplog.text and "step_00000006.pt" in caplog.text
    assert checkpoint.remove_temporaries(tmp_path)[0].name == ".step_00000008.pt.tmp-123"


def test_corrupt_checkpoint_named(tmp_path):
    bad = tmp_path / "step_00000003.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="step_00000003.pt is not a checkpoint or weights file that rfengine can read"):
        checkpoint.load(bad)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an rfengine training checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "missing.pt")


def test_checkpoint_from_another_model_names_the_keys():
    small = build_model("DiT-T/4", in_channels=1, input_size=16, num_classes=10)
    other = build_model("DiT-T/2", in_channels=1, input_size=16, num_classes=10, learn_sigma=True)
    with pytest.raises(ValueError) as e:
        checkpoint.load_model_state(small, other.state_dict(), "ckpt X")
    msg = str(e.value)
    assert "ckpt X does not match this model" in msg
    assert "x_embedder.proj.weight: checkpoint (64, 1, 2, 2) vs model (64, 1, 4, 4)" in msg
    assert "final_layer.linear.weight" in msg


def test_wrapper_prefixes_are_stripped():
    torch.manual_seed(0)
    source = build_model("DiT-T/4", in_channels=1, input_size=16, num_classes=10)
    torch.manual_seed(1)
    model = build_model("DiT-T/4", in_channels=1, input_size=16, num_classes=10)
    state = {f"module._orig_mod.{k}": v for k, v in source.state_dict().items()}
    checkpoint.load_model_state(model, state)  # DDP + compile names load into the bare model
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_resume_with_another_model_fails_clearly(tmp_path):
    Trainer(tiny_cfg(tmp_path, "train.steps=2")).run()
    r = train_cli("--config", "configs/tiny_fm.yaml", *set_args("train.progress=false", f"train.out_dir={tmp_path}",
                                                            "model.arch=DiT-T/2", "train.steps=4"), "--resume", "auto")
    assert r.returncode == 1
    assert "rfengine: error: checkpoint" in r.stderr and "does not match this model" in r.stderr
    assert "Traceback" not in r.stderr


def test_checkpoint_is_complete(tmp_path):
    Trainer(tiny_cfg(tmp_path, "train.steps=2")).run()
    _, ckpt = checkpoint.latest(tmp_path / "checkpoints")
    for key in ("step", "batches", "model", "ema", "optimizer", "scheduler", "rng", "config", "code_version",
                "world_size"):
        assert key in ckpt, key
    assert set(ckpt["rng"][0]) >= {"torch", "numpy", "python"}
    assert ckpt["config"]["model"]["arch"] == "DiT-T/4" and ckpt["step"] == 2


def test_keep_ckpts_prunes_old_ones(tmp_path):
    Trainer(tiny_cfg(tmp_path, "train.steps=6", "train.ckpt_every=1", "train.keep_ckpts=2")).run()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000005.pt", "step_00000006.pt"]
    assert len(read_metrics(tmp_path)) == 6


def test_a_fresh_run_into_a_used_folder_is_refused(tmp_path, capsys):
    """Without --resume, a folder that holds another run's checkpoints or metrics is refused in one line
    naming both ways on, and nothing in it changes; `--resume auto` continues the run there."""
    import shutil

    from rfengine import train
    from tests.helpers import ROOT, TINY
    run = tmp_path / "run"
    Trainer(tiny_cfg(run, "train.steps=2")).run()
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    args = ["--config", str(ROOT / "configs" / "tiny_fm.yaml"), *set_args(*TINY, f"train.out_dir={run}", "train.steps=3")]
    assert train.main(args) == 1
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("rfengine: error:")]
    assert len(lines) == 1 and f"train.out_dir {run} already holds a run" in lines[0], lines
    assert "step_00000002.pt" in lines[0] and "metrics.jsonl" in lines[0]
    assert "--resume auto" in lines[0] and "a fresh train.out_dir" in lines[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files
    shutil.rmtree(run / "checkpoints")  # metrics alone (a run stopped before its first checkpoint)
    with pytest.raises(ValueError, match=r"already holds a run \(metrics.jsonl\)"):
        Trainer(tiny_cfg(run, "train.steps=3"))
    assert train.main([*args, "--resume", "auto"]) == 0
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]


def _sharded(folder, step, value=1.0):
    """A one-process sharded checkpoint of a small tensor dict."""
    return checkpoint.save_sharded({"model": {"w": torch.full((3, 5), value)}}, {"step": step},
                                   checkpoint.checkpoint_path(folder, step, sharded=True), is_main=True)


def test_sharded_checkpoints_round_trip_and_incomplete_folders_are_skipped(tmp_path, caplog):
    _sharded(tmp_path, 2, 2.0)
    _sharded(tmp_path, 4, 4.0)
    target = {"model": {"w": torch.zeros(3, 5)}}
    checkpoint.load_sharded(tmp_path / "step_00000004", target)
    assert torch.equal(target["model"]["w"], torch.full((3, 5), 4.0))
    # A folder with a checkpoint's name but without DCP metadata (not from our atomic rename) is skipped.
    (tmp_path / "step_00000006").mkdir()
    (tmp_path / "step_00000006" / "meta.pt").write_bytes(b"x")
    (tmp_path / ".step_00000008.tmp-dcp").mkdir()  # left by a killed writer
    path, meta = checkpoint.latest(tmp_path)
    assert path.name == "step_00000004" and meta["step"] == 4 and meta["sharded"] == str(path)
    assert "not a complete sharded checkpoint" in caplog.text
    assert [p.name for p in checkpoint.remove_temporaries(tmp_path)] == [".step_00000008.tmp-dcp"]
    checkpoint.prune(tmp_path, keep=1)  # the newest complete one is kept, not the damaged one after it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004", "step_00000006"]


def test_pruning_keeps_the_newest_complete_checkpoints(tmp_path):
    """Damaged checkpoints newer than the complete ones (a torn copy, a file that is not a checkpoint) are
    never counted as kept: the newest `keep` complete ones stay, the damaged newer ones too (until they
    are older), everything older goes; with fewer complete ones than `keep`, nothing goes."""
    for step in (2, 4, 6):
        checkpoint.save_atomic({"step": step, "model": {}}, checkpoint.checkpoint_path(tmp_path, step))
    good = checkpoint.checkpoint_path(tmp_path, 6).read_bytes()
    checkpoint.checkpoint_path(tmp_path, 8).write_bytes(good[: len(good) // 2])
    checkpoint.checkpoint_path(tmp_path, 10).write_text("not a checkpoint")
    checkpoint.prune(tmp_path, keep=3)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [2, 4, 6, 8, 10]
    checkpoint.prune(tmp_path, keep=2)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [4, 6, 8, 10]
    assert checkpoint.latest(tmp_path)[1]["step"] == 6


def test_resaving_a_sharded_step_keeps_the_old_set_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    """The same step saved again: a crash between taking the old folder's name away and giving it to the
    new one leaves the old set, which the next start puts back; an uncut re-save leaves the new set only."""
    import rfengine.checkpoint.sharded as sharded
    _sharded(tmp_path, 2, 2.0)
    real = sharded.os.replace

    def cut(src, dst):
        if ".tmp-dcp" in str(src):
            raise KeyboardInterrupt  # killed between the two renames
        real(src, dst)
    monkeypatch.setattr(sharded.os, "replace", cut)
    with pytest.raises(KeyboardInterrupt):
        _sharded(tmp_path, 2, 3.0)
    monkeypatch.setattr(sharded.os, "replace", real)
    checkpoint.remove_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002"]
    target = {"model": {"w": torch.zeros(3, 5)}}
    checkpoint.load_sharded(tmp_path / "step_00000002", target)
    assert torch.equal(target["model"]["w"], torch.full((3, 5), 2.0))  # the old set, complete
    _sharded(tmp_path, 2, 3.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002"]
    checkpoint.load_sharded(tmp_path / "step_00000002", target)
    assert torch.equal(target["model"]["w"], torch.full((3, 5), 3.0))


def test_cuda_rng_state_is_this_process_device_only(monkeypatch):
    """Saved and restored for the current device alone (a resume may see fewer devices); a checkpoint
    written before (one state per visible device) restores the current device's entry."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append(state.tolist()))
    for name in ("get_rng_state_all", "set_rng_state_all"):  # every visible device: must not be used
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: pytest.fail("every device's RNG state touched"))
    state = checkpoint.capture_rng()
    assert state["cuda"].tolist() == [7]
    checkpoint.restore_rng(state)
    older = {**state, "cuda": [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]}
    checkpoint.restore_rng(older)
    assert calls == [[7], [2]]


def test_sharded_checkpoint_from_another_model_is_named(tmp_path):
    _sharded(tmp_path, 2)
    with pytest.raises(ValueError, match="does not match this model"):
        checkpoint.load_sharded(tmp_path / "step_00000002", {"model": {"w": torch.zeros(4, 5)}})
    with pytest.raises(ValueError, match="does not match this model"):
        checkpoint.load_sharded(tmp_path / "step_00000002", {"model": {"other": torch.zeros(3, 5)}})


def test_safetensors_export_round_trip_and_foreign_files(tmp_path):
    state = {"module.a": torch.randn(2, 3), "b": torch.arange(4)}
    path = checkpoint.export_safetensors(state, tmp_path / "w.safetensors", {"weights": "ema", "step": 7})
    loaded, meta = checkpoint.load_safetensors(path)
    assert meta == {"weights": "ema", "step": 7}
    assert torch.equal(loaded["a"], state["module.a"]) and torch.equal(loaded["b"], state["b"])
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="no rfengine metadata"):
        checkpoint.load_safetensors(tmp_path / "foreign.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.safetensors is not a checkpoint or weights file that rfengine can read"):
        checkpoint.load_safetensors(tmp_path / "junk.safetensors")


def test_resume_auto_stops_when_checkpoints_exist_and_none_loads(tmp_path):
    """--resume auto never starts over silently on top of a run whose checkpoint files cannot be read."""
    Trainer(tiny_cfg(tmp_path, "train.steps=4", "train.ckpt_every=2")).run()
    for _, path in checkpoint.list_checkpoints(tmp_path / "checkpoints"):
        path.write_bytes(b"torn")
    r = train_cli("--config", "configs/tiny_fm.yaml", *set_args("train.progress=false", f"train.out_dir={tmp_path}",
                                                            "model.arch=DiT-T/4", "train.steps=6"), "--resume", "auto")
    assert r.returncode == 1, r.stderr[-2000:]
    line = [x for x in r.stderr.splitlines() if x.startswith("rfengine: error:")]
    assert len(line) == 1 and "none of the 2 checkpoint(s)" in line[0] and "step_00000004.pt" in line[0]
    assert "to start fresh, move them away" in line[0] and "Traceback" not in r.stderr
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == [2, 4]  # nothing overwritten


def test_resume_hint_names_the_newest_checkpoint_without_reading_it(tmp_path, monkeypatch):
    """From the names alone: the files hold no checkpoint (a hint that read them would skip them all), and
    no file is opened while the hint is made."""
    import builtins
    for step in (2, 4):
        checkpoint.checkpoint_path(tmp_path, step).write_bytes(b"not read")
    (tmp_path / "step_00000006").mkdir()  # a sharded folder's name counts too

    def no_read(*a, **k):
        raise AssertionError("resume_hint read a file")
    monkeypatch.setattr(builtins, "open", no_read)
    monkeypatch.setattr(torch, "load", no_read)
    hint = checkpoint.resume_hint(tmp_path)
    monkeypatch.undo()
    assert "step_00000006 (step 6)" in hint and "--resume auto" in hint, hint


def test_the_code_version_is_this_checkout_and_read_once_per_run(tmp_path, monkeypatch):
    """The commit of the checkout the package sits in; an installed copy inside another repository (a
    virtualenv in a user's project) is 'unknown', not that project's HEAD. Read once per run, on the main
    thread, however many checkpoints the run writes."""
    import subprocess
    import threading

    from rfengine.run import checkpoints as manager
    repo = tmp_path / "project"
    (repo / "venv" / "site-packages" / "rfengine").mkdir(parents=True)
    (repo / "rfengine").mkdir()
    for cmd in (["init", "-q"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, capture_output=True)
    project_head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert manager.code_version(repo / "venv" / "site-packages" / "rfengine") == "unknown"
    assert manager.code_version(repo / "rfengine") == project_head
    calls, real = [], subprocess.run

    def counted(*a, **k):
        calls.append(threading.current_thread().name)
        return real(*a, **k)
    monkeypatch.setattr(manager.subprocess, "run", counted)
    Trainer(tiny_cfg(tmp_path / "run", "train.steps=4", "train.ckpt_every=1")).run()
    assert len(checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")) >= 3
    assert calls in (["MainThread"], ["MainThread"] * 2), calls  # --show-toplevel (then HEAD, in a checkout), once
