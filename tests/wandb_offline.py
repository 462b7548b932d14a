"""Read wandb offline runs back from disk: run id, name, group, tags, config, history, summary, media.

wandb 0.31 writes no ``wandb-summary.json`` and no ``config.yaml`` for an offline run, and
``wandb.Api()`` cannot read offline runs, so tests (and anyone checking a run before ``wandb sync``)
read the run's ``run-<id>.wandb`` file directly.

The file format is wandb's internal one, so this module depends on wandb internals: the test
dependencies (the ``dev`` extra of pyproject.toml) allow the versions it was checked with
(``wandb>=0.19,<0.32``; the package itself needs no such cap):

- a 7-byte file header: the ident ``:W&B``, the magic 0xBEE1 (uint16, little-endian), version 0;
- then a LevelDB-log-style stream: the file is cut into 32 KiB blocks (counted from the start of the
  file, header included); each record chunk has a 7-byte header - crc32 (uint32 LE) of the type byte
  followed by the payload, payload length (uint16 LE), type (FULL=1, FIRST=2, MIDDLE=3, LAST=4) - and
  a record that does not fit the rest of a block is split into FIRST, MIDDLE..., LAST chunks. A block
  tail shorter than a chunk header is zero padding;
- each reassembled record is a serialized ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_HEADER = struct.Struct("<4sHB")
FILE_IDENT = b":W&B"
FILE_MAGIC = 0xBEE1
FILE_VERSION = 0
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class OfflineRunError(ValueError):
    """The file is not a wandb offline run this reader understands."""


@dataclass
class OfflineRun:
    """What an offline wandb run recorded. Values are JSON-decoded (numbers, strings, dicts)."""

    directory: Path
    run_id: str
    name: str
    project: str
    group: str
    tags: list[str]
    #: The run's config, without wandb's own ``_wandb`` entry.
    config: dict[str, Any]
    #: One dict per ``wandb.log`` call (history row), in order, including ``_step`` etc.
    history: list[dict[str, Any]]
    #: The final summary: the last value of every logged key, plus explicit summary updates.
    summary: dict[str, Any]
    #: Media files the run saved under ``files/`` (paths relative to ``files/``), e.g. image grids.
    files: list[str] = field(default_factory=list)
    job_type: str = ""
    #: The metric definitions (``define_metric``): one dict per definition, with ``name`` or
    #: ``glob_name``, ``step_metric`` and ``summary`` (the aggregates asked for: ``["max"]``...).
    metric_definitions: list[dict[str, Any]] = field(default_factory=list)
    #: The artifacts the run logged: ``type``, ``name``, ``aliases``, ``metadata`` and ``files``
    #: (the paths inside the artifact).
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    def values(self, key: str) -> list[Any]:
        """Every value logged under ``key`` in the history, in order."""
        return [row[key] for row in self.history if key in row]


def find_offline_runs(directory: str | Path) -> list[Path]:
    """Every ``offline-run-*`` directory below ``directory`` (recursively), sorted by path."""
    return sorted(path for path in Path(directory).rglob("offline-run-*") if path.is_dir())


def read_records(path: str | Path) -> Iterator[bytes]:
    """The serialized records of a ``.wandb`` file, in order; checks the header and every crc."""
    data = Path(path).read_bytes()
    if len(data) < FILE_HEADER.size:
        raise OfflineRunError(f"{path} is too short to be a wandb run file")
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if ident != FILE_IDENT or magic != FILE_MAGIC or version != FILE_VERSION:
        raise OfflineRunError(
            f"{path} has header {data[: FILE_HEADER.size]!r}, not a wandb run file of format version "
            f"{FILE_VERSION}; this reader supports the wandb versions allowed in pyproject.toml."
        )
    position = FILE_HEADER.size
    pending: bytes | None = None
    while position + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK_SIZE - position % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER.size:  # zero padding at the end of a block
            position += left_in_block
            continue
        checksum, length, kind = CHUNK_HEADER.unpack_from(data, position)
        start = position + CHUNK_HEADER.size
        payload = data[start : start + length]
        if checksum == 0 and length == 0 and kind == 0:  # zero-filled tail of a block
            position += left_in_block
            continue
        if len(payload) < length:
            break  # a run still being written (or killed) ends in a truncated chunk
        if zlib.crc32(bytes([kind]) + payload) != checksum:
            raise OfflineRunError(f"{path}: corrupt record chunk at byte {position} (crc mismatch)")
        position = start + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE and pending is not None:
            pending += payload
        elif kind == LAST and pending is not None:
            yield pending + payload
            pending = None
        else:
            raise OfflineRunError(f"{path}: unexpected record chunk type {kind} at byte {position - length}")


def _key_path(item: Any) -> list[str]:
    """The key of a history/summary/config item: ``nested_key`` when set, else ``key``."""
    return list(item.nested_key) or [item.key]


def _assign(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def _remove(target: dict[str, Any], keys: list[str]) -> None:
    for key in keys[:-1]:
        target = target.get(key, {})
    target.pop(keys[-1], None)


def _apply_items(target: dict[str, Any], items: Any) -> None:
    for item in items:
        _assign(target, _key_path(item), json.loads(item.value_json))


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Read one ``offline-run-*`` directory (the one holding ``run-<id>.wandb`` and ``files/``)."""
    from wandb.proto import wandb_internal_pb2

    run_dir = Path(run_dir)
    run_files = sorted(run_dir.glob("run-*.wandb"))
    if len(run_files) != 1:
        raise OfflineRunError(f"{run_dir} should hold exactly one run-<id>.wandb file, found {len(run_files)}")
    run_id = name = project = group = ""
    tags: list[str] = []
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    job_type = ""
    definitions: list[dict[str, Any]] = []
    artifacts: list[dict[str, Any]] = []
    for serialized in read_records(run_files[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(serialized)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            run_id, name, project, group, tags = (
                run.run_id,
                run.display_name,
                run.project,
                run.run_group,
                list(run.tags),
            )
            job_type = run.job_type
            _apply_items(config, run.config.update)
        elif kind == "config":
            _apply_items(config, record.config.update)
            for item in record.config.remove:
                _remove(config, _key_path(item))
        elif kind == "history":
            row: dict[str, Any] = {}
            _apply_items(row, record.history.item)
            history.append(row)
        elif kind == "summary":
            _apply_items(summary, record.summary.update)
            for item in record.summary.remove:
                _remove(summary, _key_path(item))
        elif kind == "metric":
            definitions.append(_metric_definition(record.metric))
        elif kind == "artifact":
            artifact = record.artifact
            artifacts.append(
                {
                    "type": artifact.type,
                    "name": artifact.name,
                    "aliases": list(artifact.aliases),
                    "metadata": json.loads(artifact.metadata) if artifact.metadata else {},
                    "files": [entry.path for entry in artifact.manifest.contents],
                }
            )
    config.pop("_wandb", None)
    files_dir = run_dir / "files"
    media = sorted(str(path.relative_to(files_dir)) for path in (files_dir / "media").rglob("*") if path.is_file())
    return OfflineRun(
        run_dir, run_id, name, project, group, tags, config, history, summary, media, job_type, definitions, artifacts
    )


def _metric_definition(metric: Any) -> dict[str, Any]:
    """A ``MetricRecord`` (``define_metric``) as a dict."""
    aggregates = [
        name
        for name in ("min", "max", "mean", "best", "last", "none", "copy", "first")
        if getattr(metric.summary, name)
    ]
    return {
        "name": metric.name,
        "glob_name": metric.glob_name,
        "step_metric": metric.step_metric,
        "summary": aggregates,
        "goal": {0: "", 1: "minimize", 2: "maximize"}.get(int(metric.goal), str(metric.goal)),
    }
