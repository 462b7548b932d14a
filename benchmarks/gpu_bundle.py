"""Build benchmarks/gpu_bundle/: what benchmarks/gpu_check.py needs on a bare GPU machine without network.

    make gpu-check-bundle        # or: python benchmarks/gpu_bundle.py

The target machine has Python 3.12 with torch, torchvision and lightning (and their dependencies:
numpy, pillow, PyYAML, filelock, tqdm, packaging, fsspec) but not the rest of what a
``python -m vae_lab.train logger=csv`` run imports. This script ``pip download``s, for CPython
3.12 on manylinux x86_64 and without dependencies (each one named below, so that nothing large,
such as torch, comes along), the wheels of:

- hydra-core, omegaconf, antlr4-python3-runtime (the configs);
- pyro-ppl, pyro-api, opt_einsum (the flow posteriors: imported by the model package);
- matplotlib and its dependencies (the posterior-collapse heatmap at the end of a run);

builds vae_lab's own wheel from this tree, copies the four MNIST ``.gz`` files from
``$VAE_LAB_DATA/MNIST/raw`` and writes ``manifest.json`` (each file's size and sha256, and a hash
of vae_lab's sources, so that gpu_check refuses a bundle built from other sources). wandb is not
carried: with ``logger=csv`` the training path never imports it. The bundle must stay within
64 MiB (checked here; the build fails otherwise).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from timing import REPO, data_root

BUNDLE = REPO / "benchmarks" / "gpu_bundle"
LIMIT_MIB = 64
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
#: Published as a source distribution only (pure Python): built into a wheel here.
SOURCE_ONLY = ("antlr4-python3-runtime==4.9.3",)
#: The exact versions tested here (pyproject.toml's ranges), one wheel each.
WHEELS = (
    "hydra-core==1.3.8",
    "omegaconf==2.3.1",
    "pyro-ppl==1.9.2",
    "pyro-api==0.1.2",
    "opt_einsum==3.4.0",
    "matplotlib==3.11.2",
    "contourpy==1.3.3",
    "cycler==0.12.1",
    "fonttools==4.68.0",
    "kiwisolver==1.5.1",
    "pyparsing==3.3.3",
    "python-dateutil==4.0.0",
    "tzdata==2026.6",
)
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def source_hash(root: Path = REPO) -> str:
    """sha256 over vae_lab's Python sources and configs (paths and contents), in sorted order."""
    digest = hashlib.sha256()
    files = sorted([*root.joinpath("vae_lab").rglob("*.py"), *root.joinpath("conf").rglob("*.yaml")])
    for path in files:
        if "__pycache__" in path.parts:
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pip(*arguments: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *arguments], check=True)


def build() -> Path:
    """Write the bundle afresh into a temporary folder, then move it into place (never half-written)."""
    staging = BUNDLE.with_name(BUNDLE.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    wheels = staging / "wheels"
    wheels.mkdir(parents=True)
    platforms = [argument for platform in PLATFORMS for argument in ("--platform", platform)]
    pip(
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        *platforms,
        "--dest",
        str(wheels),
        *WHEELS,
    )
    pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), *SOURCE_ONLY)
    pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(REPO))
    mnist = staging / "MNIST"
    mnist.mkdir()
    raw = data_root() / "MNIST" / "raw"
    for name in MNIST_FILES:
        if not (raw / name).is_file():
            sys.exit(f"gpu_bundle: {raw / name} is missing: set VAE_LAB_DATA to a folder with MNIST/raw/*.gz")
        shutil.copyfile(raw / name, mnist / name)
    files = sorted(path for path in staging.rglob("*") if path.is_file())
    total = sum(path.stat().st_size for path in files)
    if total > LIMIT_MIB * 2**20:
        shutil.rmtree(staging)
        sys.exit(f"gpu_bundle: {total / 2**20:.1f} MiB is over the {LIMIT_MIB} MiB that travels with the check")
    manifest = {
        "python": PYTHON_VERSION,
        "source_hash": source_hash(),
        "total_bytes": total,
        "files": {
            str(path.relative_to(staging)): {"bytes": path.stat().st_size, "sha256": sha256(path)} for path in files
        },
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(BUNDLE, ignore_errors=True)
    staging.rename(BUNDLE)
    print(f"gpu_bundle: {len(files)} files, {total / 2**20:.1f} MiB (limit {LIMIT_MIB} MiB) in {BUNDLE}")
    return BUNDLE


if __name__ == "__main__":
    build()
