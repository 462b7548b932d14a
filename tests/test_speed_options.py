"""Start-up, threads, compile, mixed precision and the epoch timer (issue 6), through the real CLI."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, run_cli
from hydra import compose, initialize_config_module

from vae_lab.errors import ConfigError
from vae_lab.model.build import build_model
from vae_lab.run.threads import MANY_THREADS_FROM_GFLOP, available_cores, choose_threads, training_flops

HEAVY_IMPORTS = ("torch", "lightning", "torchvision", "wandb", "matplotlib")


def imported_modules(importtime_output: str) -> set[str]:
    """Module names from the ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_output.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def top_level(modules: set[str]) -> set[str]:
    return {module.split(".")[0] for module in modules}


def model_for(overrides: list[str], image_shape: tuple[int, int, int]):
    """The model of a config for an image shape, without data (so without the data-dependent
    output-bias initialisation, which changes no shape and no FLOP count)."""
    with initialize_config_module("vae_lab.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "logger=csv", "model.initialize_output_bias=false"])
    return build_model(cfg, SimpleNamespace(image_shape=image_shape))


def test_help_imports_no_framework(tmp_path):
    """`--help` composes nothing heavy: no torch, Lightning, torchvision, wandb or matplotlib."""
    result = run_cli("vae_lab.train", "--help", cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    assert "threads" in result.stdout and "compile" in result.stdout  # the composed config is shown
    modules = imported_modules(result.stderr)
    assert "hydra" in top_level(modules)  # the import log was read
    assert not top_level(modules) & set(HEAVY_IMPORTS)


def test_a_csv_run_picks_threads_by_model_writes_epoch_times_and_never_imports_wandb(data_root, tmp_path):
    timing_file = tmp_path / "timing.jsonl"
    result = run_cli(
        "vae_lab.train",
        *TINY,
        "trainer.max_epochs=2",
        "threads=auto",
        f"data.root={data_root}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        env={"PYTHONPROFILEIMPORTTIME": "1", "VAE_LAB_TIMING_FILE": str(timing_file)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    expected = choose_threads("auto", model_for([], (1, 28, 28)), (1, 28, 28), batch_size=50)
    assert summary["threads"] == expected == 1  # the default model is small
    assert "wandb" not in top_level(imported_modules(result.stderr))  # logger=csv

    events = [json.loads(line) for line in timing_file.read_text().splitlines()]
    assert [event["event"] for event in events] == ["first_step", "epoch", "epoch"]
    assert [event["images"] for event in events[1:]] == [500, 500]  # train_subset=500, full batches
    assert all(0 < event["seconds"] < 600 and event["cpu_seconds"] > 0 for event in events[1:])
    metrics_header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "second" not in metrics_header  # timing never enters the metrics


def test_threads_override_compile_and_bf16_run_end_to_end(data_root, tmp_path):
    """An int wins over auto; compile traces the networks (aot_eager: no C++ build in a test);
    bf16-mixed trains with log-likelihoods summed in float32."""
    result = run_cli(
        "vae_lab.train",
        *TINY,
        "threads=2",
        "compile=aot_eager",
        "trainer.precision=bf16-mixed",
        f"data.root={data_root}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["threads"] == 2
    assert summary["config"]["compile"] == "aot_eager"
    assert -400 < summary["metrics"]["test/elbo"] < -100  # one tiny epoch: far from trained, but sane
    checkpoint = torch.load(tmp_path / "run" / summary["best_checkpoint"], map_location="cpu", weights_only=False)
    assert not [name for name in checkpoint["state_dict"] if "_orig_mod" in name]  # loadable uncompiled


def test_choose_threads_follows_the_model_size_and_an_int_wins():
    mlp = model_for([], (1, 28, 28))
    conv = model_for(["model=conv", "likelihood=gaussian"], (3, 32, 32))
    for model, shape in ((mlp, (1, 28, 28)), (conv, (3, 32, 32))):
        large = training_flops(model, shape, 100) / 1e9 >= MANY_THREADS_FROM_GFLOP
        assert choose_threads("auto", model, shape, 100) == (available_cores() if large else 1)
        assert choose_threads(3, model, shape, 100) == 3
        assert choose_threads(None, model, shape, 100) == torch.get_num_threads()
        assert choose_threads("auto", model, shape, 100, device_type="cuda") == torch.get_num_threads()
    # A model above the threshold gets the cores, shared among the ranks on this machine.
    batch = math.ceil(MANY_THREADS_FROM_GFLOP * 1e9 / (training_flops(conv, (3, 32, 32), 100) / 100))
    assert choose_threads("auto", conv, (3, 32, 32), batch) == available_cores()
    assert choose_threads("auto", conv, (3, 32, 32), batch, processes=available_cores()) == 1
    for wrong in (0, "many", True):
        with pytest.raises(ConfigError, match="threads"):
            choose_threads(wrong, mlp, (1, 28, 28), 100)


def test_counting_flops_leaves_the_random_stream_and_gradients_alone():
    model = model_for([], (1, 28, 28))
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    flops = training_flops(model, (1, 28, 28), 100)
    assert torch.equal(torch.rand(4), expected)
    assert all(parameter.grad is None for parameter in model.parameters())
    # Matrix products of the 784-200-200-50 encoder and 50-200-200-784 decoder, 2 FLOP per multiply-add.
    products = 784 * 200 + 200 * 200 + 2 * 200 * 50 + 50 * 200 + 200 * 200 + 200 * 784
    assert flops == 2 * 100 * products


def test_mixed_precision_keeps_the_sums_of_the_elbo_in_float32():
    model = model_for([], (1, 28, 28))
    x = (torch.rand(8, 1, 28, 28) < 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = model.elbo_terms(x, n_samples=2)
        assert model.decoder(torch.zeros(1, 50)).dtype == torch.bfloat16  # autocast is active
    for value in (terms.log_likelihood, terms.log_prior, terms.log_posterior, terms.kl, terms.elbo):
        assert value.dtype == torch.float32


def test_the_terminal_bar_is_lightnings_redrawn_every_few_steps_and_logs_get_lines():
    """On a terminal, Lightning's own bar through its public refresh_rate (no private hook); elsewhere lines."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    from vae_lab.tracking.console import BAR_REFRESH_STEPS, LineProgress, training_progress_bar

    bar = training_progress_bar(terminal=True)
    assert type(bar) is TQDMProgressBar and bar.refresh_rate == BAR_REFRESH_STEPS > 1
    assert isinstance(training_progress_bar(terminal=False), LineProgress)


def test_compile_takes_torch_compile_modes_and_names_them_for_a_bad_value():
    """compile=reduce-overhead (CUDA graphs, benchmarks/gpu_check.py) is inductor's mode, not a backend name;
    a value that is neither is refused with the modes and the backends in the message."""
    from vae_lab.model.compilation import MODES, compile_networks

    model = model_for([], (1, 28, 28))
    names = [name for name, _ in model.named_parameters()]
    compile_networks(model, "reduce-overhead")  # lazily compiled: nothing is built before the first step
    assert [name for name, _ in model.named_parameters()] == names
    with pytest.raises(ConfigError, match="reduce-overhead") as refused:
        compile_networks(model_for([], (1, 28, 28)), "reduce_overhead")
    assert all(mode in str(refused.value) for mode in MODES) and "aot_eager" in str(refused.value)
