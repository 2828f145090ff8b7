#!/usr/bin/env bash
# to-gguf IN.gguf against llama.cpp's own llama-quantize, live (issue 13 item 2): the same command on the same
# GGUF must give the same file. 1) llama.cpp's BF16 conversion of the fixture to a range of mixes (with and
# without llama-imatrix's imatrix), an F16 and a Q8_0 input (--allow-requantize), a split input with --keep-split; 2) a 4.9 GB BF16 GGUF of a
# sparse 1-layer slice of the real DeepSeek-V3 layout (largest tensor 1.85 GB) requantized under a 1.5 GB
# address-space limit, with peak RSS checked, and compared with llama-quantize's file.
# Needs a llama.cpp v0.4.0 build: LLAMA_BIN (default /tmp/llama.cpp-bench/build/bin) and the BF16 GGUF
# (BF16_GGUF, default the shared golden one); skipped when either is missing. Needs about 12 GB of free disk.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
bin=${LLAMA_BIN:-/tmp/llama.cpp-bench/build/bin}
bf16=${BF16_GGUF:-/work/shared/golden/llama-cpp-tiny-dsv3/tiny-dsv3-BF16.gguf}
if [ ! -x "$bin/llama-quantize" ] || [ ! -f "$bf16" ]; then echo "SKIP: no $bin/llama-quantize or $bf16"; exit 0; fi
export LD_LIBRARY_PATH="$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
work=$(mktemp -d "${TMPDIR:-/tmp}/deepcast-requant-llama.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp "$bf16" "$work/BF16.gguf"
cp fixtures/llama-cpp-tiny-dsv3/tiny-dsv3.imatrix.gguf "$work/im.gguf"
cd "$work"
dc() { node "$root/bin/deepcast.js" to-gguf "$@" --threads 2 > /dev/null 2>&1; }
same() { # in out-type [llama-quantize flags...] -- [deepcast flags...]
  local in=$1 type=$2; shift 2
  local lq=() dcf=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do lq+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  dcf=("$@")
  rm -f lq.gguf dc.gguf .dc.gguf.deepcast-run.json
  "$bin/llama-quantize" "${lq[@]}" "$in" "lq.gguf" "$type" 2 > lq.log 2>&1 || { tail -5 lq.log; echo "FAIL: llama-quantize $in $type"; exit 1; }
  dc "$in" -q "$type" -o dc.gguf "${dcf[@]}" || { echo "FAIL: deepcast $in $type"; exit 1; }
  cmp lq.gguf dc.gguf || { echo "FAIL: $in -> $type differs"; exit 1; }
  echo "$in -> $type ${lq[*]}: identical ($(stat -c %s dc.gguf) bytes)"
}

echo "== 1: the fixture's GGUFs"
for t in Q4_0 Q5_1 Q3_K_L Q4_K_S Q5_K_M Q6_K; do same BF16.gguf "$t"; done
for t in IQ2_M IQ3_S IQ3_XXS; do same BF16.gguf "$t" --imatrix im.gguf -- --imatrix im.gguf; done
"$bin/llama-quantize" BF16.gguf F16.gguf F16 2 > /dev/null 2>&1
"$bin/llama-quantize" BF16.gguf Q8_0.gguf Q8_0 2 > /dev/null 2>&1
same F16.gguf Q3_K_M
same Q8_0.gguf Q4_K_M --allow-requantize -- --allow-requantize
same Q8_0.gguf Q2_K_S --allow-requantize --imatrix im.gguf -- --allow-requantize --imatrix im.gguf
find . -maxdepth 1 -name '*.gguf' ! -name im.gguf -delete
node "$root/bin/deepcast.js" to-gguf "$root/fixtures/tiny-dsv3" -q BF16 --split-max-size 10M -o part.gguf --threads 2 > /dev/null 2>&1
"$bin/llama-quantize" --keep-split --imatrix im.gguf part-00001-of-00003.gguf lq.gguf IQ3_XXS 2 > lq.log 2>&1
dc part-00002-of-00003.gguf -q IQ3_XXS --imatrix im.gguf --keep-split -o dc.gguf
for i in 1 2 3; do cmp "lq-0000$i-of-00003.gguf" "dc-0000$i-of-00003.gguf"; done
echo "3-part split -> IQ3_XXS --imatrix im.gguf --keep-split: 3 identical parts"
find . -maxdepth 1 -name '*.gguf' ! -name im.gguf -delete

echo "== 2: a 4.9 GB BF16 GGUF of the real layout, under a 1.5 GB address-space limit"
"$root/node_modules/.bin/tsx" "$root/fixtures/dsv3-replica.ts" rep --layers 1 --no-mtp > /dev/null
node "$root/bin/deepcast.js" to-gguf rep -q BF16 -o big-BF16.gguf --threads 2 > /dev/null 2>&1
rm -rf rep
limit=$((1536 * 1024 * 1024))
prlimit --as=$limit node "$root/bin/deepcast.js" to-gguf big-BF16.gguf -q Q4_K_M -o dc.gguf --threads 2 --json > big.json 2> /dev/null
peak=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).peakRssBytes)' big.json)
echo "input $(stat -c %s big-BF16.gguf) B, address-space limit ${limit} B, peak RSS ${peak} B"
[ "$peak" -lt $((512 * 1024 * 1024)) ] || { echo "FAIL: peak RSS ${peak} above 512 MiB"; exit 1; }
"$bin/llama-quantize" big-BF16.gguf lq.gguf Q4_K_M 2 > lq.log 2>&1
cmp lq.gguf dc.gguf
echo "big BF16 -> Q4_K_M: identical to llama-quantize's ($(stat -c %s dc.gguf) bytes)"
echo "requant-llama: passed"
