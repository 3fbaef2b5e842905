#!/bin/sh
# Installs the dependencies, builds orbitq-gemma and runs it on its built-in synthetic Gemma 4
# checkpoint (INT8 per-tensor against per-channel). Extra arguments go to
# orbitq-gemma, e.g. scripts/gemma.sh --checkpoint /models/gemma-4-26b-a4b --out /tmp/q8
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Ninja for new build trees (an existing tree keeps its generator): it compiles a target's
# sources while the libraries it links are still being built.
export CMAKE_GENERATOR="${CMAKE_GENERATOR:-Ninja}"
# The same tree as scripts/test.sh, configured alike (tests stay on); only the tool is built here.
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DORBITQ_BUILD_TESTS=ON -DORBITQ_BUILD_EXAMPLES=ON -DORBITQ_BUILD_BENCHMARKS=ON
cmake --build build -j"$(nproc)" --target orbitq-gemma
exec build/bin/orbitq-gemma "$@"
