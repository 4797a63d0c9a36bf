# The two commands of the README. Both install the stack first when needed
# (tools/install.sh: the active venv/conda env if it has a torch, else ./.venv).
PY := $(shell bash tools/install.sh --python)
PYTEST_ARGS ?=

.PHONY: install test test-fast demo
install:
	@bash tools/install.sh

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The fast set (no `slow` tests) on both cores: two pytest workers of one thread each.
test-fast: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow" -n 2 $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo.py
