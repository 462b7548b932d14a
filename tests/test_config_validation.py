"""Invalid configs are refused before any work, with the field, the bad value and what is allowed.

The table runs in-process through Hydra's compose API and :func:`vae_lab.run.settings.validate_config`
(the function ``train`` calls first); three cases go through the real CLI to show the end-to-end path:
exit status 2, the message, and no training output.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from tests.conftest import REPO, TINY, run_cli
from vae_lab.errors import ConfigError
from vae_lab.run.settings import find_problems, validate_config


def composed(*overrides: str):
    with initialize_config_module("vae_lab.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


# (overrides, the field the message must name, the bad value as shown, what the message says is allowed)
INVALID = [
    # data
    (["data.batch_size=0"], "data.batch_size", "0", ">= 1"),
    (["data.batch_size=100000"], "data.batch_size", "100000", "<= 50000"),
    (["data.train_subset=20", "data.batch_size=50"], "data.batch_size", "50", "<= 20"),
    (["data.binarization=fuzzy"], "data.binarization", "fuzzy", "one of dynamic, static, none"),
    (["data.val_size=60000"], "data.val_size", "60000", "< 60000"),
    (["data.eval_batch_size=-5"], "data.eval_batch_size", "-5", ">= 1"),
    (["data.batch_size=ten"], "data.batch_size", "ten", "expected int"),
    (["+data.shuffle=false"], "data.shuffle", "False", "Valid keys: batch_size, binarization"),
    (["data.download=maybe"], "data.download", "maybe", "expected bool"),
    # likelihood
    (
        ["likelihood=gaussian", "likelihood.variance=learned"],
        "likelihood.variance",
        "learned",
        "one of fixed, per_channel, per_pixel",
    ),
    (["likelihood=gaussian", "likelihood.fixed_sigma=0"], "likelihood.fixed_sigma", "0", "> 0"),
    (["likelihood=gaussian", "likelihood.min_sigma=-0.001"], "likelihood.min_sigma", "-0.001", "> 0"),
    (["+likelihood.temperature=2"], "likelihood.temperature", "2", "It takes no keys"),
    (["+likelihood.channels=3"], "likelihood.channels", "3", "set by vae_lab itself"),
    # prior
    (["+prior.scale=2"], "prior.scale", "2", "unknown key for vae_lab.model.priors.StandardNormalPrior"),
    (
        ["prior._target_=vae_lab.model.priors.NoSuchPrior"],
        "prior._target_",
        "vae_lab.model.priors.NoSuchPrior",
        "cannot be imported",
    ),
    # model
    (["model.latent_dim=0"], "model.latent_dim", "0", ">= 1"),
    (["model.initialize_output_bias=maybe"], "model.initialize_output_bias", "maybe", "one of True, False, auto"),
    (["model.latent_dim=1.5"], "model.latent_dim", "1.5", "expected int"),
    (["model.encoder.activation=swish"], "model.encoder.activation", "swish", "one of tanh, relu"),
    (["model.encoder.hidden_sizes=[200,0]"], "model.encoder.hidden_sizes", "[200, 0]", "each item >= 1"),
    (["+model.encoder.dropout=0.1"], "model.encoder.dropout", "0.1", "Valid keys: activation, hidden_sizes"),
    (["model=conv", "model.encoder.channels=[]"], "model.encoder.channels", "[]", "a non-empty list"),
    # objective
    (["objective.kl_weight=-1"], "objective.kl_weight", "-1", ">= 0"),
    (["objective.n_samples=0"], "objective.n_samples", "0", ">= 1"),
    (["objective.n_samples=2.5"], "objective.n_samples", "2.5", "expected int"),
    (
        ["+objective.k=0"],
        "objective.k",
        "0",
        "Valid keys: capacity, free_bits, gradient, kl, kl_weight, n_samples, warmup",
    ),
    (["objective.kl=exact"], "objective.kl", "exact", "one of auto, analytic, mc"),
    # trainer
    (["trainer.max_epochs=0"], "trainer.max_epochs", "0", ">= 1, or -1"),
    (["+trainer.max_epoch=3"], "trainer.max_epoch", "3", "Did you mean max_epochs?"),
    (["trainer.precision=17"], "trainer.precision", "17", "'bf16-mixed'"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val", "-1", ">= 0"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps", "0", ">= 1"),
    (["trainer.devices=0"], "trainer.devices", "0", ">= 1, 'auto'"),
    # logger
    (["logger.wandb.mode=sometimes"], "logger.wandb.mode", "sometimes", "one of auto, online, offline"),
    (
        ["+logger.wandb.colour=red"],
        "logger.wandb.colour",
        "red",
        "Valid keys: entity, group, images_every_n_epochs, init_timeout",
    ),
    (["logger.wandb.tags=oops"], "logger.wandb.tags", "oops", "expected a list of str"),
    (["logger.wandb.init_timeout=0"], "logger.wandb.init_timeout", "0", "> 0"),
    # optimizer
    (["optimizer.lr=-0.001"], "optimizer.lr", "-0.001", "> 0"),
    (["optimizer.lr=0"], "optimizer.lr", "0", "> 0"),
    (["+optimizer.betas=[0.9,1.5]"], "optimizer.betas", "[0.9, 1.5]", "two numbers in [0, 1)"),
    (["+optimizer.momentum=0.9"], "optimizer.momentum", "0.9", "unknown key for torch.optim.Adam"),
    (["optimizer._target_=torch.optim.NoSuch"], "optimizer._target_", "torch.optim.NoSuch", "cannot be imported"),
    # top level
    (["seed=-1"], "seed", "-1", "in [0, 4294967295]"),
    (["threads=0"], "threads", "0", ">= 1"),
    (["check_finite_every_n_steps=-1"], "check_finite_every_n_steps", "-1", ">= 0"),
    (["resume=perhaps"], "resume", "perhaps", "expected bool"),
    (["+sed=1"], "sed", "1", "Did you mean seed?"),
]

GROUPS_COVERED = {case[1].split(".")[0] if "." in case[1] else "top-level" for case in INVALID}


def test_the_table_covers_every_group() -> None:
    assert len(INVALID) >= 30
    assert {
        "data",
        "likelihood",
        "prior",
        "model",
        "objective",
        "trainer",
        "logger",
        "optimizer",
        "top-level",
    } == GROUPS_COVERED


@pytest.mark.parametrize(("overrides", "field", "value", "allowed"), INVALID, ids=[" ".join(c[0]) for c in INVALID])
def test_invalid_override_is_refused_naming_field_value_and_range(
    overrides: list[str], field: str, value: str, allowed: str
) -> None:
    cfg = composed(*overrides)
    with pytest.raises(ConfigError) as raised:
        validate_config(cfg)
    message = str(raised.value)
    # The line that names the field shows the bad value and what is allowed.
    line = next((line for line in message.splitlines() if line.strip().startswith(f"- {field}=")), None)
    assert line is not None, message
    assert line.strip().startswith(f"- {field}={value}:"), line
    assert allowed in line, line
    assert "nothing was run" in message


def test_every_problem_is_listed_at_once() -> None:
    problems = find_problems(composed("objective.kl_weight=-1", "optimizer.lr=-1", "+trainer.max_epoch=2"))
    assert sorted(problem.path for problem in problems) == ["objective.kl_weight", "optimizer.lr", "trainer.max_epoch"]


@pytest.mark.parametrize(
    "overrides",
    [
        [f"likelihood={likelihood}", f"model={model}", f"data={data}", f"logger={logger}"]
        for likelihood, model, data, logger in itertools.product(
            ["bernoulli", "gaussian"], ["mlp", "conv"], ["mnist", "cifar"], ["wandb", "csv", "none"]
        )
    ]
    + [
        TINY,
        [
            "optimizer._target_=torch.optim.SGD",
            "+optimizer.momentum=0.9",
            "trainer.max_epochs=-1",
            "trainer.precision=bf16-mixed",
            "trainer.devices=auto",
            "data.train_subset=100",
            "data.batch_size=100",
        ],
    ],
    ids=lambda overrides: " ".join(overrides),
)
def test_valid_configs_pass(overrides: list[str]) -> None:
    assert find_problems(composed(*overrides)) == []


def every_shipped_choice() -> list[list[str]]:
    """Each yaml of each config group on its own, and each experiment with each schedule: discovered
    from conf/, so a yaml added later that the schema does not know fails here, not at a user's start-up."""
    conf = REPO / "conf"
    choices = [
        [f"{group.name}={path.stem}"]
        for group in sorted(conf.iterdir())
        # sweep/ holds +sweep=<name> files (whole sweeps): tests/test_sweeps.py validates each of their jobs.
        if group.is_dir() and group.name not in ("experiment", "__pycache__", "hydra", "sweep")
        for path in sorted(group.glob("*.yaml"))
    ]
    return choices + [
        [f"experiment={path.stem}", f"schedule={schedule}"]
        for path in sorted((conf / "experiment").glob("*.yaml"))
        for schedule in ("full", "short")
    ]


@pytest.mark.parametrize("overrides", every_shipped_choice(), ids=lambda overrides: " ".join(overrides))
def test_every_shipped_config_passes(overrides: list[str]) -> None:
    assert find_problems(composed(*overrides)) == []


# ---------------------------------------------------------------------------------------- the real CLI
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["objective.kl_weight=-1"], "objective.kl_weight=-1: not allowed; must be >= 0."),
        (
            ["data.batch_size=100000"],
            "data.batch_size=100000: not allowed; must be <= 500, the number of training images",
        ),
        (["+trainer.max_epoch=3"], "trainer.max_epoch=3: unknown key for lightning.Trainer. Did you mean max_epochs?"),
    ],
)
def test_cli_refuses_invalid_config_before_loading_data(tmp_path: Path, overrides: list[str], expected: str) -> None:
    """The data root does not even exist: the config error comes first, and nothing is written."""
    run_dir = tmp_path / "run"
    result = run_cli(
        "vae_lab.train",
        *TINY,
        *overrides,
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env={"VAE_LAB_DATA": str(tmp_path / "no-data-here")},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert "MNIST is not at data root" not in result.stderr  # validation ran before the data module
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / "metrics.csv").exists()
    assert not (run_dir / "summary.json").exists()
    assert REPO.is_dir()
