/**
 * Prefill throughput of our reference forward pass against llama.cpp (v0.4.0 prebuilt, through
 * node-llama-cpp 3.21.1) on the same GGUFs of the tiny-dsv3 fixture, at the same thread counts, in
 * one run: tokens/s over the same eval windows, best of --repeat.
 *
 *   npx tsx bench/engine-forward.ts [--threads 1,2] [--repeat 5] [--windows 8] [--window 256]
 *                                   [--types BF16,Q8_0,Q4_K_M] [--flash-attention on|off] [--dir DIR]
 *
 * Contestants per thread count (each timed as wall clock around the evaluation only: model load,
 * context creation and GgufWeightSource.open are outside; one warm-up run first):
 *
 *  - llama.cpp prefill: per window `clearHistory()` + `evaluateWithoutGeneratingNewTokens(window)`
 *    (one ubatch of the whole window, no sampling, logits of the last position only);
 *  - llama.cpp all logits: `controlledEvaluate` with `generateNext: { token: true }` at every
 *    position (logits for every position, as our pass produces, plus a greedy pick per position,
 *    no probability maps);
 *  - deepcast forward on the same GGUF: all windows in one `forward()` call (the layer-streaming
 *    pass reads and dequantizes each layer's weights once per call, so batching amortizes that),
 *    and one call per window (the same work split the way llama.cpp runs it);
 *  - deepcast forward on the HF FP8 folder (fixtures/tiny-dsv3), all windows in one call.
 *
 * GGUFs are made in-process with planToGguf/runToGguf (no CLI, no build of dist needed) into a
 * temporary folder unless --dir names one.
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { availableParallelism, cpus, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { getLlama, type LlamaModel, type Token } from "node-llama-cpp";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { LocalSource } from "../src/io/source.js";
import { forward } from "../src/model/forward.js";
import { GgufWeightSource } from "../src/model/gguf-weights.js";
import { forwardOps } from "../src/model/ops.js";
import { perplexityWindows } from "../src/model/perplexity.js";
import { HfWeightSource, type WeightSource } from "../src/model/weights.js";
import { kernels } from "../src/quant/kernels.js";

const ROOT = resolve(import.meta.dirname, "..");
const FIXTURE = join(ROOT, "fixtures", "tiny-dsv3");
const argv = process.argv.slice(2);
const opt = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1]! : fallback);
const threadList = opt("--threads", "1,2").split(",").map(Number);
const repeat = Number(opt("--repeat", "5"));
const nWindows = Number(opt("--windows", "8"));
const windowLen = Number(opt("--window", "256"));
const types = opt("--types", "BF16,Q8_0,Q4_K_M").split(",");
const flashAttention = opt("--flash-attention", "on") !== "off";
const dirArg = argv.includes("--dir") ? opt("--dir", "") : null;

const ids = (JSON.parse(await readFile(join(ROOT, "fixtures", "tiny-dsv3-golden", "eval", "kjv_eval.ids.json"), "utf8")) as { ids: number[] }).ids;
const windows = perplexityWindows(ids, windowLen, 0).slice(0, nWindows).map((w) => w.input);
if (windows.length < nWindows || windows.some((w) => w.length !== windowLen)) throw new Error(`the eval text has fewer than ${nWindows} full windows of ${windowLen}`);
const tokens = windows.reduce((a, w) => a + w.length, 0);

/** Best wall time in seconds of `repeat` runs after one warm-up. */
async function best(run: () => Promise<unknown>): Promise<number> {
  await run();
  let b = Infinity;
  for (let r = 0; r < repeat; r++) {
    const t0 = performance.now();
    await run();
    b = Math.min(b, (performance.now() - t0) / 1000);
  }
  return b;
}

interface Row {
  threads: number;
  weights: string;
  engine: string;
  mode: string;
  seconds: number;
  /** llama.cpp prefill seconds on the same weights and threads, for the ratio. */
  peer?: number;
}
const rows: Row[] = [];

const dir = dirArg ?? (await mkdtemp(join(tmpdir(), "deepcast-bench-engine-")));
const gguf = new Map<string, string>();
for (const type of types) {
  const out = join(dir, `tiny-dsv3-${type}.gguf`);
  const plan = await planToGguf(new LocalSource(FIXTURE), out, { ftype: type as never });
  await runToGguf(plan, { kernels: kernels(), threads: Math.min(2, availableParallelism()), force: true, skipSpaceCheck: true });
  gguf.set(type, out);
}

