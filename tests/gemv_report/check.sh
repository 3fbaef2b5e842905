#!/bin/sh
# bench/gemv_report's table from a fixed Google Benchmark JSON (fixture.json: hand-chosen times
# and bytes, so every ratio and verdict can be computed by hand; "mean" rows, three times the
# median, must be ignored), with the median and with the min statistic, and its error on a
# JSON that holds no benchmark of the statistic asked for.
#   int4_g32_dot8 1 thr cold, median: 0.9e6 B / 125 us = 7.20 GB/s; roofline 1e6 B / 100 us =
#     10.00 -> roof 0.720 MISS 0.8; x sgemv 1000 / 125 = 8.00; x int8 400 / 125 = 3.20 ok 1.4
#   int4_per_channel_dot8: 0.8e6 B / 100 us = 8.00 -> 0.800 ok 0.8 (the target is inclusive)
#   int4_g32_dot8 2 thr cold: 125 / 62.5 = 2.00 ok 1.7; with min: 100 / 62.5 = 1.60 MISS 1.7
#   min: roofline 1e6 B / 80 us = 12.50 GB/s; int4_g32_dot8 0.9e6 B / 100 us = 9.00 -> 0.720
#   int4_g32 batch 8: measured against the batch-1 roofline: 1.80 / 10.00 = 0.180
# usage: check.sh SOURCE_DIR WORK_DIR
set -eu
src=$1
work=$2
here=$src/tests/gemv_report
mkdir -p "$work"
"$src/bench/gemv_report" --json "$here/fixture.json" --filter 's_64x64/' > "$work/median.txt"
diff -u "$here/expected_median.txt" "$work/median.txt"
"$src/bench/gemv_report" --json "$here/fixture.json" --filter 's_64x64/' --stat min > "$work/min.txt"
diff -u "$here/expected_min.txt" "$work/min.txt"
if "$src/bench/gemv_report" --json "$here/fixture.json" --stat max > "$work/none.txt" 2>&1; then
  echo "bench/gemv_report succeeded with a statistic the JSON does not hold" >&2
  exit 1
fi
grep -q 'no maxs in the JSON' "$work/none.txt"
echo "bench/gemv_report: tables and error as expected"
