#!/usr/bin/env bash
# End-to-end checks too slow for `npm test`: real CLI runs on generated multi-GB checkpoints.
#  1. bounded memory: a 2.5 GB shard converted under a 1.5 GB address-space limit (prlimit --as),
#     peak RSS reported by the tool checked against a bound that is far below the shard size; the
#     same for to-demo and to-gguf on a model whose largest tensor (1.85 GB) exceeds the limit;
#  2. kill -9 mid-run, rerun, and the result is byte-identical to an uninterrupted run.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d "${TMPDIR:-/tmp}/deepcast-e2e.XXXXXX")
trap 'rm -rf "$work"' EXIT
dc() { node bin/deepcast.js "$@"; }

echo "== e2e 1: bounded memory on a shard larger than the process may map"
npx tsx fixtures/synthetic.ts "$work/big" --shards 1 --shard-gb 2 --bf16-mb 512 --sparse
shard_bytes=$(stat -c %s "$work/big/model-00001-of-00001.safetensors")
limit=$((1536 * 1024 * 1024))
prlimit --as=$limit node bin/deepcast.js fp8-to-bf16 "$work/big" "$work/big-out" --json --threads 2 > "$work/big.json"
peak=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).peakRssBytes)' "$work/big.json")
echo "shard ${shard_bytes} B, address-space limit ${limit} B, peak RSS ${peak} B"
[ "$shard_bytes" -gt "$limit" ] || { echo "FAIL: the shard must be larger than the memory allowed"; exit 1; }
[ "$peak" -lt $((512 * 1024 * 1024)) ] || { echo "FAIL: peak RSS ${peak} above 512 MiB"; exit 1; }
rm -rf "$work/big" "$work/big-out"

echo "== e2e 1b: to-demo and to-gguf on a sparse slice of the real DeepSeek-V3 layout (largest tensor 1.85 GB) under the same limit"
npx tsx fixtures/dsv3-replica.ts "$work/rep" --layers 1 --no-mtp
largest=1853358080  # embed_tokens / lm_head: 129280 x 7168 BF16
for cmd in "to-demo $work/rep $work/rep-demo --model-parallel 16" "to-gguf $work/rep -q Q8_0 -o $work/rep-q8.gguf"; do
  # shellcheck disable=SC2086
  prlimit --as=$limit node bin/deepcast.js $cmd --json --threads 2 > "$work/rep.json"
  peak=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).peakRssBytes)' "$work/rep.json")
  echo "${cmd%% *}: largest tensor ${largest} B, address-space limit ${limit} B, peak RSS ${peak} B"
  [ "$peak" -lt $((512 * 1024 * 1024)) ] || { echo "FAIL: peak RSS ${peak} above 512 MiB"; exit 1; }
done
rm -rf "$work/rep" "$work/rep-demo" "$work"/rep-q8*.gguf

echo "== e2e 2: kill -9 mid-run, resume, compare with an uninterrupted run"
npx tsx fixtures/synthetic.ts "$work/rand" --shards 4 --shard-gb 0.25 --bf16-mb 64
dc fp8-to-bf16 "$work/rand" "$work/ref" --threads 1 > /dev/null
node bin/deepcast.js fp8-to-bf16 "$work/rand" "$work/resumed" --threads 1 > /dev/null 2>&1 &
pid=$!
# Wait until at least one shard is complete, then kill without warning.
for _ in $(seq 1 600); do
  if [ -f "$work/resumed/.deepcast-run.json" ] && grep -q '"size"' "$work/resumed/.deepcast-run.json"; then break; fi
  sleep 0.05
done
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
done_before=$(grep -c '"size"' "$work/resumed/.deepcast-run.json" || true)
echo "killed with ${done_before} shard(s) recorded complete"
[ "$done_before" -lt 4 ] || { echo "FAIL: the run finished before it could be killed"; exit 1; }
dc fp8-to-bf16 "$work/rand" "$work/resumed" --json > "$work/resume.json"
resumed=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).resumedShards)' "$work/resume.json")
[ "$resumed" -ge 1 ] || { echo "FAIL: nothing was resumed"; exit 1; }
(cd "$work/ref" && sha256sum * | sort) > "$work/ref.sha"
(cd "$work/resumed" && sha256sum * | sort) > "$work/resumed.sha"
diff "$work/ref.sha" "$work/resumed.sha"
if ls -A "$work/resumed" | grep -q "\.partial$"; then echo "FAIL: temporary files left behind"; exit 1; fi
echo "resumed ${resumed} shard(s); output byte-identical to the uninterrupted run"
echo "== e2e 3: reference forward pass, full eval perplexity vs DeepSeek's model.py"
npx tsx test/e2e/forward-ppl.ts --threads 2
echo "== e2e 4: CI validation job: every main GGUF type against the FP8 original, within bands"
npx tsx test/e2e/validate-quants.ts --threads 2 2>/dev/null
echo "== e2e 5: deepcast imatrix in bounded memory on a DeepSeek-V3 replica (a layer of 11 GB)"
bash test/e2e/imatrix-memory.sh
echo "== e2e 6: KLD of low-bit quants made with our imatrix vs llama-imatrix's (IQ2_XXS, Q2_K_S)"
npx tsx test/e2e/imatrix-kld.ts --threads 2
npx tsx test/e2e/imatrix-kld.ts --type Q2_K_S --threads 2
echo "== e2e 7: our imatrix files in llama.cpp's llama-quantize (skipped without a llama.cpp build)"
bash test/e2e/imatrix-llama.sh
echo "== e2e 8: to-gguf IN.gguf next to llama-quantize on the same GGUFs, and on 4.9 GB in bounded memory (skipped without a llama.cpp build)"
bash test/e2e/requant-llama.sh
echo "e2e: all passed"
