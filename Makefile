# The two commands of the README: `make test` (set up, build, run all tests) and, with the
# server, `make serve`. Everything native is installed into the project folder by setup.
.PHONY: setup build test lint bench-train bench-reference clean

CARGO ?= cargo
DATA ?= ../shared/data/stanford-dogs

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release

test: setup
	$(CARGO) test --release

lint: setup
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) clippy --release --no-default-features --lib -- -D warnings

# Throughput of the data pipeline, compute-only and end-to-end training (10 breeds, 64 px).
bench-train: build
	./target/release/trainer bench --config config/bench-10breeds.toml --data $(DATA) --steps 15

# The plain PyTorch baseline of the same recipe (separate venv, see bench/reference/README.md).
bench-reference:
	bash bench/reference/setup.sh
	$${REF_VENV:-/work/refvenv}/bin/python bench/reference/simsiam_reference.py --data $(DATA) --epochs 3

clean:
	$(CARGO) clean
