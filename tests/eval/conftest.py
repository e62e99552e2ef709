"""A stand-in for the FID Inception weights (the published file's format and keys, random values), made once per
session: the real file cannot be downloaded here."""
import pytest

from rfengine import storage
from rfengine.eval import inception


@pytest.fixture(scope="session")
def standin_weights(tmp_path_factory):
    """(path, sha256) of a random-weights file in the published format."""
    path = inception.save_random_weights(tmp_path_factory.mktemp("inception") / "standin-inception.pth")
    return path, storage.sha256_file(path)
