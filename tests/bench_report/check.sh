#!/bin/sh
# bench/report's table from a fixed Google Benchmark JSON (fixture.json: hand-chosen times, so
# every GB/s, ratio, verdict and "bus x" in expected.txt can be computed by hand; "mean" rows
# with other times must be ignored), and its error on a JSON that holds no quantize kernel.
#   per_channel 1 thr: 4e6 bytes / 1.25 ms = 3.2 GB/s, convert 4.0 -> 0.800 MISS 0.9
#   per_channel 2 thr: 8.0 GB/s, convert 6.4 -> 1.250; 8.0 / 3.2 = 2.50x; bus x 6.4 / 3.2 = 2.00
#   per_tensor 1 thr: 2.667 GB/s against 1 / (1/4.0 + 1/8.0) = 2.667 (max + convert) -> 1.000
#   per_tensor 2 thr: 3.333 against 1 / (1/6.4 + 1/12.8) = 4.267 -> 0.781; 1.25x; bus x 1.60
#   per_group32 asym int8: 2.5 GB/s -> 0.625 MISS 0.9; per_group128 asym int4: 4.0 -> 1.000 ok
#   0.85 (after per_group32 though first in the JSON: groups sort by size)
# usage: check.sh SOURCE_DIR WORK_DIR
set -eu
src=$1
work=$2
here=$src/tests/bench_report
mkdir -p "$work"
"$src/bench/report" --json "$here/fixture.json" > "$work/table.txt"
diff -u "$here/expected.txt" "$work/table.txt"
# no quantize kernels (renamed): the rooflines alone make no table
sed 's#"run_name": "quantize/#"run_name": "other/#' "$here/fixture.json" > "$work/rooflines_only.json"
if "$src/bench/report" --json "$work/rooflines_only.json" > "$work/none.txt" 2>&1; then
  echo "bench/report succeeded on a JSON without quantize kernels" >&2
  exit 1
fi
grep -q 'no quantize medians in the JSON' "$work/none.txt"
echo "bench/report: table and error as expected"
