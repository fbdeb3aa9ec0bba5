# sockherd: every target bootstraps its own virtual environment, so a fresh clone
# needs nothing but CPython >= 3.11 with venv and pip.
PYTHON ?= python3
VENV ?= .venv
BIND ?= 127.0.0.1:8000
METRICS ?= 127.0.0.1:9100
CONTROL ?= /tmp/sockherd-make-run.sock
PYTEST_ARGS ?=

STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: run test test-others test-all lint bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@./.ci/make-venv "$(PYTHON)" "$(VENV)"
	@touch $@

## make run: the bundled HTTP example on $(BIND), served by a supervised prefork pool,
## with Prometheus metrics on http://$(METRICS)/metrics and a control socket at $(CONTROL).
run: $(STAMP)
	@echo "make run: try  curl http://$(BIND)/  and  curl http://$(METRICS)/metrics"
	@echo "          and  $(VENV)/bin/sockherd ctl --control $(CONTROL) status   (Ctrl-C stops)"
	$(VENV)/bin/sockherd serve sockherd.examples.hello_http:HelloHandler --bind $(BIND) \
		--mode prefork --metrics $(METRICS) --control $(CONTROL)

## make test: the whole suite on the default python3 (installs promtool/prometheus if it can).
test: $(STAMP)
	@./.ci/install-system-deps
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

## make test-others: the suite on every other CPython 3.11-3.13 found on this machine.
test-others:
	@./.ci/test-other-pythons "$(PYTHON)" $(PYTEST_ARGS)

## make test-all: both of the above.
test-all: test test-others

## make bench: sockherd against CPython's socketserver, a hand-written prefork and gunicorn,
## interleaved rounds, medians and ratios in bench/results/latest.{md,csv} (~13 min on 2 cores).
## make bench-quick (or make bench ARGS=--quick): only the targets' cells, under 3 minutes.
## make bench runs the memory benchmark too.
bench: $(STAMP)
	@./bench/setup "$(VENV)"
	$(VENV)/bin/python bench/run.py $(ARGS)
	$(VENV)/bin/python bench/memory.py

## make bench-memory: total PSS of 8 workers of an app caching ~100 MB of objects each, after
## 10,000 requests: sockherd (gc.freeze, without it, reforking) and gunicorn --preload, into
## bench/results/memory.md (about a minute).
.PHONY: bench-memory
bench-memory: $(STAMP)
	@./bench/setup "$(VENV)"
	$(VENV)/bin/python bench/memory.py $(ARGS)

.PHONY: bench-quick
bench-quick: $(STAMP)
	@./bench/setup "$(VENV)"
	$(VENV)/bin/python bench/run.py --quick $(ARGS)

## make lint: ruff (lint and format check), the layers and no-cycles contracts (import-linter),
## mypy, the package's shape (module sizes, type: ignore budget), hadolint on the Dockerfile,
## kubernetes-validate on the manifests and systemd-analyze verify on docker/systemd/.
lint: $(STAMP)
	$(VENV)/bin/ruff check sockherd tests bench
	$(VENV)/bin/ruff format --check sockherd tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_package_shape.py
	$(VENV)/bin/hadolint docker/Dockerfile
	$(VENV)/bin/kubernetes-validate --quiet docker/k8s/*.yaml
	./.ci/verify-systemd-units $(VENV)

clean:
	rm -rf .venv .venv-* .pytest_cache .mypy_cache .ruff_cache build *.egg-info
