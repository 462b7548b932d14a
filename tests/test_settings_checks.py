"""Issue 12 (settings checks and divergence) and issue 14's dead rules.

- Every declared rule (vae_lab.run.settings.RULES, and each range or choice that a class of the shipped
  configs or a settings dataclass declares in its signature, vae_lab.ranges) matches a real field and
  refuses a bad value there; no range lets NaN or an infinity through.
- The settings named in the issue are refused with the key, before any data is read: in-process
  through the two calls train() makes first (validate_config, check_training_machine), and through
  the CLI: exit 2, no summary.json, and the retry with a good setting in the same directory runs.
- The memory estimate against its closed form for the default model.
- ``python -m vae_lab.evaluate``: unknown keys, types, ranges, a device this machine lacks, a
  corrupt saved config.
- A finite divergence (Adam, lr = 1e6) ends ``diverged``; warm-up, capacity and density likelihoods
  do not come near the bound.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module

from tests.conftest import REPO, TINY, compose_config, run_cli
from tests.test_config_validation import every_shipped_choice
from vae_lab.errors import ConfigError, NumericalError
from vae_lab.ranges import Rule
from vae_lab.run.machine_checks import ModelSizes, check_training_machine, model_sizes, training_step_bytes
from vae_lab.run.settings import RULES, EvaluateSettings, declared_rules_of, find_problems, validate_config

QUIET = ["+trainer.enable_progress_bar=false"]
HAS_CUDA = torch.cuda.is_available()


def refusal(*overrides: str) -> str:
    """The message train() refuses these overrides with, before it reads any data."""
    cfg = compose_config(*overrides)
    with pytest.raises(ConfigError) as raised:
        validate_config(cfg)
        check_training_machine(cfg)
    return str(raised.value)


# ---------------------------------------------------------------------------------------- every rule fires
#: For each pattern of RULES and each field with declared rules: (the overrides that make its field exist, a
#: concrete field it matches, a bad value).
BAD_VALUE_OF_EACH_RULE: dict[str, tuple[list[str], str, str]] = {
    "seed": ([], "seed", "-1"),
    "threads": ([], "threads", "0"),
    "check_finite_every_n_steps": ([], "check_finite_every_n_steps", "-1"),
    "schedule": ([], "schedule", "weekly"),
    "callbacks.early_stopping.patience": (
        ["callbacks.early_stopping={_target_:lightning.pytorch.callbacks.EarlyStopping,monitor:val/elbo,patience:1}"],
        "callbacks.early_stopping.patience",
        "0",
    ),
    "eval.n_importance_samples": ([], "eval.n_importance_samples", "-1"),
    "eval.memory_budget_mb": ([], "eval.memory_budget_mb", "0"),
    "eval.n_test_images": ([], "eval.n_test_images", "0"),
    "eval.active_unit_threshold": ([], "eval.active_unit_threshold", "-1"),
    "eval.images_per_batch": ([], "eval.images_per_batch", "0"),
    "eval.samples_per_chunk": ([], "eval.samples_per_chunk", "0"),
    "eval.seed": ([], "eval.seed", "-1"),
    "model.initialize_output_bias": ([], "model.initialize_output_bias", "maybe"),
    "data.batch_size": ([], "data.batch_size", "0"),
    "data.eval_batch_size": ([], "data.eval_batch_size", "0"),
    "data.val_size": ([], "data.val_size", "0"),
    "data.train_subset": ([], "data.train_subset", "0"),
    "data.split_seed": ([], "data.split_seed", "-1"),
    "data.seed": ([], "data.seed", "-1"),
    "data.binarization": ([], "data.binarization", "fuzzy"),
    "data.mirror": ([], "data.mirror", "ftp://mirror.example/mnist/"),
    "objective.m": (["objective=miwae"], "objective.m", "0"),
    "objective.elbo_fraction": (["objective=ciwae"], "objective.elbo_fraction", "1.5"),
    "objective.gradient": ([], "objective.gradient", "finite_differences"),
    "gradient_snr.epochs": ([], "gradient_snr.epochs", "[-1]"),
    "gradient_snr.n_estimates": ([], "gradient_snr.n_estimates", "1"),
    "likelihood.variance": (["likelihood=gaussian"], "likelihood.variance", "learned"),
    "likelihood.scale": (["likelihood=laplace"], "likelihood.scale", "learned"),
    "likelihood.min_sigma": (["likelihood=gaussian"], "likelihood.min_sigma", "0"),
    "likelihood.fixed_sigma": (["likelihood=gaussian"], "likelihood.fixed_sigma", "-0.5"),
    "likelihood.fixed_scale": (["likelihood=laplace"], "likelihood.fixed_scale", "0"),
    "likelihood.min_scale": (["likelihood=laplace"], "likelihood.min_scale", "-1"),
    "likelihood.n_components": (["likelihood=discretized_logistic"], "likelihood.n_components", "0"),
    "prior.n_components": (["prior=mog"], "prior.n_components", "0"),
    "prior.n_pseudo_inputs": (["prior=vamp"], "prior.n_pseudo_inputs", "0"),
    "prior.n_layers": (["prior=flow"], "prior.n_layers", "0"),
    "prior.hidden_size": (["prior=flow"], "prior.hidden_size", "0"),
    "prior.activation": (["prior=flow"], "prior.activation", "swish"),
    "prior.init": (["prior=vamp"], "prior.init", "zeros"),
    "model.latent_dim": ([], "model.latent_dim", "0"),
    "model.decoder.hidden_sizes": ([], "model.decoder.hidden_sizes", "[0]"),
    "model.encoder.hidden_sizes": ([], "model.encoder.hidden_sizes", "[200,-1]"),
    "model.decoder.channels": (["model=conv"], "model.decoder.channels", "[]"),
    "model.encoder.channels": (["model=conv"], "model.encoder.channels", "[32,0]"),
    "model.decoder.hidden_size": (["model=conv"], "model.decoder.hidden_size", "0"),
    "model.encoder.hidden_size": (["model=conv"], "model.encoder.hidden_size", "0"),
    "model.decoder.activation": (["model.decoder.activation=tanh"], "model.decoder.activation", "swish"),
    "model.encoder.activation": (["model.decoder.activation=tanh"], "model.encoder.activation", "swish"),
    "objective.n_samples": ([], "objective.n_samples", "0"),
    "objective.k": (["objective=iwae"], "objective.k", "0"),
    "objective.kl_weight": ([], "objective.kl_weight", "inf"),
    "objective.kl": ([], "objective.kl", "exact"),
    "objective.free_bits": ([], "objective.free_bits", "-1"),
    "objective.warmup.steps": ([], "objective.warmup.steps", "-3"),
    "objective.warmup.epochs": ([], "objective.warmup.epochs", "1.5"),
    "objective.capacity.max": ([], "objective.capacity.max", "-5"),
    "objective.capacity.steps": ([], "objective.capacity.steps", "2.5"),
    "objective.capacity.gamma": ([], "objective.capacity.gamma", "-1"),
    "optimizer.lr": ([], "optimizer.lr", "inf"),
    "optimizer.eps": ([], "optimizer.eps", "0"),
    "optimizer.weight_decay": ([], "optimizer.weight_decay", "-1"),
    "optimizer.betas": ([], "optimizer.betas", "[0.9,1.5]"),
    "optimizer.momentum": (["optimizer._target_=torch.optim.SGD"], "optimizer.momentum", "1.0"),
    "trainer.max_epochs": ([], "trainer.max_epochs", "0"),
    "trainer.min_epochs": ([], "trainer.min_epochs", "-1"),
    "trainer.max_steps": ([], "trainer.max_steps", "0"),
    "trainer.num_nodes": ([], "trainer.num_nodes", "0"),
    "trainer.gradient_clip_val": ([], "trainer.gradient_clip_val", "-1"),
    "trainer.log_every_n_steps": ([], "trainer.log_every_n_steps", "0"),
    "trainer.check_val_every_n_epoch": ([], "trainer.check_val_every_n_epoch", "0"),
    "trainer.accumulate_grad_batches": ([], "trainer.accumulate_grad_batches", "0"),
    "trainer.limit_*_batches": ([], "trainer.limit_val_batches", "-1"),
    "trainer.num_sanity_val_steps": ([], "trainer.num_sanity_val_steps", "-2"),
    "trainer.accelerator": ([], "trainer.accelerator", "quantum"),
    "trainer.devices": ([], "trainer.devices", "0"),
    "logger.wandb.mode": ([], "logger.wandb.mode", "sometimes"),
    "logger.wandb.init_timeout": ([], "logger.wandb.init_timeout", "0"),
    "logger.wandb.images_every_n_epochs": ([], "logger.wandb.images_every_n_epochs", "-1"),
    "eval.surgery.n_samples": ([], "eval.surgery.n_samples", "-1"),
    "eval.inference_gap.n_images": ([], "eval.inference_gap.n_images", "-1"),
    "eval.inference_gap.steps": ([], "eval.inference_gap.steps", "0"),
    "eval.inference_gap.n_samples": ([], "eval.inference_gap.n_samples", "0"),
    "eval.inference_gap.images_per_batch": ([], "eval.inference_gap.images_per_batch", "0"),
    "eval.inference_gap.lr": ([], "eval.inference_gap.lr", "0"),
    "posterior.n_flows": (["posterior=planar"], "posterior.n_flows", "0"),
    "posterior.context_size": (["posterior=iaf"], "posterior.context_size", "0"),
    "posterior.hidden_size": (["posterior=iaf"], "posterior.hidden_size", "0"),
    "posterior.n_hidden_layers": (["posterior=iaf"], "posterior.n_hidden_layers", "0"),
}


@functools.cache
def declared_rules() -> dict[str, list[Rule]]:
    """The rules of RULES and those declared by the classes and dataclasses of every shipped config (each
    yaml of each group, each experiment and schedule), by pattern or dotted path."""
    declared = {pattern: [rule] for pattern, rule in RULES.items()}
    for choices in every_shipped_choice():
        declared.update(declared_rules_of(compose_config(*choices)))
    return declared


def test_the_table_has_one_bad_value_for_every_declared_rule() -> None:
    """A class that declares a new range (or a new class in conf/) needs a bad value here."""
    assert set(BAD_VALUE_OF_EACH_RULE) == set(declared_rules())


@pytest.mark.parametrize("pattern", sorted(BAD_VALUE_OF_EACH_RULE))
def test_every_declared_rule_matches_a_real_field_and_refuses_a_bad_value(pattern: str) -> None:
    """A rule that names no parameter (``likelihood.n_mixtures``) or a field inside a nested section
    (``objective.capacity.max``) that the checker skipped would fail here: the bad value must be
    refused by the rule itself ("not allowed"), not as an unknown key, and the field's valid
    configuration must pass."""
    choices, field, bad = BAD_VALUE_OF_EACH_RULE[pattern]
    assert fnmatch.fnmatchcase(field, pattern)
    assert find_problems(compose_config(*choices)) == []
    problems = find_problems(compose_config(*choices, f"++{field}={bad}"))
    # (Fields that interpolate this one, like eval.seed: ${seed}, are refused with it.)
    mine = [problem for problem in problems if problem.path == field]
    assert len(mine) == 1, [str(problem) for problem in problems]
    assert mine[0].message.startswith("not allowed; must be"), mine[0].message


#: A bad value for each field of ``python -m vae_lab.evaluate`` whose rules are not those of the same field of a
#: run's ``eval`` block (tested above): k >= 1 (a run's may be 0), and its own seed and threads.
BAD_EVALUATE_VALUES = {"n_importance_samples": "0", "seed": "-1", "threads": "0"}


def evaluate_rules() -> dict[str, list[Rule]]:
    return declared_rules_of(evaluate_settings(), EvaluateSettings, {})


def test_every_rule_of_the_evaluate_command_is_tested() -> None:
    assert set(BAD_EVALUATE_VALUES) <= set(evaluate_rules())
    untested = {path for path in evaluate_rules() if f"eval.{path}" not in BAD_VALUE_OF_EACH_RULE}
    assert untested <= set(BAD_EVALUATE_VALUES)


@pytest.mark.parametrize("field", sorted(BAD_EVALUATE_VALUES))
def test_every_rule_of_the_evaluate_command_refuses_a_bad_value(field: str) -> None:
    assert find_problems(evaluate_settings(), EvaluateSettings, {}, cross_checks=()) == []
    problems = find_problems(
        evaluate_settings(f"{field}={BAD_EVALUATE_VALUES[field]}"), EvaluateSettings, {}, cross_checks=()
    )
    assert [problem.path for problem in problems] == [field]
    assert problems[0].message.startswith("not allowed; must be"), problems[0].message


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_no_range_lets_a_non_finite_number_through(value: float) -> None:
    every = {**declared_rules(), **{f"evaluate:{path}": rules for path, rules in evaluate_rules().items()}}
    held = [pattern for pattern, rules in every.items() if any(rule.holds(value) for rule in rules)]
    assert held == []


# ---------------------------------------------------------------------------------------- the issue's settings
ISSUE_SETTINGS = [
    (["eval.n_test_images=0"], "eval.n_test_images=0: not allowed; must be >= 1."),
    (["eval.memory_budget_mb=0"], "eval.memory_budget_mb=0: not allowed; must be > 0."),
    (["eval.active_unit_threshold=-1"], "eval.active_unit_threshold=-1: not allowed; must be >= 0."),
    (["optimizer.lr=inf"], "optimizer.lr=inf: not allowed; must be a finite number > 0."),
    (["objective.kl_weight=inf"], "objective.kl_weight=inf: not allowed; must be a finite number >= 0."),
    (["objective.capacity.max=-5"], "objective.capacity.max=-5: not allowed; must be >= 0."),
    (["objective.warmup.steps=-3"], "objective.warmup.steps=-3: not allowed; must be a whole number >= 0."),
    # 1e8 samples x 100 images x 2,418 decoder values x 4 bytes: ~88 TiB.
    (
        ["objective.n_samples=100000000"],
        ("objective.n_samples=100000000: not possible on this machine: a training step needs at least 88.0 TiB"),
    ),
    # 6.0e10 parameters (encoder 200 -> 2e8, decoder 1e8 -> 200), with their gradients: 449 GiB, + 37 GiB of values.
    (
        ["model.latent_dim=100000000"],
        (
            "model.latent_dim=100000000: not possible on this machine: a training step "
            "needs at least 485.8 GiB (the weights and gradients of 60,200,395,184 parameters"
        ),
    ),
    (["eval.memory_budget_mb=100000000"], "eval.memory_budget_mb=100000000: not possible; it is more than the"),
    # The same kind of traceback: 3 x 1e10 log-weights x 16 images; 1e8 validation images x 2,418 values.
    (
        ["eval.n_importance_samples=10000000000"],
        (
            "eval.n_importance_samples=10000000000: not possible on this "
            "machine: the evaluation keeps 3 x k log-weights for each of at "
            "least 16 images, 1.7 TiB"
        ),
    ),
    (
        ["data.eval_batch_size=100000000"],
        ("data.eval_batch_size=100000000: not possible on this machine: a validation batch needs at least 900.8 GiB"),
    ),
]
NO_GPU_SETTINGS = [
    (["trainer.accelerator=gpu"], "trainer.accelerator=gpu: not available on this machine: torch sees no CUDA GPU"),
    (["trainer=ddp"], "trainer.accelerator=gpu: not available on this machine"),
    (["trainer.devices=[0,1,2,3]"], "trainer.devices=[0, 1, 2, 3]: not available with cpu"),
]


@pytest.mark.parametrize(("overrides", "expected"), ISSUE_SETTINGS, ids=[" ".join(c[0]) for c in ISSUE_SETTINGS])
def test_the_issues_settings_are_refused_before_any_work(overrides: list[str], expected: str) -> None:
    message = refusal(*overrides)
    assert expected in message
    assert "nothing was run" in message


@pytest.mark.skipif(HAS_CUDA, reason="these devices exist on a machine with GPUs")
@pytest.mark.parametrize(("overrides", "expected"), NO_GPU_SETTINGS, ids=[" ".join(c[0]) for c in NO_GPU_SETTINGS])
def test_devices_this_machine_lacks_are_refused_by_vae_lab(overrides: list[str], expected: str) -> None:
    message = refusal(*overrides)
    assert expected in message
    assert "trainer.accelerator=cpu" in message or "a number of processes" in message  # the fix


def test_the_machine_check_accepts_what_this_machine_has() -> None:
    for overrides in (
        [],
        ["trainer=ddp_cpu"],
        ["model=conv", "data=cifar", "likelihood=discretized_logistic"],
        ["objective=iwae", "objective.k=50"],
        ["trainer.devices=auto"],
    ):
        check_training_machine(compose_config(*overrides))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["trainer.accelerator=gpu"], "trainer.accelerator=gpu"),
        (["objective.n_samples=100000000"], "objective.n_samples"),
    ],
)
def test_cli_refusal_leaves_no_summary_and_the_retry_runs(
    tmp_path: Path, data_root: Path, overrides: list[str], key: str
) -> None:
    """The default logger (wandb, offline) too: the run is refused before wandb, the data or the
    summary; then the same directory takes the corrected run."""
    if HAS_CUDA and key.startswith("trainer."):
        pytest.skip("a GPU exists here")
    run_dir = tmp_path / "run"
    tiny = [o for o in TINY if not o.startswith("logger=")]
    result = run_cli(
        "vae_lab.train",
        *tiny,
        *QUIET,
        *overrides,
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env={"VAE_LAB_DATA": str(tmp_path / "no-data-here")},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"- {key}" in result.stderr and "nothing was written" in result.stderr
    assert "Traceback" not in result.stderr and "MNIST" not in result.stderr
    assert not {"summary.json", "checkpoints", "metrics.csv", "wandb"} & {path.name for path in run_dir.glob("*")}
    if key.startswith("objective."):
        return
    retry = run_cli(
        "vae_lab.train",
        *TINY,
        *QUIET,
        f"data.root={data_root}",
        "trainer.accelerator=cpu",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"


# ---------------------------------------------------------------------------------------- the memory estimate
def test_memory_estimate_of_the_default_model_matches_its_closed_form() -> None:
    """784-200-200-50 tanh MLP, Bernoulli: the encoder ends in 2 x 50 values (mean, log-variance)."""
    D, H, Z = 784, 200, 50
    encoder = (D * H + H) + (H * H + H) + (H * 2 * Z + 2 * Z)
    decoder = (Z * H + H) + (H * H + H) + (H * D + D)
    # Linear, tanh, Linear, tanh outputs (4 x H), the output layer and the output again (2 x D), and z.
    values = 4 * H + 2 * D + Z
    assert model_sizes(compose_config()) == ModelSizes(encoder + decoder, values)
    # A Gaussian with a learned sigma per pixel: the decoder emits 2 maps per pixel.
    per_pixel = model_sizes(compose_config("likelihood=gaussian", "likelihood.variance=per_pixel"))
    assert per_pixel == ModelSizes(encoder + decoder + H * D + D, 4 * H + 2 * 2 * D + Z)
    L_, B = 7, 100
    assert training_step_bytes(encoder + decoder, values, L_, B) == 4 * (2 * (encoder + decoder) + L_ * B * values)
    assert training_step_bytes(10, 3, 2, 5, parameter_bytes=4, activation_bytes=2) == 8 * 10 + 2 * 2 * 5 * 3


MEASURE_A_STEP = """
import sys
import torch
from tests.conftest import compose_config
from vae_lab.model.build import build_networks
from vae_lab.run.machine_checks import model_sizes, training_step_bytes
L, B = 64, 100
cfg = compose_config(f"objective.n_samples={L}", f"data.batch_size={B}")
sizes = model_sizes(cfg)
likelihood, encoder, decoder = build_networks(cfg, (1, 28, 28))
x = torch.rand(B, 1, 28, 28).round()
def status_bytes(field):  # VmRSS (now) or VmHWM (the peak since the last reset), /proc/self/status
    line = next(line for line in open("/proc/self/status") if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024
# Reset the peak to the current resident set (Linux >= 4.0): imports and set-up may have peaked higher.
with open("/proc/self/clear_refs", "w") as file:
    file.write("5")
before = status_bytes("VmRSS")
(-likelihood(decoder(encoder(x).rsample((L,)))).log_prob(x).mean()).backward()  # the step of vae_lab.model.vae
grown = status_bytes("VmHWM") - before
values = training_step_bytes(sizes.n_parameters, sizes.values_per_sample, L, B)
values -= training_step_bytes(sizes.n_parameters, 0, 0, 0)
print(grown / values)
"""


def test_the_estimate_is_a_lower_bound_of_a_real_training_step(tmp_path: Path) -> None:
    """A fresh process: a forward and backward pass with 64 samples x 100 images grows the peak resident
    memory (reset to the current one just before, so that imports and set-up cannot hide the step) by at
    least the estimated per-sample values, and by less than 5 times them (the bound is not vacuous). The
    weights were built before the measurement."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURE_A_STEP],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ratio = float(result.stdout.split()[-1])
    assert 1.0 <= ratio < 5.0, ratio


# ---------------------------------------------------------------------------------------- python -m vae_lab.evaluate
def evaluate_settings(*overrides: str):
    with initialize_config_module("vae_lab.conf", version_base="1.3"):
        return compose("evaluate", overrides=list(overrides))


@pytest.fixture
def run_dir_with_summary(tmp_path: Path) -> Path:
    """A run directory whose files must not change when the evaluation is refused."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\nmodel: {latent_dim: 50\n")  # truncated: bad YAML
    (run_dir / "summary.json").write_text('{"status": "complete"}')
    return run_dir


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["n_importance_samples=lots"], "- n_importance_samples=lots: has the wrong type (str); expected int."),
        (["+n_samples=5"], "- n_samples=5: unknown key for the top-level section. Did you mean n_importance_samples?"),
        (["n_importance_samples=0"], "- n_importance_samples=0: not allowed; must be >= 1."),
        (["n_test_images=0"], "- n_test_images=0: not allowed; must be >= 1."),
        (["memory_budget_mb=0"], "- memory_budget_mb=0: not allowed; must be > 0."),
        (["active_unit_threshold=-1"], "- active_unit_threshold=-1: not allowed; must be >= 0."),
        (["memory_budget_mb=inf"], "- memory_budget_mb=inf: not allowed; must be a finite number > 0."),
        (["memory_budget_mb=100000000"], "- memory_budget_mb=100000000: not possible; it is more than the"),
        (["n_importance_samples=10000000000"], "- n_importance_samples=10000000000: not possible on this machine"),
        (["device=cuda:99"], "- device=cuda:99: not available: this machine has"),
        (["device=tpu7"], "- device=tpu7: not a device torch knows"),
        ([], "cannot be read as the run's config"),
    ],
)
def test_evaluate_refuses_bad_settings_before_reading_anything(
    run_dir_with_summary: Path, overrides: list[str], expected: str
) -> None:
    from vae_lab.evaluate import evaluate_run

    cfg = evaluate_settings(f"run_dir={run_dir_with_summary}", *overrides)
    with pytest.raises(ConfigError) as raised:
        evaluate_run(cfg)
    assert expected in str(raised.value)
    if not overrides:
        assert str(run_dir_with_summary / ".hydra" / "config.yaml") in str(raised.value)
    assert (run_dir_with_summary / "summary.json").read_text() == '{"status": "complete"}'


@pytest.mark.skipif(HAS_CUDA, reason="a GPU exists here")
def test_evaluate_cli_refuses_cuda_without_a_gpu(run_dir_with_summary: Path, tmp_path: Path) -> None:
    result = run_cli("vae_lab.evaluate", f"run_dir={run_dir_with_summary}", "device=cuda", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "- device=cuda: not available: this machine has no cuda device" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------- divergence
def test_a_finite_divergence_ends_diverged(tmp_path: Path, data_root: Path) -> None:
    """Adam with lr = 1e6: every loss stays finite (issue 12: test/elbo -1.97e12, exit 0, complete)."""
    run_dir = tmp_path / "run"
    result = run_cli(
        "vae_lab.train",
        *TINY,
        *QUIET,
        "optimizer.lr=1e6",
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "vae_lab: error: training stopped at step 1 (epoch 0, batch 1): train/loss is " in result.stderr
    assert (
        "beyond 7.84e+06 (10000 x max(|the first checked loss|, 784 values per image)): the training has diverged"
        in result.stderr
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert summary["error"].startswith("NumericalError: training stopped at step 1")
    assert summary["metrics"] == {}


class LossRange(L.Callback):
    """The largest |training loss| of a fit."""

    def __init__(self) -> None:
        self.largest = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.largest = max(self.largest, abs(float(outputs["loss"])))


@pytest.mark.parametrize(
    "overrides",
    [
        ["objective.warmup.steps=10"],
        # Burgess et al.'s gamma = 1000, C rising over the fit: the loss rises on purpose.
        ["objective.capacity.max=25", "objective.capacity.steps=20", "objective.capacity.gamma=1000"],
        ["likelihood=gaussian", "data.binarization=none", "likelihood.variance=per_pixel"],
        ["likelihood=laplace", "data.binarization=none"],
        ["objective=iwae", "objective.k=5"],
    ],
    ids=lambda overrides: " ".join(overrides),
)
def test_legitimate_schedules_and_density_likelihoods_stay_far_from_the_bound(
    overrides: list[str], data_root: Path, tmp_path: Path
) -> None:
    """Real fits (2 epochs of 10 steps) under the guard, with a good learning rate: none trips, and
    the largest |loss| stays at least 1000 times below the bound."""
    from vae_lab.model.build import build_datamodule, build_model
    from vae_lab.run.finite_guard import NonFiniteGuard

    cfg = compose_config(*TINY, *QUIET, f"data.root={data_root}", "trainer.max_epochs=2", *overrides)
    validate_config(cfg)
    L.seed_everything(0, verbose=False)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    guard, seen = NonFiniteGuard(1), LossRange()
    trainer = hydra.utils.instantiate(
        cfg.trainer, logger=False, callbacks=[guard, seen], enable_checkpointing=False, default_root_dir=str(tmp_path)
    )
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 20
    assert 0 < seen.largest * 1000 < guard.loss_bound


def test_the_bound_is_out_of_reach_of_a_gaussian_at_its_scale_floor() -> None:
    """The most negative loss a Gaussian with sigma >= min_sigma can give (every pixel exact, KL 0)
    against the smallest bound the guard uses (D nats x 1e4)."""
    from vae_lab.run.finite_guard import DIVERGENCE_FACTOR

    D = 3 * 32 * 32
    for min_sigma in (1e-3, 1e-6):
        most_negative = D * math.log(min_sigma * math.sqrt(2 * math.pi))
        assert abs(most_negative) * 100 < DIVERGENCE_FACTOR * D


def test_the_guard_raises_numerical_error_on_a_finite_blow_up(tmp_path: Path, data_root: Path) -> None:
    """In-process: the same fit as the CLI test, the error type and the step."""
    from vae_lab.model.build import build_datamodule, build_model
    from vae_lab.run.finite_guard import NonFiniteGuard

    cfg = compose_config(*TINY, *QUIET, f"data.root={data_root}", "optimizer.lr=1e6")
    L.seed_everything(0, verbose=False)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        logger=False,
        callbacks=[NonFiniteGuard(4)],
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    with pytest.raises(NumericalError) as raised:
        trainer.fit(model, datamodule=datamodule)
    assert str(raised.value).startswith(
        "training stopped at step 1 (epoch 0): a non-finite loss or gradient, or a "
        "diverged loss (found by the check every 4 steps; the weights have taken 2"
    )
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())  # finite, yet diverged
