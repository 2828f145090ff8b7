/**
 * Forward-pass throughput on the tiny-dsv3 FP8 fixture: the golden 4 x 128 batch and 8 eval
 * windows of 256, per thread count; median of several runs (weights are re-read and dequantized
 * on every run, as the layer-streaming forward does).
 *
 *   npx tsx bench/forward.ts [--runs 7] [--threads 1,2]
 */
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { forward } from "../src/model/forward.js";
import { forwardOps } from "../src/model/ops.js";
import { perplexityWindows } from "../src/model/perplexity.js";
import { HfWeightSource } from "../src/model/weights.js";
import { kernels } from "../src/quant/kernels.js";

const ROOT = resolve(import.meta.dirname, "..");
const GOLDEN = join(ROOT, "fixtures", "tiny-dsv3-golden");
const argv = process.argv;
const opt = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1]! : fallback);
const runs = Number(opt("--runs", "7"));
const threadList = opt("--threads", "1,2").split(",").map(Number);

const batch = (JSON.parse(readFileSync(join(GOLDEN, "logits", "tokens.json"), "utf8")) as { sequences: number[][] }).sequences;
const ids = (JSON.parse(readFileSync(join(GOLDEN, "eval", "kjv_eval.ids.json"), "utf8")) as { ids: number[] }).ids;
const windows = perplexityWindows(ids, 256, 0).slice(0, 8).map((w) => w.input);

console.log(`kernels ${forwardOps().backend}/${kernels().simd()}, ${runs} runs each, median`);
for (const threads of threadList) {
  const src = await HfWeightSource.open(join(ROOT, "fixtures", "tiny-dsv3"), { threads });
  for (const [label, seqs] of [["golden batch 4 x 128", batch], ["eval windows 8 x 256", windows]] as const) {
    const n = seqs.reduce((a, s) => a + s.length, 0);
    const times: number[] = [];
    for (let r = 0; r < runs + 1; r++) {
      const t0 = performance.now();
      await forward(src, seqs, { threads });
      if (r > 0) times.push((performance.now() - t0) / 1000);
    }
    times.sort((a, b) => a - b);
    const med = times[Math.floor(times.length / 2)]!;
    console.log(`threads ${threads}, ${label}: ${(n / med).toFixed(0)} tokens/s (median ${(med * 1000).toFixed(1)} ms, best ${(times[0]! * 1000).toFixed(1)} ms)`);
  }
  await src.close();
}
