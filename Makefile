# Targets named in the README. Everything installs into ./.venv; nothing global is touched.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080
DATA   ?= ./semcache-data

.PHONY: install serve test lint typecheck check clean bench-install bench soak

# torch is installed first and pinned: its CPU build lies on these machines' disk, while an
# unpinned torch (pulled in by sentence-transformers) would download a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

serve: install
	$(BIN)/semcache serve --host $(HOST) --port $(PORT) --data-dir $(DATA)

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

bench-install: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'

# Each writes its table beside it; run them on an otherwise idle machine.
bench: bench-install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_lookup.py > benchmarks/results/bench_lookup.txt
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_http.py > benchmarks/results/bench_http.txt
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_vs_gptcache.py > benchmarks/results/bench_vs_gptcache.txt
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_scale.py > benchmarks/results/bench_scale.txt
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_embed_ceiling.py > benchmarks/results/bench_embed_ceiling.txt
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_piece_rule.py ../shared/data > benchmarks/results/bench_piece_rule.txt

# Ten minutes of mixed load against the real server; exits 1 when its verdict fails.
soak: bench-install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/soak.py --duration 600 > benchmarks/results/soak.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
