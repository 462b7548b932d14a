"""The package's layout is its architecture (README, Architecture): imports flow one way.

shared leaves (errors, files, seeds, ranges, lightning_adapter) <- data <- model <- evaluation <- tracking <- run <-
report and the entry points (train, evaluate, dashboard). A module may import its own folder and any folder below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vae_lab"
LAYERS = [
    "errors",
    "files",
    "seeds",
    "ranges",
    "lightning_adapter",
    "data",
    "model",
    "evaluation",
    "tracking",
    "run",
    "report",
    "entry",
]
ENTRY_POINTS = {"__init__", "train", "evaluate", "dashboard", "conf"}
#: What may live at the package's top level: the entry points, the shared leaves and the package doc.
TOP_LEVEL = {"__init__", "train", "evaluate", "dashboard", "errors", "files", "seeds", "ranges", "lightning_adapter"}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "vae_lab" or len(parts) == 1:
        return None
    return "entry" if parts[1] in ENTRY_POINTS else parts[1]


def imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def test_imports_flow_one_way() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        own = layer_of(module)
        for line, imported in imports_of(path):
            other = layer_of(imported)
            if own and other and LAYERS.index(other) > LAYERS.index(own):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {own} imports {imported}")
    assert not upward, "imports against the flow:\n" + "\n".join(upward)


def test_every_layer_is_known_and_the_top_level_holds_entry_points_and_shared_leaves() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders <= set(LAYERS), f"a folder outside the layers: {sorted(folders - set(LAYERS))}"
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top <= TOP_LEVEL, f"modules at the top level that belong in a folder: {sorted(top - TOP_LEVEL)}"


def test_each_folder_says_what_lives_there() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()) >= 2, f"{init} has no docstring saying what lives there"
