#!/usr/bin/env bash
# Our imatrix files in llama.cpp's own llama-quantize (issue 10 item 3): deepcast imatrix on the FP8 fixture in
# both formats, then llama-quantize --imatrix (on llama.cpp's BF16 conversion) and deepcast to-gguf --imatrix
# (on the FP8 fixture) to Q2_K_S: both accept the file and write the same bytes.
# Needs a llama.cpp v0.4.0 build: LLAMA_BIN (default /tmp/llama.cpp-bench/build/bin) and the BF16 GGUF
# (BF16_GGUF, default the shared golden one); skipped when either is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
bin=${LLAMA_BIN:-/tmp/llama.cpp-bench/build/bin}
bf16=${BF16_GGUF:-/work/shared/golden/llama-cpp-tiny-dsv3/tiny-dsv3-BF16.gguf}
if [ ! -x "$bin/llama-quantize" ] || [ ! -f "$bf16" ]; then echo "SKIP: no $bin/llama-quantize or $bf16"; exit 0; fi
work=$(mktemp -d "${TMPDIR:-/tmp}/deepcast-imatrix-llama.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp fixtures/tiny-dsv3-golden/eval/kjv_eval.txt "$work/text.txt"
cd "$work"
for fmt in gguf dat; do
  node "$root/bin/deepcast.js" imatrix "$root/fixtures/tiny-dsv3" -f text.txt -c 256 --chunks 8 -o "im.$fmt" --output-format "$fmt" --threads 2 2> /dev/null
  "$bin/llama-quantize" --imatrix "im.$fmt" "$bf16" "lq-$fmt.gguf" Q2_K_S 2 > "lq-$fmt.log" 2>&1 || { cat "lq-$fmt.log"; echo "FAIL: llama-quantize refused im.$fmt"; exit 1; }
  grep -q "loaded 48 importance matrix entries from im.$fmt computed on 8 chunks" "lq-$fmt.log" || { echo "FAIL: llama-quantize did not load 48 entries / 8 chunks"; exit 1; }
  node "$root/bin/deepcast.js" to-gguf "$root/fixtures/tiny-dsv3" -q Q2_K_S --imatrix "im.$fmt" -o "dc-$fmt.gguf" --threads 2 > /dev/null 2>&1
  cmp "dc-$fmt.gguf" "lq-$fmt.gguf"
  echo "$fmt imatrix: llama-quantize loads it (48 entries, 8 chunks); to-gguf and llama-quantize Q2_K_S outputs identical"
done
echo "imatrix-llama: passed"
