PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/python -m pytest

.PHONY: install test spec demo bench bench-http coverage clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

test: install
	$(PYTEST) -n 2 -q tests specs

spec: install
	ISOCLUSTER_SPEC_PROFILE=full $(PYTEST) -q -p no:xdist specs

demo: install
	$(BIN)/python -m isocluster demo

# The opt-in extras are benchmarked too: installed when the index has them, skipped (with a
# note in the table) when it does not.
bench: install
	-$(BIN)/python -m pip install -q msgpack orjson uvloop || echo 'bench: msgpack/orjson/uvloop not installed; their rows are skipped'
	$(BIN)/python benchmarks/run.py

# HTTP under load (issue 16): isocluster vs SO_REUSEPORT processes vs gunicorn, and failed
# requests while workers are killed, reloaded, scaled down, recycled, shut down (~3 min).
bench-http: install
	$(BIN)/python -m pip install -q gunicorn
	command -v ab >/dev/null || (apt-get update -qq && apt-get install -y -qq apache2-utils)
	$(BIN)/python benchmarks/http_load.py

coverage: install
	$(BIN)/python -m coverage erase
	$(BIN)/python -m coverage run -m pytest -q -p no:xdist tests specs
	$(BIN)/python -m coverage report -m --skip-covered

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .coverage build *.egg-info

# The Ray transport's tests: installs the `ray` extra into the venv (large; not part of `make test`).
# One Ray instance at a time (no xdist), every Ray process on 127.0.0.1 (isocluster/transport/ray_local.py).
.PHONY: test-ray
test-ray: install
	$(BIN)/python -m pip install -q -e '.[test,ray]'
	RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 \
		$(PYTEST) -q -p no:xdist tests/test_ray_transport.py tests/test_ray_cluster.py tests/test_ray_flow.py \
			tests/test_ray_dispatch.py tests/test_ray_gate.py tests/contract specs/spec_ray.py \
			'tests/test_examples.py::test_ray_cluster_runs_on_ray_or_says_it_needs_it'