const llama = await getLlama({ gpu: false, build: "never", skipDownload: true, logLevel: "error" as never });

async function llamaTimes(model: LlamaModel, threads: number): Promise<{ prefill: number; allLogits: number }> {
  const ctx = await model.createContext({ contextSize: 2 * windowLen, batchSize: windowLen, threads, sequences: 1, flashAttention });
  try {
    const seq = ctx.getSequence();
    const prefill = await best(async () => {
      for (const w of windows) {
        await seq.clearHistory();
        await seq.evaluateWithoutGeneratingNewTokens(w as Token[]);
      }
    });
    const allLogits = await best(async () => {
      for (const w of windows) {
        await seq.clearHistory();
        const out = await seq.controlledEvaluate(w.map((t) => [t as Token, { generateNext: { token: true } }]));
        if (out[w.length - 1]?.next?.token === undefined) throw new Error("llama.cpp returned no token for the last position");
      }
    });
    return { prefill, allLogits };
  } finally {
    await ctx.dispose();
  }
}

async function oursTimes(src: WeightSource, threads: number): Promise<{ batched: number; perWindow: number }> {
  const batched = await best(() => forward(src, windows, { threads }));
  const perWindow = await best(async () => {
    for (const w of windows) await forward(src, [w], { threads });
  });
  return { batched, perWindow };
}

const t0 = performance.now();
for (const threads of threadList) {
  for (const type of types) {
    const path = gguf.get(type)!;
    const model = await llama.loadModel({ modelPath: path });
    let l: { prefill: number; allLogits: number };
    try {
      l = await llamaTimes(model, threads);
    } finally {
      await model.dispose();
    }
    const src = await GgufWeightSource.open(path, { threads });
    let o: { batched: number; perWindow: number };
    try {
      o = await oursTimes(src, threads);
    } finally {
      await src.close();
    }
    const w = `GGUF ${type}`;
    rows.push({ threads, weights: w, engine: "llama.cpp", mode: "prefill (last logits)", seconds: l.prefill, peer: l.prefill });
    rows.push({ threads, weights: w, engine: "llama.cpp", mode: "all-position logits", seconds: l.allLogits, peer: l.prefill });
    rows.push({ threads, weights: w, engine: "deepcast forward", mode: `all windows in one call`, seconds: o.batched, peer: l.prefill });
    rows.push({ threads, weights: w, engine: "deepcast forward", mode: "one call per window", seconds: o.perWindow, peer: l.prefill });
  }
  const hf = await HfWeightSource.open(FIXTURE, { threads });
  try {
    const o = await oursTimes(hf, threads);
    rows.push({ threads, weights: "HF FP8 folder", engine: "deepcast forward", mode: "all windows in one call", seconds: o.batched });
    rows.push({ threads, weights: "HF FP8 folder", engine: "deepcast forward", mode: "one call per window", seconds: o.perWindow });
  } finally {
    await hf.close();
  }
}
await llama.dispose();
if (!dirArg) await rm(dir, { recursive: true, force: true });

const cpu = cpus()[0]?.model ?? "unknown CPU";
console.log(`${nWindows} windows x ${windowLen} tokens (${tokens} tokens), tiny-dsv3 fixture; best of ${repeat} after a warm-up; ` +
  `llama.cpp flash attention ${flashAttention ? "on" : "off"}; deepcast kernels ${forwardOps().backend}/${kernels().simd()}; ` +
  `${cpu}, ${availableParallelism()} CPUs; total ${((performance.now() - t0) / 1000).toFixed(0)} s\n`);
console.log("| threads | weights | engine | mode | best s | tokens/s | llama.cpp prefill s / this s |");
console.log("|---|---|---|---|---|---|---|");
for (const r of rows) {
  const ratio = r.peer === undefined ? "-" : (r.peer / r.seconds).toFixed(2);
  console.log(`| ${r.threads} | ${r.weights} | ${r.engine} | ${r.mode} | ${r.seconds.toFixed(3)} | ${(tokens / r.seconds).toFixed(0)} | ${ratio} |`);
}
