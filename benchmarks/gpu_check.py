"""The GPU check: the default model trained in bf16-mixed on a GPU, with and without torch.compile, its
k = 5000 evaluation timed, and its numbers checked against a float32 run on the CPU.

    make gpu-check-bundle                       # here, with network: benchmarks/gpu_bundle/ (<= 64 MiB)
    python benchmarks/gpu_check.py              # on the GPU machine, in one call (< 10 minutes)
    python benchmarks/gpu_check.py --device cpu --dry-run   # a rehearsal of the same code on a CPU

Made for a bare GPU machine without network that has Python 3.12 with torch, torchvision and
lightning but not hydra-core, omegaconf, pyro-ppl or matplotlib: it installs what is missing from
the wheels of benchmarks/gpu_bundle/ (``pip install --no-deps --no-index --target``, into
benchmarks/.envs/gpu_site, put on the runs' PYTHONPATH; nothing is installed into the machine's
Python) and reads MNIST from the bundle's four ``.gz`` files (unless ``$VAE_LAB_DATA`` already
holds MNIST/raw). wandb is neither needed nor carried: every run uses ``logger=csv``. On a machine
without a CUDA GPU it says so and exits 0.

Each leg is a ``python -m vae_lab.train`` run in its own process, seed 0, ``--epochs`` epochs
(``VAE_LAB_TIMING_FILE`` times them from inside; images per second are the median over the epochs
after the first, which holds torch.compile's compilation, reported apart):

1. ``cpu float32``: ``trainer.accelerator=cpu trainer.precision=32-true`` (the reference);
2. ``gpu bf16-mixed``: ``trainer.accelerator=gpu trainer.precision=bf16-mixed``;
3. ``gpu bf16-mixed, compile=true``: the same with torch.compile (inductor, default mode);
4. ``gpu bf16-mixed, compile=reduce-overhead``: inductor with CUDA graphs.

Then ``python -m vae_lab.evaluate`` on leg 2's best checkpoint: k = 5000 on all test images on the
GPU (timed: its ``evaluation.seconds``), and k = 5000 on the first 500 test images on the GPU and,
with the same seed, on the CPU in float32. The checks (:data:`TOLERANCES`):

- the same weights evaluated on the GPU and on the CPU: test/nll_is within 0.1 nats per image (the
  two devices draw different importance samples; k = 5000 puts the Monte Carlo error of a
  500-image mean at about 0.01 nats);
- bf16-mixed training on the GPU against float32 on the CPU, same seed and epochs: test/elbo within
  2 nats per image (about 2% of the ELBO after 3 epochs). The runs cannot be equal: the GPU draws its
  binarization and reparameterization noise from CUDA's generator, and bf16 rounds activations; a
  bug (a wrong loss scale, a likelihood left in bf16, a lost update) moves it by tens of nats;
- each compiled leg against the uncompiled GPU leg: test/elbo within 2 nats (same reasons).

Everything is written to benchmarks/results/gpu.json (``gpu_dry_run.json`` for a dry run); a leg
that fails or overruns the time budget is recorded with the tail of its output, and the rest go on.
Exit status: 0 when every leg ran and every check passed (or there is no GPU), 1 otherwise, 2 when
the bundle is missing or was built from other sources than this tree's.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from gpu_bundle import BUNDLE, MNIST_FILES, source_hash
from timing import REPO, data_root, save

ENVS = REPO / "benchmarks" / ".envs"
SITE = ENVS / "gpu_site"
WORK = ENVS / "gpu_runs"
#: name: (largest allowed difference in nats per image, what is compared).
TOLERANCES = {
    "same weights, GPU vs CPU float32: test/nll_is (k = 5000, 500 test images)": 0.1,
    "training bf16-mixed on the GPU vs float32 on the CPU: test/elbo": 2.0,
    "compile=true vs not compiled: test/elbo": 2.0,
    "compile=reduce-overhead vs not compiled: test/elbo": 2.0,
}
CHECK_IMAGES = 500
K = 5000


# ---------------------------------------------------------------------------------- the environment
def distribution_name(wheel: Path) -> str:
    return wheel.name.split("-")[0].replace("_", "-").lower()


def installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def compatible(wheel: Path) -> bool:
    """A wheel this Python can load: pure Python, or built for this CPython version."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return "-py3-none-any" in wheel.name or "-py2.py3-none-any" in wheel.name or f"-{tag}-{tag}-" in wheel.name


