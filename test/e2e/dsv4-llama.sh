#!/usr/bin/env bash
# to-gguf of DeepSeek-V3.2 / V4 against llama.cpp's own tools, live: fixtures/llama-cpp-dsv4/make.ts reruns
# llama-quantize and llama-imatrix on our BF16 conversions of fixtures/tiny-dsv32 and test/dsv4-synthetic.ts's
# checkpoint; 1) everything it records must equal the committed fixtures (listings, imatrix files, recipe,
# manifest), so the committed oracle of test/to-gguf-dsv{32,4}.test.ts is still what llama.cpp writes; 2) the
# deepcast CLI on the checkpoints (FP8/FP4 straight to the type) must write llama-quantize's files byte for byte.
# Needs a llama.cpp v0.4.0 build: LLAMA_BIN (default /tmp/llama.cpp-bench/build/bin); skipped when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
bin=${LLAMA_BIN:-/tmp/llama.cpp-bench/build/bin}
if [ ! -x "$bin/llama-quantize" ] || [ ! -x "$bin/llama-imatrix" ]; then echo "SKIP: no $bin/llama-quantize or llama-imatrix"; exit 0; fi
export LLAMA_BIN=$bin
work=$(mktemp -d "${TMPDIR:-/tmp}/deepcast-dsv4-llama.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== 1: make.ts again: the committed fixtures are what llama.cpp writes now"
"$root/node_modules/.bin/tsx" fixtures/llama-cpp-dsv4/make.ts --out "$work/out" --work "$work/w" > /dev/null
for f in "$work"/out/*; do
  cmp "$f" "fixtures/llama-cpp-dsv4/$(basename "$f")" || { echo "FAIL: $(basename "$f") differs from the committed one"; exit 1; }
done
echo "$(ls "$work/out" | wc -l) files identical to fixtures/llama-cpp-dsv4"

echo "== 2: the deepcast CLI on the checkpoints next to llama-quantize's outputs from their BF16 conversions"
cd "$work/w"
dc() { node "$root/bin/deepcast.js" to-gguf "$@" --threads 2 > /dev/null 2>&1; }
same() { # ours theirs
  cmp "$1" "$2" || { echo "FAIL: $1 differs from llama-quantize's $2"; exit 1; }
  echo "$2: identical ($(stat -c %s "$1") bytes)"
}
for t in Q4_K_M Q3_K_M Q6_K Q8_0; do dc "$root/fixtures/tiny-dsv32" -q "$t" -o "dc-v32-$t.gguf"; same "dc-v32-$t.gguf" "llama-v32-$t.gguf"; done
for t in Q8_0 Q4_K_M Q2_K MXFP4_MOE IQ3_M TQ2_0; do dc DeepSeek-V4-Tiny -q "$t" -o "dc-v4-$t.gguf"; same "dc-v4-$t.gguf" "llama-v4-$t.gguf"; done
for t in IQ4_XS Q4_K_M; do dc DeepSeek-V4-Tiny -q "$t" --imatrix v4-usable.imatrix.gguf -o "dc-v4-im-$t.gguf"; same "dc-v4-im-$t.gguf" "llama-v4-im-$t.gguf"; done
echo "dsv4-llama: passed"
