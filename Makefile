# The two commands of the README: `make run` and `make test`.
# Both install missing Debian packages first (scripts/deps.sh).

BUILD      ?= build
TEST_BUILD ?= build-test
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps build run test test-build bench fuzz compose-test format clean proof

all: build

deps:
	@bash scripts/deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DBTL_SANITIZE=OFF >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

# Starts a private Postgres and the four services; Ctrl-C stops everything.
run: build
	@bash scripts/run.sh $(BUILD)

# Sanitized build (ASan + UBSan), then every unit and integration test.
test-build: deps
	@cmake -S . -B $(TEST_BUILD) -DBTL_SANITIZE=ON >/dev/null
	@cmake --build $(TEST_BUILD) -j$(JOBS)

test: test-build
	@cd $(TEST_BUILD) && ctest --output-on-failure --timeout 900 -j$(JOBS)

# Benchmarks on the Release build, in sequence (docs/PERFORMANCE.md):
# queue (vs pg-boss, graphile-worker, pgbench), pipeline, LLM cost, footprint.
bench: build
	@bash bench/queue/run.sh $(BUILD)
	@bash bench/pipeline.sh $(BUILD)
	@bash bench/cost.sh $(BUILD)
	@bash bench/footprint.sh $(BUILD)

# libFuzzer targets (clang), FUZZ_SECONDS per target; see docs/RELIABILITY.md.
FUZZ_SECONDS ?= 60
fuzz:
	@bash scripts/fuzz.sh $(FUZZ_SECONDS)

# The long checks (scripts/proof.sh): the full fault-injection run, whose
# figures go into docs/RELIABILITY.md, then fuzz, valgrind and bench.
# PROOF_SKIP=fuzz,valgrind,bench skips steps.
proof: test-build
	@PROOF_BUILD=$(TEST_BUILD) PROOF_RELEASE_BUILD=$(BUILD) FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/proof.sh

# docker-compose.yml for real, through podman's Docker-API socket.
compose-test:
	@bash scripts/compose-test.sh

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(TEST_BUILD)
