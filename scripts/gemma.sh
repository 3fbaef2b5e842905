#!/bin/sh
# Installs the dependencies, builds orbitq-gemma and runs it on its built-in synthetic Gemma 4
# checkpoint (INT8 per-tensor vs per-channel, the experiment-36 story). Extra arguments go to
# orbitq-gemma, e.g. scripts/gemma.sh --checkpoint /models/gemma-4-26b-a4b --out /tmp/q8
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Ninja for new build trees (an existing tree keeps its generator): it compiles a target's
# sources while the libraries it links are still being built.
export CMAKE_GENERATOR="${CMAKE_GENERATOR:-Ninja}"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DORBITQ_BUILD_TESTS=OFF -DORBITQ_BUILD_BENCHMARKS=OFF
cmake --build build -j"$(nproc)" --target orbitq-gemma
exec build/bin/orbitq-gemma "$@"
