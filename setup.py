"""Packaging for rfengine: the `rfengine` engine and the standalone `kernels` ops."""
from setuptools import find_packages, setup

setup(
    name="rfengine",
    version="0.1.0",
    description="Performance-first training engine for flow-matching DiT/SiT generators with ReflexFlow",
    python_requires=">=3.10",
    packages=find_packages(include=["rfengine", "rfengine.*", "kernels", "kernels.*"]),
    # the digit classifier behind every digits FD: the same weights on every machine
    package_data={"rfengine.eval": ["digits_classifier.safetensors"]},
    install_requires=[
        # The floors are what the code uses (tests/test_requirements.py checks them against the source):
        # FSDP2's `torch.distributed.fsdp.fully_shard` (2.6), `torch.serialization.safe_globals` (2.5),
        # `np.trapezoid` (numpy 2). The ceiling keeps the local CPU build 2.13.0 inside the range (a range
        # it does not satisfy would pull a multi-GB CUDA build).
        "torch>=2.6,<2.15",
        "triton>=3.0; platform_system == 'Linux'",
        "numpy>=2",
        "pyyaml",
        "tqdm",
        "pillow",
        "nvidia-ml-py",
        "scikit-learn",
        "scipy",
        "matplotlib",
        "safetensors",  # EMA weight export
        "tensorboard",  # training curves (metrics.jsonl holds the same numbers)
    ],
    extras_require={
        "dev": ["pytest", "pytest-xdist", "pytest-benchmark", "diffusers", "torchdiffeq"],
        # Adaptive ODE sampling (python -m rfengine.sample --method dopri5), as SiT's default ODE sampler.
        "sample": ["torchdiffeq"],
        # Latent extraction (python -m rfengine.extract_latents) with a diffusers AutoencoderKL.
        "latents": ["diffusers"],
        # CUDA only; install after torch so it does not replace the torch build.
        "xformers": ["xformers"],
    },
)
