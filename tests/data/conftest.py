"""The stand-ins latent tests share: a tiny random VAE saved as a local copy of sd-vae-ft-ema, and a
class-folder image set."""
import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def vae_dir(tmp_path_factory):
    """A local folder named as the hub model it stands in for (`--vae /local/sd-vae-ft-ema`)."""
    pytest.importorskip("diffusers", reason="the optional [latents] extra (diffusers) is not installed")
    from tests.helpers import tiny_vae
    return tiny_vae(tmp_path_factory.mktemp("local") / "sd-vae-ft-ema")


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir()
        for i in range(5 + c):  # 11 images, odd sizes: resized and centre-cropped
            arr = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root
