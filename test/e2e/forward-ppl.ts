/**
 * End-to-end check of the reference forward pass: perplexity of the tiny-dsv3 FP8 fixture over the
 * whole eval text (Ruth + Philippians, 7,547 tokens, 30 windows of 256) against model.py's figures
 * in ppl.json, with both weight treatments:
 *   - FP8 dequantized to float32 (code * scale_inv)   -> golden 42.8542 (modelpy_fp8_mp1_absorb)
 *   - FP8 dequantized and rounded to BF16              -> golden 42.8502 (modelpy_bf16_mp1)
 * and the forward throughput. Exits 1 when a perplexity is off by more than 1e-5 relative.
 *
 *   npx tsx test/e2e/forward-ppl.ts [--threads 2] [--batch-windows 8]
 */
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { perplexity } from "../../src/model/perplexity.js";
import { HfWeightSource } from "../../src/model/weights.js";
import { forwardOps } from "../../src/model/ops.js";

const ROOT = resolve(import.meta.dirname, "..", "..");
const FIXTURE = join(ROOT, "fixtures", "tiny-dsv3");
const GOLDEN = join(ROOT, "fixtures", "tiny-dsv3-golden");

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}
const threads = arg("--threads", 2);
const batchWindows = arg("--batch-windows", 8);

const ids = (JSON.parse(readFileSync(join(GOLDEN, "eval", "kjv_eval.ids.json"), "utf8")) as { ids: number[] }).ids;
const golden = JSON.parse(readFileSync(join(GOLDEN, "ppl.json"), "utf8")).eval as Record<string, number>;

let failed = false;
console.log(`forward kernels: ${forwardOps().backend}, threads ${threads}, ${batchWindows} windows per forward`);
for (const [label, bf16Round, key] of [["fp8 -> f32", false, "modelpy_fp8_mp1_absorb"], ["fp8 -> bf16", true, "modelpy_bf16_mp1"]] as const) {
  const src = await HfWeightSource.open(FIXTURE, { threads, bf16Round });
  try {
    const t0 = performance.now();
    const r = await perplexity(src, ids, { threads, batchWindows });
    const wall = (performance.now() - t0) / 1000;
    const want = golden[key]!;
    const rel = Math.abs(r.ppl - want) / want;
    const ok = rel <= 1e-5;
    failed ||= !ok;
    console.log(`${label}: ppl ${r.ppl.toFixed(6)} golden ${want.toFixed(6)} rel.err ${rel.toExponential(2)} ${ok ? "OK" : "FAIL"}; ` +
      `${r.tokens} tokens in ${r.windowNll.length} windows, forward ${(r.forwardTokens / r.forwardSeconds).toFixed(0)} tokens/s, wall ${wall.toFixed(2)} s`);
  } finally {
    await src.close();
  }
}
if (failed) {
  console.log("forward-ppl: FAIL");
  process.exit(1);
}
console.log("forward-ppl: all passed");