def prepare_environment(rehearse: bool) -> tuple[dict[str, str], list[str]]:
    """Install the bundle's wheels that this Python lacks into SITE (fresh each time); returns the
    environment of the runs (SITE first on PYTHONPATH) and the names installed.

    ``rehearse`` (a dry run, where everything is installed already): install every wheel of the
    bundle that this Python can load, vae_lab's own included, as on the bare machine, and hide
    wandb from the runs, so that the path of the real check is the one exercised."""
    manifest_path = BUNDLE / "manifest.json"
    wheels = sorted((BUNDLE / "wheels").glob("*.whl")) if manifest_path.is_file() else []
    wanted = [wheel for wheel in wheels if (rehearse and compatible(wheel)) or not installed(distribution_name(wheel))]
    missing_without_bundle = [name for name in ("hydra-core", "omegaconf", "vae-lab") if not installed(name)]
    if not wheels and missing_without_bundle:
        fail(
            f"{', '.join(missing_without_bundle)} not installed and no bundle in {BUNDLE}: run `make gpu-check-bundle`"
        )
    if any(distribution_name(wheel) == "vae-lab" for wheel in wanted):
        built_from = json.loads(manifest_path.read_text())["source_hash"]
        if built_from != source_hash():
            fail(f"{BUNDLE} holds a vae_lab wheel built from other sources than this tree: run `make gpu-check-bundle`")
    shutil.rmtree(SITE, ignore_errors=True)
    SITE.mkdir(parents=True)
    if wanted:
        install(wanted)
    paths = [str(SITE)]
    if rehearse:
        blocker = SITE / "wandb.py"  # the bare machine has no wandb: a run that imports it fails here too
        blocker.write_text('raise ImportError("wandb is hidden by gpu_check --dry-run (the GPU machine has none)")\n')
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).rstrip(":"))
    return environment, [wheel.name for wheel in wanted]


