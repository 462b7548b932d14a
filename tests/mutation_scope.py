"""A pytest plugin for ``make mutation`` (mutmut): keep only the fast unit tests.

mutmut runs, for each mutant, the tests that called the mutated function. A test that trains a model
(a Lightning ``Trainer`` fit), reads the real data set (the ``data_root``/``cifar_root`` fixtures) or
starts the CLI in a subprocess (which imports the unmutated package anyway) takes seconds, and would
run again for every mutant of every function it touches. This plugin deselects those tests, so that
each mutant is judged by unit tests that take milliseconds; the subprocess tests guard the run-state
and launcher code instead (see docs/mutation.md).

Used as ``pytest -p tests.mutation_scope`` (pyproject.toml's ``[tool.mutmut]``); it does nothing
unless loaded.
"""

from __future__ import annotations

import inspect

import pytest

#: Fixtures (direct or through other fixtures) of tests that read the real data or run the CLI.
HEAVY_FIXTURES = frozenset({"data_root", "cifar_root", "tiny_default_run"})
#: Calls in a test's own source that train a model or start a process.
HEAVY_CALLS = ("run_cli(", "subprocess.", "quiet_trainer(", "Trainer(", ".fit(", "Popen(")


def is_heavy(item: pytest.Item) -> bool:
    """True when the test reads the real data, trains a model or starts a process."""
    if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    function = getattr(item, "function", None)
    try:
        source = inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        return False
    return any(call in source for call in HEAVY_CALLS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    heavy = [item for item in items if is_heavy(item)]
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = [item for item in items if not is_heavy(item)]
