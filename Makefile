# The two commands a new user needs: `make demo` and `make test` (as root).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: deps test-deps demo test unit ci-repeat lab-down stage clean

deps:
	VENV=$(VENV) scripts/install-deps.sh

test-deps:
	VENV=$(VENV) WITH_TESTS=1 scripts/install-deps.sh

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

# After changing calico/ or setup.py: refresh the package copies that the
# image folders carry (tests/unit/test_staged_package.py checks them).
stage:
	docker/stage-package.sh

lab-down:
	$(VENV)/bin/calico-lab down

clean:
	rm -rf $(VENV) build *.egg-info
