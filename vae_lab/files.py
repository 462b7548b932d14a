"""Writing files so that a crash at any moment leaves either the old file or the new one, whole."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

#: The temporary files of :func:`write_atomically` are ``.<name>.<8 hex digits>.tmp`` beside the file.
TEMPORARY_SUFFIX = ".tmp"


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path``, created with mode 0666 less the umask (as ``open`` does
    for every other output; ``tempfile.mkstemp`` would make it 0600)."""
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(temporary)
        except FileExistsError:
            continue


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write(handle)`` to a temporary file beside ``path``, flush it to disk, then
    rename it over ``path``: a reader (or a crash) never sees a half-written file. A process killed
    meanwhile leaves the temporary file; :func:`remove_temporaries` clears it when the run starts again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = _create_temporary(path)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that :func:`write_atomically` calls killed mid-write left anywhere
    under ``directory`` (only by a process that owns it: a live writer's file would go too). Returns them."""
    removed = []
    for temporary in Path(directory).rglob(f".*{TEMPORARY_SUFFIX}"):
        if temporary.is_file():
            temporary.unlink(missing_ok=True)
            removed.append(temporary)
    return removed


def write_json_atomically(path: str | os.PathLike, value: Any) -> None:
    text = json.dumps(value, indent=2, sort_keys=False, default=str) + "\n"
    write_atomically(path, lambda file: file.write(text.encode()))


def check_writable_directory(directory: str | os.PathLike) -> None:
    """Make ``directory`` (and its parents) and write, fsync, rename and delete a probe file in it,
    the way every output is written; raise :class:`~vae_lab.errors.ConfigError` naming the
    directory and the reason when that fails. (Permission bits alone do not tell: root ignores
    them, and a read-only mount or a full disk refuses even root.)"""
    from vae_lab.errors import ConfigError

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".vae_lab_write_check"
        write_atomically(probe, lambda file: file.write(b"ok\n"))
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"the output directory {directory} is not writable ({error.strerror or error}: "
            f"{error.filename or directory}); nothing was run. Choose another with hydra.run.dir=<dir> "
            "(hydra.sweep.dir=<dir> for a multirun), or fix the directory."
        ) from None