def imported_from(environment: dict[str, str]) -> dict[str, str]:
    """Where the runs import vae_lab, hydra and matplotlib from (the bundle's copies, or the machine's)."""
    code = (
        "import json, hydra, matplotlib, vae_lab; "
        "print(json.dumps({m.__name__: m.__file__ for m in (vae_lab, hydra, matplotlib)}))"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=WORK, env=environment, capture_output=True, text=True)
    if completed.returncode:
        fail(f"the runs cannot import what they need:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout)


def install(wheels: list[Path]) -> None:
    """``pip install --no-deps --no-index --target SITE``; without pip (or where pip refuses, e.g. an
    externally managed Python), each wheel unpacked into SITE (a wheel is a zip of what goes into
    site-packages)."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(SITE)]
    if subprocess.run([*command, *map(str, wheels)]).returncode == 0:
        return
    print("gpu_check: pip could not install the bundle: unpacking its wheels instead", file=sys.stderr)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(SITE)


def mnist_root(rehearse: bool) -> Path:
    """$VAE_LAB_DATA when it holds MNIST/raw (and this is not a rehearsal), else the bundle's files unpacked."""
    given = data_root()
    raw_names = [name.removesuffix(".gz") for name in MNIST_FILES]
    if not rehearse and all((given / "MNIST" / "raw" / name).is_file() for name in raw_names):
        return given
    root = ENVS / "gpu_data"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        source = BUNDLE / "MNIST" / name
        target = raw / name.removesuffix(".gz")
        if target.is_file():
            continue
        if not source.is_file():
            fail(f"{source} is missing and {given} holds no MNIST/raw: run `make gpu-check-bundle`")
        partial = target.with_suffix(".partial")
        with gzip.open(source) as compressed, partial.open("wb") as file:
            shutil.copyfileobj(compressed, file)
        partial.rename(target)  # never a half-written file under its real name
    return root


def fail(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------------------------- the legs
class Budget:
    """The seconds left of the one call's time limit."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def run(command: list[str], environment: dict[str, str], budget: Budget, log: Path) -> dict[str, Any]:
    """Run one vae_lab command (cwd WORK, so that the installed vae_lab is the one imported); its
    wall time, exit status and the tail of its output (kept in ``log``)."""
    timeout = budget.left()
    if timeout < 20:
        return {"status": "skipped: out of the time budget"}
    started = time.monotonic()
    try:
        completed = subprocess.run(
            [sys.executable, "-m", *command],
            cwd=WORK,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        output, status = (
            completed.stdout,
            "ok" if completed.returncode == 0 else f"failed (exit {completed.returncode})",
        )
    except subprocess.TimeoutExpired as error:
        output = error.stdout.decode() if isinstance(error.stdout, bytes) else error.stdout or ""
        status = f"failed: out of the time budget after {timeout:.0f} s"
    log.write_text(output)
    result: dict[str, Any] = {"status": status, "wall_seconds": round(time.monotonic() - started, 1)}
    if status != "ok":
        result["output_tail"] = output[-3000:]
    return result


def train_leg(
    name: str, overrides: list[str], epochs: int, common: list[str], environment: dict[str, str], budget: Budget
) -> dict[str, Any]:
    folder = WORK / name.replace(" ", "_").replace(",", "").replace("=", "-")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    timing = folder / "timing.jsonl"
    command = [
        "vae_lab.train",
        "logger=csv",
        "seed=0",
        f"trainer.max_epochs={epochs}",
        f"hydra.run.dir={folder / 'run'}",
        "++eval.n_importance_samples=0",
        *common,
        *overrides,
    ]
    result = run(command, dict(environment, VAE_LAB_TIMING_FILE=str(timing)), budget, folder / "output.log")
    result.update(overrides=overrides, run_dir=str(folder / "run"))
    if timing.is_file():
        events = [json.loads(line) for line in timing.read_text().splitlines()]
        epoch_events = [event for event in events if event["event"] == "epoch"]
        rates = [event["images"] / event["seconds"] for event in epoch_events]
        result["epochs"] = epoch_events
        if rates:
            result["first_epoch_images_per_second"] = rates[0]
            result["images_per_second"] = statistics.median(rates[1:] or rates)
    summary = folder / "run" / "summary.json"
    if summary.is_file():
        metrics = json.loads(summary.read_text()).get("metrics", {})
        result["test/elbo"] = metrics.get("test/elbo")
    return result


def evaluate_leg(
    run_dir: str, device: str, n_images: int | None, k: int, environment: dict[str, str], budget: Budget, log: Path
) -> dict[str, Any]:
    threads = ["threads=" + str(os.cpu_count() or 1)] if device == "cpu" else []
    command = [
        "vae_lab.evaluate",
        f"run_dir={run_dir}",
        f"device={device}",
        f"n_importance_samples={k}",
        f"n_test_images={'null' if n_images is None else n_images}",
        "seed=0",
        "wandb=false",
        *threads,
    ]
    result = run(command, environment, budget, log)
    result.update(device=device, n_importance_samples=k, n_test_images=n_images)
    summary = Path(run_dir) / "summary.json"
    if result["status"] == "ok" and summary.is_file():
        written = json.loads(summary.read_text())
        result["test/nll_is"] = written["metrics"].get("test/nll_is")
        result["seconds"] = written.get("evaluation", {}).get("seconds")
    return result


def check(name: str, a: float | None, b: float | None) -> dict[str, Any]:
    tolerance = TOLERANCES[name]
    if a is None or b is None:
        return {"check": name, "tolerance_nats": tolerance, "passed": False, "why": "a leg it needs did not finish"}
    difference = abs(a - b)
    return {
        "check": name,
        "values": [a, b],
        "difference_nats": difference,
        "tolerance_nats": tolerance,
        "passed": difference <= tolerance,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of each leg")
    parser.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="where the 'gpu' legs run (cpu: a rehearsal on this machine's CPU)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny legs (a few batches, k = 20 on 20 images, compile with aot_eager), all of the bundle "
        "installed as on the bare machine, wandb hidden: the whole path in a minute or two on a CPU",
    )
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole check (one call: 10 minutes)")
    arguments = parser.parse_args()

    import torch

    if arguments.device != "cpu" and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA GPU on this machine (torch {torch.__version__}, torch.cuda.is_available() is "
            "False): nothing to check. Run it on a GPU machine, or rehearse it here with --device cpu --dry-run."
        )
        return 0
    budget = Budget(arguments.budget)
    rehearse = arguments.dry_run
    environment, installed_wheels = prepare_environment(rehearse)
    root = mnist_root(rehearse)
    WORK.mkdir(parents=True, exist_ok=True)
    sources = imported_from(environment)
    print(f"gpu_check: installed from the bundle: {', '.join(installed_wheels) or 'nothing'}; imports: {sources}")
    accelerator = "gpu" if arguments.device != "cpu" else "cpu"
    eval_device = "cuda" if accelerator == "gpu" else "cpu"
    common = [f"data.root={root}"]
    epochs, k, check_images, full_images = arguments.epochs, K, CHECK_IMAGES, None
    compile_true, compile_graphs = "compile=true", "compile=reduce-overhead"
    if rehearse:
        common += ["+trainer.limit_train_batches=20", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2"]
        epochs, k, check_images, full_images = min(epochs, 2), 20, 20, 40
        compile_true = compile_graphs = "compile=aot_eager"  # inductor compiles for minutes on a small CPU
    gpu = [f"trainer.accelerator={accelerator}", "trainer.precision=bf16-mixed"]
    legs_to_run = {
        "cpu float32": ["trainer.accelerator=cpu", "trainer.precision=32-true"],
        "gpu bf16-mixed": gpu,
        "gpu bf16-mixed, compile=true": [*gpu, compile_true],
        "gpu bf16-mixed, compile=reduce-overhead": [*gpu, compile_graphs],
    }
    legs: dict[str, Any] = {}
    for name, overrides in legs_to_run.items():
        print(f"gpu_check: {name} ({budget.left():.0f} s left)", flush=True)
        legs[name] = train_leg(name, overrides, epochs, common, environment, budget)
        print(f"  {json.dumps({key: legs[name].get(key) for key in ('status', 'images_per_second', 'test/elbo')})}")
    evaluations: dict[str, Any] = {}
    reference = legs["gpu bf16-mixed"]
    if reference["status"] == "ok":
        plan = {
            f"gpu, k = {k}, {check_images} test images": (eval_device, check_images),
            f"cpu float32, k = {k}, {check_images} test images": ("cpu", check_images),
            f"gpu, k = {k}, all test images (timed)": (eval_device, full_images),
        }
        for index, (name, (device, n_images)) in enumerate(plan.items()):
            print(f"gpu_check: evaluation {name} ({budget.left():.0f} s left)", flush=True)
            log = WORK / f"evaluation_{index}.log"
            evaluations[name] = evaluate_leg(reference["run_dir"], device, n_images, k, environment, budget, log)
            print(f"  {json.dumps({key: evaluations[name].get(key) for key in ('status', 'test/nll_is', 'seconds')})}")
    same_weights = [evaluations.get(name, {}).get("test/nll_is") for name in list(evaluations)[:2]] or [None, None]
    names = list(TOLERANCES)
    checks = [
        check(names[0], *same_weights),
        check(names[1], reference.get("test/elbo"), legs["cpu float32"].get("test/elbo")),
        check(names[2], legs["gpu bf16-mixed, compile=true"].get("test/elbo"), reference.get("test/elbo")),
        check(names[3], legs["gpu bf16-mixed, compile=reduce-overhead"].get("test/elbo"), reference.get("test/elbo")),
    ]
    for result in checks:
        print(
            f"gpu_check: {'ok  ' if result['passed'] else 'FAIL'} {result['check']}: "
            f"{result.get('difference_nats', result.get('why'))} (tolerance {result['tolerance_nats']} nats)"
        )
    everything_ran = all(leg["status"] == "ok" for leg in [*legs.values(), *evaluations.values()])
    path = save(
        "gpu_dry_run" if rehearse else "gpu",
        {
            "dry_run": rehearse,
            "device": eval_device,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() and accelerator == "gpu" else None,
            "versions": {name: importlib.metadata.version(name) for name in ("torch", "lightning") if installed(name)},
            "epochs": epochs,
            "installed_from_bundle": installed_wheels,
            "imported_from": sources,
            "data_root": str(root),
            "legs": legs,
            "evaluations": evaluations,
            "checks": checks,
            "all_ran": everything_ran,
            "all_passed": all(result["passed"] for result in checks),
            "seconds": round(arguments.budget - budget.left(), 1),
        },
    )
    print(f"gpu_check: saved {path}")
    return 0 if everything_ran and all(result["passed"] for result in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
