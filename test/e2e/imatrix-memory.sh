#!/usr/bin/env bash
# deepcast imatrix in bounded memory (issue 10 item 5), on a sparse replica of DeepSeek-V3 with 4 layers
# (3 dense, 1 MoE): 17 GB of tensor data, the MoE layer alone 11.3 GB of FP8 (a dense one 0.58 GB, 2.3 GB
# as float32). Two runs over the same 4 chunks:
#   A: a budget that fits all chunks in one pass -> 1 pass, every weight read once;
#   B: a budget that fits 2 chunks -> 2 passes, every weight read twice;
# each with peak RSS (the tool's maxRSS) below the tool's own estimate, which is below the budget, and
# far below the model (and below one MoE layer's weights).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d "${TMPDIR:-/tmp}/deepcast-imatrix-e2e.XXXXXX")
trap 'rm -rf "$work"' EXIT
npx tsx fixtures/dsv3-replica.ts "$work/rep" --layers 4 --no-mtp > /dev/null
model_bytes=$(du -b --apparent-size -c "$work"/rep/*.safetensors | tail -1 | cut -f1)
moe_layer=$((256 * 3 * 2048 * 7168))
text=fixtures/tiny-dsv3-golden/eval/kjv_eval.txt
args=(imatrix "$work/rep" -f "$text" -c 16 --chunks 4 --no-ppl --threads 2 --json)
j() { node -e 'const j=JSON.parse(require("fs").readFileSync(process.argv[1]));console.log(j[process.argv[2]])' "$@"; }
node bin/deepcast.js "${args[@]}" -o "$work/x.gguf" --dry-run --memory 64G > "$work/plan.json"
fixed=$(j "$work/plan.json" fixedBytes); per=$(j "$work/plan.json" perChunkBytes)
for run in "A $((fixed + 4 * per + per / 2)) 1" "B $((fixed + 2 * per + per / 2)) 2"; do
  read -r name budget passes <<< "$run"
  node bin/deepcast.js "${args[@]}" -o "$work/$name.gguf" --memory "$budget" > "$work/$name.json"
  peak=$(j "$work/$name.json" peakRssBytes); est=$(j "$work/$name.json" estimatedPeakBytes)
  batches=$(j "$work/$name.json" batches); reads=$(j "$work/$name.json" weightReads)
  echo "run $name: budget $budget B, $batches pass(es), weights read $reads time(s), peak RSS $peak B (estimate $est B); model $model_bytes B, MoE layer $moe_layer B of FP8"
  [ "$batches" = "$passes" ] && [ "$reads" = "$passes" ] || { echo "FAIL: expected $passes pass(es) reading each weight once"; exit 1; }
  [ "$peak" -le "$est" ] && [ "$est" -le "$budget" ] || { echo "FAIL: peak RSS above the estimate or the estimate above the budget"; exit 1; }
  [ "$peak" -lt "$moe_layer" ] && [ $((peak * 4)) -lt "$model_bytes" ] || { echo "FAIL: peak RSS not bounded by a layer"; exit 1; }
done
cmp "$work/A.gguf" "$work/B.gguf" && echo "one pass and two passes wrote the same bytes"
echo "imatrix-memory: passed"
