# The two commands of the README: `make serve` (set up, build and start the server on the
# default model) and `make test` (set up, build, run all tests). Everything native is
# installed into the project folder by setup.
.PHONY: serve default-model setup setup-runtime setup-clients build test test-clients test-server lint fuzz soak bench-train bench-server bench-gallery bench-reference clean

CARGO ?= cargo
DATA ?= ../shared/data/stanford-dogs

HOST ?= 127.0.0.1
PORT ?= 8080
MODEL ?= models/default
# Request images of `make bench-server`; a folder without JPEGs means synthetic 500×375 photos.
BENCH_IMAGES ?= $(DATA)/Images

# The server crate needs ONNX Runtime only: no libtorch is installed or linked for it.
serve: setup-runtime
	$(CARGO) build --release -p simsiam-server --bin server
	./target/release/server --model $(MODEL) --host $(HOST) --port $(PORT)

setup:
	@bash scripts/setup.sh

setup-runtime:
	@bash scripts/setup.sh runtime

# The client suites' pieces: the Python SDK, npm packages, Debian's chromium.
setup-clients: setup
	@bash scripts/setup-clients.sh

build: setup
	$(CARGO) build --release --workspace

# Every crate's unit, integration and doc tests, then the clients against real servers.
test: setup setup-clients
	$(CARGO) test --release --workspace
	bash scripts/test-clients.sh

# The Python and TypeScript SDK suites and the browser test alone.
test-clients: setup-clients
	bash scripts/test-clients.sh

# The server crate's tests alone: they need ONNX Runtime and pgserver but no libtorch.
test-server:
	@bash scripts/setup.sh pgserver
	$(CARGO) test --release -p simsiam -p simsiam-onnx -p simsiam-server

lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

# Trains models/default from scratch: SimSiam pretraining, fine-tuning on the labels, eval,
# export and gallery (scripts/default-model.sh; under 120 minutes on 2 CPU cores, and every
# stage resumes when run again). CONFIG=config/gpu-model.toml on a GPU host.
default-model: setup
	DATA=$(DATA) bash scripts/default-model.sh

# Throughput of the data pipeline, compute-only and end-to-end training (10 breeds, 64 px).
bench-train: build
	./target/release/trainer bench --config config/bench-10breeds.toml --data $(DATA) --steps 15

# Server images/s and latency at concurrency 1, 8, 32 beside a bare ONNX Runtime session.
bench-server: setup-runtime
	$(CARGO) build --release -p simsiam-server -p simsiam-bench --bin server --bin server-bench
	./target/release/server-bench --model $(MODEL) --images $(BENCH_IMAGES)

# The embedded gallery (before and after its log) beside PostgreSQL + pgvector, on
# GALLERY_N synthetic vectors of the default model's width; a throwaway PostgreSQL
# (pgserver) is started in target/bench-postgres and stopped after. Then hnswlib and FAISS
# on the same vectors (bench/anchors, in their own venv).
GALLERY_N ?= 100000
bench-gallery: setup
	$(CARGO) build --release -p simsiam-bench --bin gallery-bench
	rm -rf target/bench-postgres target/bench-vectors
	url=$$(.venv/bin/python scripts/throwaway_postgres.py start target/bench-postgres) && \
	  ./target/release/gallery-bench --n $(GALLERY_N) --postgres-url "$$url" --vectors-out target/bench-vectors; \
	  status=$$?; .venv/bin/python scripts/throwaway_postgres.py stop target/bench-postgres; exit $$status
	bash bench/anchors/run.sh target/bench-vectors

# The plain PyTorch baseline of the same recipe (separate venv, see bench/reference/README.md).
bench-reference:
	bash bench/reference/setup.sh
	$${REF_VENV:-/work/refvenv}/bin/python bench/reference/simsiam_reference.py --data $(DATA) --epochs 3

clean:
	$(CARGO) clean

# Fuzzing: every libFuzzer target for FUZZ_SECONDS each (scripts/fuzz.sh builds cargo-fuzz
# into .tools/ the first time).
FUZZ_SECONDS ?= 600
fuzz: setup
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

# A soak on loopback: 64 clients on mixed routes with 5% malformed requests, 100 slow
# connections, readiness and resident memory watched (server-bench --soak).
SOAK_SECONDS ?= 600
soak: setup-runtime
	$(CARGO) build --release -p simsiam-server -p simsiam-bench --bin server --bin server-bench
	./target/release/server-bench --model $(MODEL) --images $(BENCH_IMAGES) --soak $(SOAK_SECONDS)
