#!/bin/sh
# Conformance of orbitq-gemma's --out with compressed-tensors and vLLM, judged by
# ct_vllm_check.py (written from their sources, not from orbitq's): a small synthetic
# checkpoint converted with every spec the engine issue names, the checker on each output; a
# spec the engines cannot load refused before anything is written; two conversions of
# different specs racing to the same --out, each ending with a consistent checkpoint or a clean
# failure.
# Usage: run.sh ORBITQ_GEMMA PYTHON WORK_DIR [specs|floats|race]   (default: all; CTest runs the
# parts as separate tests, side by side: the integer specs and refusals, the float formats with
# the checker's self-test, the race)
set -eu
gemma="$1"; py="$2"; work="$3"; part="${4:-all}"
here="$(cd "$(dirname "$0")" && pwd)"
check="$here/ct_vllm_check.py"
"$py" -c 'import numpy' 2>/dev/null || {
  echo "FAIL: $py cannot import numpy (Debian: python3-numpy; scripts/install-deps.sh installs it)"; exit 1; }
rm -rf "$work"; mkdir -p "$work"; cd "$work"
fail=0
say() { printf '%s\n' "$*"; }
bad() { say "FAIL: $*"; fail=1; }

"$gemma" --write-synthetic src --synthetic-layers 2 --experts 2 --quiet
# convert NAME EXPECTED_RC CHECKER_FLAGS -- ORBITQ_FLAGS...
convert() {
  name="$1"; want="$2"; flags="$3"; shift 4
  rc=0; "$gemma" --checkpoint src --out "$name" --tokens 2 --quiet "$@" > "$name.out" 2> "$name.err" || rc=$?
  if [ "$rc" != "$want" ]; then bad "$name: orbitq-gemma $* exited $rc, expected $want"; cat "$name.err"; return; fi
  # shellcheck disable=SC2086
  if "$py" "$check" --source src --converted "$name" $flags > "$name.check" 2>&1; then say "ok   $name: $(tail -n 1 "$name.check")"
  else cat "$name.check"; bad "$name: the checker refuses the output of orbitq-gemma $*"; fi
}
if [ "$part" = all ] || [ "$part" = floats ]; then
"$py" "$check" --self-test > self-test.log 2>&1 || { cat self-test.log; bad "checker self-test"; }
# the float formats, each with the activations its vLLM method quantizes (the gates judge those;
# MXFP4's 4-bit activations fail the layer gate on the synthetic outliers: exit 2, still written)
fp="--expect-type float --expect-format"
convert fp8_per_channel 0 "$fp float-quantized --expect-bits 8 --expect-strategy channel --expect-input dynamic --expect-method w8a8_fp8 --min-cos 0.999" -- \
  --scheme fp8_e4m3
convert fp8_per_tensor 0 "$fp float-quantized --expect-bits 8 --expect-strategy tensor --expect-input dynamic --expect-method w8a8_fp8 --min-cos 0.999" -- \
  --scheme fp8_e4m3 --granularity per_tensor
convert fp8_block64 0 "$fp float-quantized --expect-bits 8 --expect-strategy block --expect-block 64,64 --expect-method w8a8_fp8 --min-cos 0.999" -- \
  --scheme fp8_e4m3 --granularity per_block:64x64
convert nvfp4a16 0 "$fp nvfp4-pack-quantized --expect-bits 4 --expect-strategy tensor_group --expect-group-size 16 --expect-input none --expect-method w4a16_nvfp4 --min-cos 0.99" -- \
  --scheme nvfp4
# W4A4: NVFP4 activations under an input_global_scale per Linear, calibrated on the sample tokens
convert nvfp4_w4a4 0 "$fp nvfp4-pack-quantized --expect-bits 4 --expect-strategy tensor_group --expect-group-size 16 --expect-input local --expect-method w4a4_nvfp4 --min-cos 0.99" -- \
  --scheme nvfp4 --activations nvfp4
convert mxfp4 2 "$fp mxfp4-pack-quantized --expect-bits 4 --expect-strategy group --expect-group-size 32 --expect-input dynamic --expect-method w4a4_mxfp4 --min-cos 0.985" -- \
  --scheme mxfp4
fi


if [ "$part" = all ] || [ "$part" = specs ]; then
convert int8_per_channel 0 "--expect-format pack-quantized --expect-bits 8 --expect-strategy channel --expect-symmetric true --min-cos 0.999" --
convert int8_per_group32_asym 0 "--expect-bits 8 --expect-strategy group --expect-group-size 32 --expect-symmetric false --min-cos 0.999" -- \
  --granularity per_group:32 --scheme asymmetric
# per_tensor fails the gates on the synthetic outliers (exit 2: the seed's finding) and is
# still written, per channel with the one scale repeated; its cosine is what per-tensor gives.
convert int8_per_tensor 2 "--expect-bits 8 --expect-strategy channel --min-cos 0.8" -- --granularity per_tensor
convert int4_per_group32 0 "--expect-bits 4 --expect-strategy group --expect-group-size 32 --expect-symmetric true --min-cos 0.99" -- \
  --bits 4 --granularity per_group:32
