"""Every training command the README and docs/ show composes and passes the config checks as written.

The commands are read from the documents' code blocks (indented or fenced), so a renamed group, key
or choice fails here instead of in a reader's terminal. Multirun commands are expanded into every
job they launch (``a=x,y b=u,v``: four configs), through Hydra's own override parser. Commands with
a placeholder (``<run dir>``) are left out; running the commands (training) is the other tests' job.
"""

from __future__ import annotations

import itertools
import re
import shlex

import pytest
from conftest import REPO, compose_config

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TRAIN = "python -m vae_lab.train"


def code_lines(text: str) -> list[str]:
    """The lines of a Markdown document's code blocks: fenced, or indented by four spaces (also in a list)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        elif fenced or re.match(r"^( {4}|\t)", line):
            if lines and lines[-1].endswith("\\"):  # a command continued on the next line
                lines[-1] = lines[-1][:-1] + " " + line.strip()
            else:
                lines.append(line.strip())
    return lines


def train_commands() -> list[tuple[str, str]]:
    """(document, command) for every ``python -m vae_lab.train ...`` line in a code block, and every
    inline code span that is one such command (in the tables)."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        spans = re.findall(r"`(" + re.escape(TRAIN) + r"[^`]*)`", text)
        for line in [*code_lines(text), *spans]:
            if TRAIN not in line:
                continue
            command = line[line.index(TRAIN) + len(TRAIN) :]
            command = re.split(r"\s#", command)[0].strip()  # without its comment
            if "<" not in command and not command.startswith("--"):  # a placeholder; --help: not a run
                found.append((document.name, command))
    return list(dict.fromkeys(found))


def jobs(arguments: list[str]) -> list[list[str]]:
    """The override lists of the jobs a (multi)run launches: each sweep override expanded."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [argument for argument in arguments if argument not in ("-m", "--multirun")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for override in parsed:
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.product(*choices)]


COMMANDS = train_commands()


def test_the_documents_show_training_commands() -> None:
    documents = {document for document, _ in COMMANDS}
    assert {"README.md", "configuration.md", "results.md", "reproductions.md"} <= documents
    assert len(COMMANDS) >= 25


@pytest.mark.parametrize(
    ("document", "command"),
    COMMANDS,
    ids=[f"{d}: {c}" for d, c in COMMANDS],
)
def test_a_documented_training_command_is_a_valid_config(document: str, command: str) -> None:
    from vae_lab.run.launchers import register_launcher_configs
    from vae_lab.run.settings import validate_config

    register_launcher_configs()
    for overrides in jobs(shlex.split(command)):
        validate_config(compose_config(*overrides))
