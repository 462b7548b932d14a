"""Data files are fetched and verified before use (issue 12): ``data.download=true`` fills an empty data
root from a mirror (a local HTTP server here, serving the real MNIST .gz files), no network is one
clear error and never a hang, and damaged or foreign files are refused by name, with the fix, before
anything trains. Damaged roots are built in tmp_path from symlinks to the real files plus one bad file."""

from __future__ import annotations

import json
import math
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import TINY, compose_config, run_cli

from vae_lab.data import CIFAR10DataModule, MNISTDataModule
from vae_lab.data.mnist import RAW_FILES
from vae_lab.errors import ConfigError, DataNotFoundError, VaeLabError
from vae_lab.model.build import build_datamodule, build_model

#: md5 of the official uncompressed files (shared/data/README.md), to check what a download wrote.
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
ARCHIVES = [f"{name}.gz" for name in RAW_FILES]


@pytest.fixture(autouse=True)
def local_servers_bypass_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test servers are on 127.0.0.1: a proxy in the environment must not stand between (the runs'
    subprocesses inherit this too)."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


def md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


@contextmanager
def serving(folder: Path) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """An HTTP server on 127.0.0.1 serving ``folder`` from a thread: (base URL, [(path, status)] requested)."""
    requested: list[tuple[str, str]] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            requested.append((self.path, str(code)))

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def closed_port() -> int:
    """A local port nothing listens on (bound, then released): connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_refused_before_training(result, run_dir: Path) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not {"checkpoints", "summary.json", "metrics.csv"} & {path.name for path in run_dir.glob("*")}


# ------------------------------------------------------------------------------------------ download
def test_download_fills_an_empty_root_from_a_mirror_then_trains(data_root: Path, tmp_path: Path) -> None:
    """The real CLI with an empty data root, data.download=true and data.mirror at a local server
    holding only the four official .gz files: it downloads them, verifies them and trains."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for archive in ARCHIVES:
        (mirror / archive).symlink_to(data_root / "MNIST" / "raw" / archive)
    root, run_dir = tmp_path / "empty root", tmp_path / "run"
    root.mkdir()
    with serving(mirror) as (url, requested):
        result = run_cli(
            "vae_lab.train",
            *TINY,
            f"data.root={root}",
            "data.download=true",
            f"data.mirror={url}",
            f"hydra.run.dir={run_dir}",
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {f"/{archive}" for archive in ARCHIVES} <= {path for path, status in requested if status == "200"}
    raw = root / "MNIST" / "raw"
    for name, official in OFFICIAL_MD5.items():
        assert md5(raw / name) == official, name
    assert not list(raw.glob(".download-*"))  # the scratch folder is gone
    metrics = json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert math.isfinite(metrics["test/elbo"]) and metrics["test/elbo"] < 0


def test_download_with_the_gz_files_present_extracts_them_before_the_first_read(
    data_root: Path, tmp_path: Path
) -> None:
    """The bug: the output-bias initialisation (build_model) read the training set before anything had
    downloaded ("Dataset not found"). With the .gz files in the raw folder no network is needed."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for archive in ARCHIVES:
        (raw / archive).symlink_to(data_root / "MNIST" / "raw" / archive)
    cfg = compose_config(*TINY, f"data.root={tmp_path}", "data.download=true")
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)  # the output biases come from the training images
    assert all(md5(raw / name) == official for name, official in OFFICIAL_MD5.items())
    reference = build_datamodule(compose_config(*TINY, f"data.root={data_root}"))
    reference.setup()
    assert (datamodule.splits["train"] == reference.splits["train"]).all()
    assert model.decoder.output.bias.abs().sum() > 0


def test_a_damaged_archive_is_fetched_again_and_present_files_are_left_alone(data_root: Path, tmp_path: Path) -> None:
    """Only the missing file is fetched; its .gz in the raw folder has the wrong md5, so it comes from
    the mirror and replaces the damaged one. A complete read-only root (the shared data) is not
    written to at all, not even a lock file."""
    mirror, raw = tmp_path / "mirror", tmp_path / "root" / "MNIST" / "raw"
    mirror.mkdir()
    raw.mkdir(parents=True)
    (mirror / "t10k-labels-idx1-ubyte.gz").symlink_to(data_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz")
    for name in RAW_FILES[:3]:
        (raw / name).symlink_to(data_root / "MNIST" / "raw" / name)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b damaged")
    with serving(mirror) as (url, requested):
        MNISTDataModule(root=str(raw.parents[1]), data_form="binary", download=True, mirror=url).prepare_data()
    assert {path for path, status in requested} == {"/t10k-labels-idx1-ubyte.gz"}
    assert md5(raw / "t10k-labels-idx1-ubyte") == OFFICIAL_MD5["t10k-labels-idx1-ubyte"]
    assert md5(raw / "t10k-labels-idx1-ubyte.gz") == "ec29112dd5afa0611ce80d1b7f02629c"
    assert all((raw / name).is_symlink() for name in RAW_FILES[:3])
    before = sorted(path.name for path in data_root.rglob("*"))
    MNISTDataModule(root=str(data_root), data_form="binary", download=True).prepare_data()
    assert sorted(path.name for path in data_root.rglob("*")) == before


def test_no_network_is_one_clear_error_and_nothing_is_written(tmp_path: Path) -> None:
    root, run_dir = tmp_path / "empty", tmp_path / "run"
    root.mkdir()
    mirror = f"http://127.0.0.1:{closed_port()}/"
    result = run_cli(
        "vae_lab.train",
        *TINY,
        f"data.root={root}",
        "data.download=true",
        f"data.mirror={mirror}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        timeout=300,
    )
    assert_refused_before_training(result, run_dir)
    message = result.stderr
    assert f"{mirror}train-images-idx3-ubyte.gz" in message and "refused" in message.lower()
    assert "data.mirror=<base URL>" in message and str(root / "MNIST" / "raw") in message
    assert message.count("could not fetch") == 1  # one error, not one per file
    assert [path.name for path in (root / "MNIST" / "raw").iterdir()] == []  # no partial file left


def test_a_server_that_never_answers_times_out_instead_of_hanging(tmp_path: Path, monkeypatch) -> None:
    """A listening socket that never answers (connect succeeds, the reply never comes): the
    download gives up after the socket timeout with an error saying so."""
    import vae_lab.data.download

    monkeypatch.setattr(vae_lab.data.download, "DOWNLOAD_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mirror = f"http://127.0.0.1:{silent.getsockname()[1]}"
        datamodule = MNISTDataModule(root=str(tmp_path), data_form="binary", download=True, mirror=mirror)
        outcome: list[DataNotFoundError] = []

        def prepare() -> None:
            try:
                datamodule.prepare_data()
            except DataNotFoundError as error:  # handed to the test's thread (any other error fails it)
                outcome.append(error)

        worker = threading.Thread(target=prepare, daemon=True)
        worker.start()
        worker.join(timeout=120)
    assert not worker.is_alive(), "the download hung"
    assert len(outcome) == 1, "no DataNotFoundError"
    assert "no answer within 0.5 s" in str(outcome[0])
    assert socket.getdefaulttimeout() is None  # restored


def test_mirror_must_be_a_url() -> None:
    from vae_lab.run.settings import validate_config

    with pytest.raises(ConfigError, match=r"data.mirror=mirror.internal/mnist: .*a base URL, http://"):
        validate_config(compose_config("data.mirror=mirror.internal/mnist"))
    validate_config(compose_config("data.mirror=http://mirror.internal/mnist/", "data.verify=false"))


# ------------------------------------------------------------------------------------------ damaged MNIST
def header(count: int, rows: int = 28, columns: int = 28) -> bytes:
    return b"".join(value.to_bytes(4, "big") for value in (0x803, count, rows, columns))


def flip_one_pixel(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


#: kind -> (damaged file, its bytes made from the real raw folder, phrases the message must hold).
DAMAGE: dict[str, tuple[str, Callable[[Path], bytes | Path], list[str]]] = {
    "truncated": (
        "train-images-idx3-ubyte",
        lambda raw: (raw / "train-images-idx3-ubyte").read_bytes()[:1_000_000],
        ["1,000,000 bytes", "60,000 images (47,040,016 bytes)", "truncated"],
    ),
    "wrong magic": (
        "train-images-idx3-ubyte",
        lambda raw: b"JUNK" + (raw / "train-images-idx3-ubyte").read_bytes()[4:100],
        ["does not start with the IDX magic number of MNIST images (0x00000803", "0x4a554e4b"],
    ),
    "empty": ("t10k-labels-idx1-ubyte", lambda raw: b"", ["is empty (0 bytes)"]),
    "labels file in place of images": (
        "t10k-images-idx3-ubyte",
        lambda raw: (raw / "t10k-labels-idx1-ubyte").read_bytes(),
        ["is an IDX labels file (magic number 0x00000801), not MNIST images"],
    ),
    "images file in place of labels": (
        "train-labels-idx1-ubyte",
        lambda raw: (raw / "t10k-images-idx3-ubyte").read_bytes(),
        ["is an IDX images file (magic number 0x00000803), not MNIST labels"],
    ),
    "wrong image count": (
        "t10k-images-idx3-ubyte",
        lambda raw: header(9_999) + (raw / "t10k-images-idx3-ubyte").read_bytes()[16:-784],
        ["holds 9,999 images; the official file has 10,000", "data.verify=false"],
    ),
    "the 60,000-image training file as the test set": (
        "t10k-images-idx3-ubyte",
        lambda raw: raw / "train-images-idx3-ubyte",
        ["holds 60,000 images; the official file has 10,000", "are the files swapped?"],
    ),
    "wrong md5 with the right size": (
        "t10k-images-idx3-ubyte",
        lambda raw: flip_one_pixel((raw / "t10k-images-idx3-ubyte").read_bytes()),
        ["has the size of the official file but not its content", "official 2646ac647ad5339dbf082846283269ea"],
    ),
    "still gzip-compressed": (
        "t10k-labels-idx1-ubyte",
        lambda raw: (raw / "t10k-labels-idx1-ubyte.gz").read_bytes(),
        ["is gzip-compressed", "gunzip"],
    ),
    "images of the wrong shape": (
        "t10k-images-idx3-ubyte",
        lambda raw: header(10_000, 56, 14) + (raw / "t10k-images-idx3-ubyte").read_bytes()[16:],
        ["holds images of 56x14 pixels, not MNIST's 28x28"],
    ),
    "bytes beyond the header's count": (
        "train-labels-idx1-ubyte",
        lambda raw: (raw / "train-labels-idx1-ubyte").read_bytes() + bytes(10),
        ["60,018 bytes", "10 bytes too many"],
    ),
}


def damaged_root(tmp_path: Path, data_root: Path, name: str, content: bytes | Path) -> Path:
    """A data root of symlinks to the real MNIST files, with ``name`` replaced by ``content`` (bytes,
    or a symlink to another file)."""
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for good in RAW_FILES:
        if good != name:
            (raw / good).symlink_to(data_root / "MNIST" / "raw" / good)
    if isinstance(content, Path):
        (raw / name).symlink_to(content)
    else:
        (raw / name).write_bytes(content)
    return tmp_path / "root"


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_mnist_file_is_named_with_the_fix(kind: str, data_root: Path, tmp_path: Path) -> None:
    name, make, phrases = DAMAGE[kind]
    root = damaged_root(tmp_path, data_root, name, make(data_root / "MNIST" / "raw"))
    with pytest.raises(VaeLabError) as refused:
        build_datamodule(compose_config(*TINY, f"data.root={root}"))
    message = str(refused.value)
    assert f"{root / 'MNIST' / 'raw' / name} " in message
    assert message.count("\n  - ") == 1, message  # the three good files are not blamed
    assert "data.download=true" in message  # the fix
    for phrase in phrases:
        assert phrase in message, message


def test_verify_false_still_checks_the_format_and_the_pairs(data_root: Path, tmp_path: Path) -> None:
    """Without checksums a consistent file of another count is accepted, but not a test set of
    60,000 images beside 10,000 labels, nor a truncated file."""
    train_images = data_root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    root = damaged_root(tmp_path / "pair", data_root, "t10k-images-idx3-ubyte", train_images)
    with pytest.raises(VaeLabError, match="holds 60,000 images but t10k-labels-idx1-ubyte holds 10,000 labels"):
        build_datamodule(compose_config(*TINY, f"data.root={root}", "data.verify=false"))
    root = damaged_root(tmp_path / "cut", data_root, "train-images-idx3-ubyte", train_images.read_bytes()[:5000])
    with pytest.raises(VaeLabError, match="truncated"):
        build_datamodule(compose_config(*TINY, f"data.root={root}", "data.verify=false"))
    root = damaged_root(tmp_path / "fewer", data_root, "t10k-images-idx3-ubyte", header(3) + bytes(3 * 784))
    labels = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.unlink()
    labels.write_bytes((0x801).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(3))
    build_datamodule(compose_config(*TINY, f"data.root={root}", "data.verify=false")).setup()  # hand-made: accepted


def test_damaged_file_on_the_command_line_exits_2_before_training(data_root: Path, tmp_path: Path) -> None:
    """The 60,000-image file as the test set, through the real CLI: refused by name, nothing trained."""
    train_images = data_root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    root = damaged_root(tmp_path, data_root, "t10k-images-idx3-ubyte", train_images)
    raw = root / "MNIST" / "raw"
    run_dir = tmp_path / "run"
    result = run_cli("vae_lab.train", *TINY, f"data.root={root}", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=300)
    assert_refused_before_training(result, run_dir)
    assert f"{raw / 't10k-images-idx3-ubyte'} holds 60,000 images; the official file has 10,000" in result.stderr
    assert "data.download=true" in result.stderr


# ------------------------------------------------------------------------------------------ CIFAR-10
def test_hand_made_cifar_batches_need_verify_false(cifar_root: Path) -> None:
    """The tests' batches (600 and 1,000 images, not the official files) are refused by default, each
    named with the fix, and accepted with data.verify=false."""
    folder = cifar_root / "cifar-10-batches-py"
    with pytest.raises(VaeLabError) as refused:
        CIFAR10DataModule(root=str(cifar_root), data_form="continuous", val_size=500).prepare_data()
    message = str(refused.value)
    for name in ("data_batch_1", "data_batch_5"):
        assert f"{folder / name} holds 600 images; an official batch holds 10,000" in message
    assert f"{folder / 'test_batch'} holds 1,000 images" in message and message.count("data.verify=false") == 6
    datamodule = CIFAR10DataModule(root=str(cifar_root), data_form="continuous", val_size=500, verify=False)
    datamodule.setup()
    assert datamodule.splits["train"].shape[0] == 2500


def test_damaged_cifar_batch_is_named_even_without_checksums(cifar_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for good in (cifar_root / "cifar-10-batches-py").iterdir():
        (folder / good.name).symlink_to(good)
    (folder / "data_batch_3").unlink()
    (folder / "data_batch_3").write_bytes((cifar_root / "cifar-10-batches-py" / "data_batch_3").read_bytes()[:4096])
    cfg = compose_config("data=cifar", "likelihood=gaussian", f"data.root={tmp_path}", "data.verify=false")
    with pytest.raises(VaeLabError) as refused:
        build_datamodule(cfg)
    message = str(refused.value)
    assert f"{folder / 'data_batch_3'} is not a CIFAR-10 batch" in message and "data.download=true" in message
    assert message.count("\n  - ") == 1


def test_cifar_download_takes_the_archive_from_the_mirror(cifar_root: Path, tmp_path: Path) -> None:
    """data.mirror for CIFAR-10: the release's archive name is appended; a served file whose md5 is not
    the official archive's is refused by name, and nothing is left in the data root."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.make_archive(str(mirror / "cifar-10-python"), "gztar", root_dir=cifar_root, base_dir="cifar-10-batches-py")
    root = tmp_path / "root"
    with serving(mirror) as (url, requested):
        datamodule = CIFAR10DataModule(root=str(root), data_form="continuous", download=True, mirror=url, verify=False)
        with pytest.raises(DataNotFoundError) as refused:
            datamodule.prepare_data()
    assert ("/cifar-10-python.tar.gz", "200") in requested
    assert f"{url}cifar-10-python.tar.gz: the file it served does not have the official md5" in str(refused.value)
    assert not {"cifar-10-batches-py", "cifar-10-python.tar.gz"} & {path.name for path in root.iterdir()}
    assert not list(root.glob(".download-*"))