convert int4_per_group32_asym 0 "--expect-bits 4 --expect-strategy group --expect-group-size 32 --expect-symmetric false --min-cos 0.99" -- \
  --bits 4 --granularity per_group:32 --scheme asymmetric
convert int4_per_channel 0 "--expect-bits 4 --expect-strategy channel --expect-symmetric true --min-cos 0.985" -- --bits 4
convert auto_cos_0.9999 0 "--min-cos 0.9999" -- --granularity auto --target-cos 0.9999
# the float formats among auto's candidates: FP8 per tensor for layer 1, int8 for layer 0, one
# checkpoint of format mixed-precision
convert auto_mixed_cos_0.999 0 "--min-cos 0.999" -- --granularity auto --target-cos 0.999
grep -q '"format": "mixed-precision"' auto_mixed_cos_0.999/config.json || bad "auto_mixed_cos_0.999: config.json is not mixed-precision"
# error-minimizing scales: the same layout, only the numbers move
convert int4_per_group32_mse 0 "--expect-bits 4 --expect-strategy group --expect-group-size 32 --expect-symmetric true --min-cos 0.995" -- \
  --bits 4 --granularity per_group:32 --scales mse
# scales of either sign: a group whose extreme is positive may take a negative scale
convert int4_per_group32_mse_signed 0 "--expect-bits 4 --expect-strategy group --expect-group-size 32 --expect-symmetric true --expect-negative-scales --min-cos 0.995" -- \
  --bits 4 --granularity per_group:32 --scales mse_signed
convert w8a8_int8 0 "--expect-format int-quantized --expect-bits 8 --expect-strategy channel --min-cos 0.999" -- --activations int8
convert int4_per_group64_dense 0 "--expect-bits 4 --expect-group-size 64 --min-cos 0.99" -- --bits 4 --granularity per_group:64 --include-dense
convert layer1_only 0 "--min-cos 0.999" -- --layers 1
grep -q "^out: per_tensor written with strategy 'channel'" int8_per_tensor.out || bad "per_tensor: stdout does not say it was written per channel"

# Specs no engine's MoE kernel loads: exit 1 before anything is written, naming what loads.
for g in per_group:128 per_group:16 "per_block --scheme fp8_e4m3" "per_group:32 --scheme fp8_e4m3"; do
  # shellcheck disable=SC2086
  rc=0; "$gemma" --checkpoint src --out refused --granularity $g --quiet --tokens 2 2> refused.err || rc=$?
  [ "$rc" = 1 ] || bad "$g with --out: exit $rc, expected 1"
  grep -q "vLLM's MoE kernels load" refused.err || bad "$g with --out: the message does not list what loads: $(cat refused.err)"
  [ ! -e refused ] || bad "$g with --out: the output directory exists"
done
ls -a | grep -q '^\.refused\.partial' && bad "a refused conversion left a staging directory"
fi

# Two conversions with different specs started together on the same --out.
race() {
  round="$1"; force="$2"
  rm -rf race; r8=0; r4=0
  "$gemma" --checkpoint src --out race --tokens 2 --quiet $force > race8.out 2> race8.err & p8=$!
  "$gemma" --checkpoint src --out race --tokens 2 --quiet $force --bits 4 --granularity per_group:32 > race4.out 2> race4.err & p4=$!
  wait "$p8" || r8=$?; wait "$p4" || r4=$?
  for r in "$r8" "$r4"; do case "$r" in 0|1) ;; *) bad "race $round: exit status $r";; esac; done
  if [ -n "$force" ]; then
    [ "$r8$r4" = 00 ] || bad "race $round (--force): exits $r8 $r4, expected both 0: $(cat race8.err race4.err)"
  else
    [ "$r8$r4" = 01 ] || [ "$r8$r4" = 10 ] || bad "race $round: exits $r8 $r4, expected one 0 and one 1: $(cat race8.err race4.err)"
    for e in race8 race4; do
      if [ -s "$e.err" ] && ! grep -q -e "appeared while this conversion ran" -e "already exists" "$e.err"; then
        bad "race $round: unexpected failure: $(cat "$e.err")"
      fi
    done
  fi
  # Whatever won is one whole checkpoint of one spec.
  if "$py" "$check" --source src --converted race > "race$round.check" 2>&1; then say "ok   race $round $force: $(tail -n 1 "race$round.check")"
  else cat "race$round.check"; bad "race $round: the output mixes the two conversions or is incomplete"; fi
  if [ -z "$force" ]; then
    bits=$(grep -o '"num_bits": [48]' race/config.json | head -n 1 | grep -o '[48]$')
    { [ "$r8" = 0 ] && [ "$bits" = 8 ]; } || { [ "$r4" = 0 ] && [ "$bits" = 4 ]; } || bad "race $round: the output is not the successful run's spec"
  fi
  ls -a | grep -q '^\.race\.partial' && bad "race $round: a staging directory was left behind"
  return 0
}
if [ "$part" = all ] || [ "$part" = race ]; then
  for round in 1 2 3; do race "$round" ""; done
  race 4 --force; race 5 --force
fi

[ "$fail" = 0 ] && say "conformance: all checks passed"
exit "$fail"
