"""The kill rate of the last ``make mutation`` run, per module, from ``mutmut results --all true``.

Survivors that docs/mutation.md lists as equivalent (a line ``- `<mutant name>`: <reason>`` in its
"Equivalent mutants" section) are left out of the rate; every other survivor is listed as
unexplained. With ``--write docs/mutation.md`` the block between the two ``mutation-results``
markers of that file is replaced by the table and the list; otherwise it is printed.

    python tests/mutation_summary.py [--write docs/mutation.md]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

START, END = "<!-- mutation-results:start -->", "<!-- mutation-results:end -->"
#: mutmut's statuses that count as killed.
KILLED = ("killed", "timeout", "segfault")
#: The groups of the table (a mutant belongs to the first whose prefix its module has).
GROUPS = (
    "vae_lab.model.likelihoods",
    "vae_lab.model.priors",
    "vae_lab.model.objectives",
    "vae_lab.evaluation.importance_sampling",
    "vae_lab.data.forms",
    "vae_lab.report.table",
)


def mutant_results(mutmut: str) -> dict[str, str]:
    """``{mutant name: status}`` of every mutant of the last run."""
    output = subprocess.run([mutmut, "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    results = {}
    for line in output.splitlines():
        name, separator, status = line.strip().rpartition(": ")
        if separator and "__mutmut_" in name:
            results[name] = status
    return results


def equivalent_mutants(document: Path) -> set[str]:
    """The mutant names listed under the document's "Equivalent mutants" heading."""
    if not document.is_file():
        return set()
    text = document.read_text()
    section = text.split("## Equivalent mutants", 1)[1] if "## Equivalent mutants" in text else ""
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    return set(re.findall(r"^- `([^`]+__mutmut_\d+)`", section, flags=re.MULTILINE))


def group_of(name: str) -> str:
    return next((group for group in GROUPS if name.startswith(group + ".")), name.split(".x")[0])


def summary(results: dict[str, str], equivalent: set[str]) -> str:
    """The Markdown block: kill rate overall and per group, and the survivors not explained."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for name, status in results.items():
        group = group_of(name)
        if status in KILLED:
            counts[group]["killed"] += 1
        elif name in equivalent:
            counts[group]["equivalent"] += 1
        else:
            counts[group]["not killed"] += 1
        counts[group]["mutants"] += 1

    def rate(counter: Counter) -> str:
        judged = counter["killed"] + counter["not killed"]
        return f"{100 * counter['killed'] / judged:.1f}%" if judged else "-"

    total: Counter = sum(counts.values(), Counter())
    lines = [
        (
            f"kill rate: {rate(total)} ({total['killed']} of the {total['killed'] + total['not killed']} "
            f"non-equivalent mutants killed; {total['mutants']} mutants, {total['equivalent']} equivalent)"
        ),
        "",
        "| module | mutants | killed | equivalent | not killed | kill rate |",
        "|---|---|---|---|---|---|",
    ]
    for group in sorted(counts, key=lambda g: (GROUPS.index(g) if g in GROUPS else len(GROUPS), g)):
        c = counts[group]
        lines.append(
            f"| `{group}` | {c['mutants']} | {c['killed']} | {c['equivalent']} | {c['not killed']} | {rate(c)} |"
        )
    unexplained = sorted(name for name, status in results.items() if status not in KILLED and name not in equivalent)
    lines += ["", f"Survivors not listed as equivalent ({len(unexplained)}):", ""]
    lines += [f"- `{name}`: {results[name]}" for name in unexplained] or ["- none"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="the Markdown file whose results block to replace")
    parser.add_argument("--mutmut", default=str(Path(sys.executable).with_name("mutmut")))
    arguments = parser.parse_args()
    document = arguments.write or Path("docs/mutation.md")
    block = summary(mutant_results(arguments.mutmut), equivalent_mutants(document))
    if not arguments.write:
        print(block)
        return
    text = document.read_text() if document.is_file() else f"# Mutation testing\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n{START}\n{END}\n"
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    document.write_text(f"{before}{START}\n{block}\n{END}{after}")
    print(block.splitlines()[0])


if __name__ == "__main__":
    main()
