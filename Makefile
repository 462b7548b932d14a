# Quick start: `make train` and `make test` each create .venv (when there is none) and install the
# project into it first. ARGS passes Hydra overrides: make train ARGS="likelihood=gaussian data=cifar".
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vae_lab-installed

.PHONY: setup constraints browser train lint test test-slow mutation gpu-check-bundle clean

# The exact versions tested here (constraints.txt) within the ranges pyproject.toml allows.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

# constraints.txt from the versions installed in .venv (run it once the test suite passes there).
constraints:
	{ grep '^#' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# The report's browser check (tests/test_report.py) opens report.html in Debian's headless chromium.
# Installed when missing and possible (root with apt-get); otherwise that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& echo "installing Debian's chromium for the report's browser check" \
		&& apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium is not installed: the report's browser check will be skipped"

train: $(STAMP)
	$(BIN)/python -m vae_lab.train $(ARGS)

# ruff's lint rules and formatting ([tool.ruff] in pyproject.toml); .ci/run runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Mutation testing (slow, not in CI: about an hour on 2 busy cores). mutmut mutates the modules listed in
# pyproject.toml [tool.mutmut]; each mutant runs only the fast unit tests that call the function it
# changed (tests/mutation_scope.py drops tests that train, read the data set or start processes).
# Re-running resumes where the last run stopped; `rm -rf mutants` starts afresh. The kill rate per
# module and the survivors go into docs/mutation.md (tests/mutation_summary.py).
MUTATION_JOBS ?= 2
mutation: $(STAMP)
	OMP_NUM_THREADS=1 nice -n 15 $(BIN)/mutmut run --max-children $(MUTATION_JOBS)
	$(BIN)/python tests/mutation_summary.py --write docs/mutation.md

# benchmarks/gpu_bundle/ (gitignored, <= 64 MiB): the wheels and MNIST files that benchmarks/gpu_check.py
# installs and reads on a GPU machine without network (copy the tree with it; see the script's docstring).
gpu-check-bundle: $(STAMP)
	$(BIN)/python benchmarks/gpu_bundle.py

clean:
	rm -rf outputs multirun .pytest_cache mutants
