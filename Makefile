# The two commands of the README. Both install the stack first when needed
# (tools/install.sh: the active venv/conda env if it has a torch, else ./.venv).
PY := $(shell bash tools/install.sh --python)
PYTEST_ARGS ?=

.PHONY: install test demo
install:
	@bash tools/install.sh

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo.py
