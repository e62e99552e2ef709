"""Sampling at FID-50K scale: chunks written by each process as they are made, a killed 2-process run
started again gives the very file an uninterrupted run gives, the merge streams (its memory is one
chunk, not the whole set), and a restart with other settings is refused."""
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch

from rfengine import sample, sample_shards as shards
from rfengine.trainer import Trainer
from tests.helpers import ROOT, tiny_cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(tiny_cfg(out, "train.steps=2")).run()
    return out


ARGS = ["--count", "10", "--batch", "2", "--steps", "2"]  # 5 chunks
STEM = "samples_ema_step2_euler2_cfg1_n10_seed0"


def _torchrun(*args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "rfengine.sample", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_killed_two_process_run_resumes_to_the_same_file(run_dir, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as under torchrun: the same kernels, the same bits
    try:
        assert sample.sample_main(["--run-dir", str(run_dir), *ARGS, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "two"
    args = ["--run-dir", str(run_dir), *ARGS, "--out", str(out)]
    killed = _torchrun(*args, env={"RFENGINE_FAULT": "sample_chunk@1"})  # SIGKILL after a first chunk
    assert killed.returncode != 0
    parts = out / f"{STEM}.parts"
    written = sorted(p.name for p in parts.glob("chunk_*.npz"))
    assert 1 <= len(written) < 5 and not (out / f"{STEM}.npz").exists()
    assert not list(parts.glob(".*tmp*"))  # no half-written chunk left behind
    again = _torchrun(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(written)} of 5 chunks are written already" in again.stderr
    assert (out / f"{STEM}.npz").read_bytes() == (tmp_path / "one" / f"{STEM}.npz").read_bytes()
    assert not parts.exists()
    meta = json.loads((out / f"{STEM}.json").read_text())
    assert meta["world"] == 2 and meta["num"] == 10


def test_a_restart_with_other_settings_is_refused(run_dir, tmp_path, capsys):
    parts = tmp_path / f"{STEM}.parts"
    plan = shards.chunks(10, 2)
    shards.open_parts(parts, {"batch": 3}, len(plan))
    assert sample.sample_main(["--run-dir", str(run_dir), *ARGS, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds chunks made with other settings" in err and "batch: 3 then, 2 now" in err


def _shards(parts, n, size, side=8):
    parts.mkdir()
    plan = shards.chunks(n, size)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    labels = rng.integers(0, 1000, n)
    for j, rows in enumerate(plan):
        shards.write_chunk(parts, j, images[rows.start:rows.stop], labels[rows.start:rows.stop], None)
    return plan, images, labels


def test_merge_writes_what_np_savez_writes(tmp_path):
    plan, images, labels = _shards(tmp_path / "parts", 11, 4)
    first, nfe = shards.merge(tmp_path / "parts", plan, tmp_path / "m.npz", labelled=True, keep_first=6)
    np.savez(tmp_path / "ref.npz", images, labels)  # ADM's call: positional arrays arr_0, arr_1
    with np.load(tmp_path / "m.npz") as m, np.load(tmp_path / "ref.npz") as r:
        assert m.files == r.files == ["arr_0", "arr_1"]
        assert np.array_equal(m["arr_0"], r["arr_0"]) and np.array_equal(m["arr_1"], r["arr_1"])
        assert m["arr_1"].dtype == np.int64
    assert np.array_equal(first, images[:6]) and nfe == [None] * 3
    (tmp_path / "parts" / "chunk_000001.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="chunk_000001.npz: unreadable chunk.*delete it"):
        shards.merge(tmp_path / "parts", plan, tmp_path / "m2.npz", labelled=True)
    assert not (tmp_path / "m2.npz").exists()


def test_merge_holds_one_chunk_not_the_set(tmp_path):
    """Merging 40 chunks of 0.4 MB (16 MB of images) peaks at about one chunk of memory."""
    plan, images, _ = _shards(tmp_path / "parts", 400, 10, side=115)
    chunk = images[:10].nbytes
    del images
    tracemalloc.start()  # numpy reports its allocations to tracemalloc
    try:
        shards.merge(tmp_path / "parts", plan, tmp_path / "m.npz", labelled=True, keep_first=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * chunk, (peak, chunk)
