# The two commands of the README. Both install the stack first when needed
# (tools/install.sh: the active venv/conda env if it has a torch, else ./.venv).
PY := $(shell bash tools/install.sh --python)
PYTEST_ARGS ?=

.PHONY: install test test-fast demo lint docs
install:
	@bash tools/install.sh

# The whole suite on both cores: two pytest workers (pytest-xdist) of one thread each, a
# test file on one worker (its module fixtures built once).
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

# The fast set (no `slow` tests) on both cores: two pytest workers of one thread each.
test-fast: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow" -n 2 $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo.py

# ruff (settings in pyproject.toml): lint rules, then the formatting, checked only.
LINTED := mobileone_mm tools tests configs docs
lint: install
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)

# The docs site (mkdocs.yml) into site/, offline; --strict fails on a broken link or page.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict
