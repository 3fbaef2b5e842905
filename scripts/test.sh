#!/bin/sh
# Installs the dependencies, builds everything (library tests, examples, benchmarks) and runs the
# test suite. Usage: scripts/test.sh [build-dir]   (default: build)
set -eu
cd "$(dirname "$0")/.."
build="${1:-build}"
scripts/install-deps.sh
# Ninja for new build trees (an existing tree keeps its generator): it compiles a target's
# sources while the libraries it links are still being built.
export CMAKE_GENERATOR="${CMAKE_GENERATOR:-Ninja}"
# Everything on, whatever an earlier configuration of the tree chose.
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DORBITQ_BUILD_TESTS=ON -DORBITQ_BUILD_EXAMPLES=ON -DORBITQ_BUILD_BENCHMARKS=ON
cmake --build "$build" -j"$(nproc)"
# A tree without tests is a failure, not a pass.
ctest --test-dir "$build" --output-on-failure -j"$(nproc)" -LE long --no-tests=error
