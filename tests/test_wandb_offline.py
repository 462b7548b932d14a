"""The offline-run reader against real wandb offline runs written by the installed wandb."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from wandb_offline import BLOCK_SIZE, OfflineRunError, find_offline_runs, read_offline_run

WRITE_RUN = textwrap.dedent(
    """
    import wandb
    run = wandb.init(mode="offline", project="reader-test", name="big run", group="g1", tags=["a", "b"],
                     config={"big": "x" * 100_000, "nested": {"lr": 0.001, "sizes": [200, 200]}}, dir=".")
    for i in range(300):
        run.log({"i": i, "square": i * i, "group": {"half": i / 2}})
    run.summary["final"] = 42.5
    run.finish()
    """
)


@pytest.fixture(scope="module")
def big_offline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real offline run whose config record (100 kB) spans several 32 KiB blocks."""
    directory = tmp_path_factory.mktemp("wandb_reader")
    subprocess.run([sys.executable, "-c", WRITE_RUN], cwd=directory, check=True, timeout=300, capture_output=True)
    return directory


def test_find_offline_runs_recurses(big_offline_run: Path) -> None:
    runs = find_offline_runs(big_offline_run)
    assert len(runs) == 1 and runs[0].name.startswith("offline-run-")
    assert find_offline_runs(big_offline_run / "wandb") == runs


def test_reads_a_run_spanning_several_blocks(big_offline_run: Path) -> None:
    run_dir = find_offline_runs(big_offline_run)[0]
    run_file = next(run_dir.glob("run-*.wandb"))
    assert run_file.stat().st_size > 3 * BLOCK_SIZE  # the reassembly of split records is exercised
    run = read_offline_run(run_dir)
    assert run_file.name == f"run-{run.run_id}.wandb"
    assert (run.name, run.project, run.group, run.tags) == ("big run", "reader-test", "g1", ["a", "b"])
    assert run.config == {"big": "x" * 100_000, "nested": {"lr": 0.001, "sizes": [200, 200]}}
    assert len(run.history) == 300
    assert run.values("i") == list(range(300))
    assert run.values("square") == [i * i for i in range(300)]
    assert run.history[7]["group"] == {"half": 3.5}
    assert [row["_step"] for row in run.history] == list(range(300))
    assert run.summary["final"] == 42.5
    assert run.summary["square"] == 299 * 299


def test_refuses_a_file_that_is_not_a_wandb_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "offline-run-20250101_000000-abcdefgh"
    run_dir.mkdir()
    (run_dir / "run-abcdefgh.wandb").write_bytes(b"PK\x03\x04 not a wandb file at all")
    with pytest.raises(OfflineRunError, match="not a wandb run file"):
        read_offline_run(run_dir)


def test_detects_a_corrupt_chunk(big_offline_run: Path, tmp_path: Path) -> None:
    source = find_offline_runs(big_offline_run)[0]
    run_file = next(source.glob("run-*.wandb"))
    damaged = tmp_path / source.name
    damaged.mkdir()
    data = bytearray(run_file.read_bytes())
    data[200] ^= 0xFF  # inside the first record's payload
    (damaged / run_file.name).write_bytes(bytes(data))
    with pytest.raises(OfflineRunError, match="crc"):
        read_offline_run(damaged)
