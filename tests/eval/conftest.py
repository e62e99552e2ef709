"""Shared fixtures of the evaluation and study tests: a stand-in for the FID Inception weights (the
published file's format and keys, random values; the real file cannot be downloaded here), and the studies'
quick pipelines, each run once per test session and shared by every test that reads it (a quick study takes a
minute or more on 2 cores). A test that would change a study folder copies it first (`copy_study`). A test that
runs a study's jobs in this process takes `one_thread`, as the studies' worker processes do."""
import shutil
from pathlib import Path

import pytest
import torch

from rfengine import storage
from rfengine.eval import inception


@pytest.fixture(scope="session")
def standin_weights(tmp_path_factory):
    """(path, sha256) of a random-weights file in the published format."""
    path = inception.save_random_weights(tmp_path_factory.mktemp("inception") / "standin-inception.pth")
    return path, storage.sha256_file(path)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, as in a study's worker process (`runs.init_worker`), whatever
    OMP_NUM_THREADS says (tests/conftest.py's one thread is only a default): a test that re-trains in this
    process what a worker trained compares the weights bit for bit. The thread count is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_quick(tmp_path_factory, name: str, main) -> Path:
    """`main(["--quick", ...])` of a study into a fresh folder, one worker; returns the folder."""
    out = tmp_path_factory.mktemp(name) / "study"
    assert main(["--quick", "--out", str(out), "--workers", "1"]) == 0
    return out


def copy_study(src: Path, tmp_path: Path) -> Path:
    """A private copy of a shared study folder, for a test that resumes or changes it."""
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def study_v3_quick(tmp_path_factory) -> Path:
    """Study v3's quick pipeline (`python -m rfengine.study --quick`), finished: read it, do not change it."""
    from rfengine.study import v3
    return run_quick(tmp_path_factory, "study_v3", v3.main)
