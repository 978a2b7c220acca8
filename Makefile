# The two commands a new user needs: `make demo` and `make test` (as root).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: deps test-deps hooks demo test unit ci-repeat lab-down stage clean

deps: hooks
	VENV=$(VENV) scripts/install-deps.sh

test-deps: hooks
	VENV=$(VENV) WITH_TESTS=1 scripts/install-deps.sh

# Commits restage the image folders' package tarballs themselves
# (.githooks/pre-commit); outside a git work tree there is nothing to do.
hooks:
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	    git config core.hooksPath .githooks && \
	    git config merge.calico-stage.name "keep ours; the commit hook restages" && \
	    git config merge.calico-stage.driver true; fi

demo: deps
	$(VENV)/bin/calico-lab demo

test: test-deps
	$(PYTHON) -m pytest -ra tests $(PYTEST_ARGS)

unit: test-deps
	$(PYTHON) -m pytest -ra tests/unit $(PYTEST_ARGS)

# CI (.ci/run) RUNS times in a row, each in a fresh clone of HEAD.
RUNS ?= 3
ci-repeat:
	scripts/ci-repeat.sh $(RUNS)

# Refresh the package copies that the image folders carry from the work tree
# (commits do it from the index through the hook above;
# tests/unit/test_staged_package.py checks them).
stage:
	docker/stage-package.sh

lab-down:
	$(VENV)/bin/calico-lab down

clean:
	rm -rf $(VENV) build *.egg-info
