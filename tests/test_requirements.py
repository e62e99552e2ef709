"""setup.py's floors are the versions the code needs: every feature below is used by the package (its
source says so) and first shipped in the version named, and setup.py's minimum is at least the newest of
them; the installed versions (this machine's CPU torch included) satisfy setup.py."""
import ast
from importlib.metadata import version as installed

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.helpers import ROOT

FEATURES = [  # (distribution, the first version with it, how the source uses it)
    ("torch", "2.6", "from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard"),  # FSDP2's public home
    ("torch", "2.5", "torch.serialization.safe_globals("),
    ("torch", "2.4", "torch.library.custom_op("),
    ("torch", "2.4", "create_selective_checkpoint_contexts"),
    ("numpy", "2.0", "np.trapezoid("),
]


def _requirements() -> dict:
    """setup.py's install_requires, by distribution name (read, not run)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    found = next(k.value for k in ast.walk(tree) if isinstance(k, ast.keyword) and k.arg == "install_requires")
    return {r.name: r for r in map(Requirement, ast.literal_eval(found))}


def _floor(req: Requirement) -> Version:
    lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert lows, f"setup.py gives {req.name} no minimum ({req})"
    return max(lows)


def _source() -> str:
    return "".join(p.read_text() for folder in ("rfengine", "kernels") for p in sorted((ROOT / folder).rglob("*.py")))


@pytest.mark.parametrize("dist, first, usage", FEATURES)
def test_the_floor_covers_every_feature_the_code_uses(dist, first, usage):
    assert usage in _source(), f"{usage!r} is no longer used: take it out of FEATURES"
    floor = _floor(_requirements()[dist])
    assert floor >= Version(first), f"setup.py allows {dist} {floor}, but the code uses {usage!r} (from {first})"


def test_the_installed_versions_satisfy_setup_py():
    for dist in ("torch", "numpy"):
        req = _requirements()[dist]
        assert req.specifier.contains(installed(dist), prereleases=True), (dist, installed(dist), str(req))
