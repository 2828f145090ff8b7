/**
 * The real engine loads what we write: llama.cpp v0.4.0 (prebuilt, through node-llama-cpp 3.21.1)
 * loads our GGUFs of the fixture and predicts the fixture's held-out text.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { getLlama, type Llama, type Token } from "node-llama-cpp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { readImatrix } from "../src/io/imatrix.js";
import { LocalSource } from "../src/io/source.js";
import { forward } from "../src/model/forward.js";
import { GgufWeightSource } from "../src/model/gguf-weights.js";
import { kernels } from "../src/quant/kernels.js";
import { FIXTURE, ROOT, tempDir } from "./helpers.js";

const TYPES = ["BF16", "Q8_0", "Q4_K_M", "Q2_K"] as const;
/** Quantized with llama-imatrix's importance matrix of the fixture, as the low-bit files people run are. */
const IQ_TYPES = ["IQ2_XXS", "IQ4_XS", "TQ2_0"] as const;
type Type = (typeof TYPES)[number] | (typeof IQ_TYPES)[number];
const WINDOW = 128;

let llama: Llama;
let ids: number[];
/** Each type's GGUF of the fixture, converted and measured once, by whichever test asks first: no test depends on another having run. */
const measured = new Map<string, Promise<{ ppl: number; maxSumError: number; path: string }>>();
function measure(type: Type): Promise<{ ppl: number; maxSumError: number; path: string }> {
  let m = measured.get(type);
  if (!m) {
    m = (async () => {
      const out = join(await tempDir(), `tiny-${type}.gguf`);
      const imatrix = (IQ_TYPES as readonly string[]).includes(type)
        ? { imatrix: await readImatrix(join(ROOT, "fixtures", "llama-cpp-tiny-dsv3", "tiny-dsv3.imatrix.gguf")) }
        : {};
      const plan = await planToGguf(new LocalSource(FIXTURE), out, { ftype: type, ...imatrix });
      await runToGguf(plan, { kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true });
      return { ...(await perplexity(out)), path: out };
    })();
    measured.set(type, m);
  }
  return m;
}

beforeAll(async () => {
  llama = await getLlama({ gpu: false, build: "never", skipDownload: true, logLevel: "error" as never });
  ids = (JSON.parse(await readFile(join(ROOT, "fixtures", "tiny-dsv3-golden", "eval", "kjv_eval.ids.json"), "utf8")) as { ids: number[] }).ids;
});

afterAll(async () => {
  await llama?.dispose();
});

/** Our reference forward pass over the same GGUF and window. */
async function ourPerplexity(modelPath: string): Promise<number> {
  const src = await GgufWeightSource.open(modelPath, { threads: 2 });
  try {
    const tokens = [0, ...ids.slice(0, WINDOW - 1)];
    const { logits, vocab } = await forward(src, [tokens], { threads: 2 });
    let nll = 0;
    for (let i = 0; i + 1 < tokens.length; i++) {
      const row = logits.subarray(i * vocab, (i + 1) * vocab);
      let max = -Infinity;
      for (const v of row) max = Math.max(max, v);
      let sum = 0;
      for (const v of row) sum += Math.exp(v - max);
      nll -= row[tokens[i + 1]!]! - max - Math.log(sum);
    }
    return Math.exp(nll / (tokens.length - 1));
  } finally {
    await src.close();
  }
}

async function perplexity(modelPath: string): Promise<{ ppl: number; maxSumError: number }> {
  const model = await llama.loadModel({ modelPath });
  try {
    const ctx = await model.createContext({ contextSize: 256, batchSize: WINDOW, threads: 2 });
    const seq = ctx.getSequence();
    // BOS + a window of held-out text; every position predicts the next token.
    const tokens = [0, ...ids.slice(0, WINDOW - 1)] as Token[];
    const out = await seq.controlledEvaluate(tokens.map((t) => [t, { generateNext: { probabilities: true } }]));
    let nll = 0;
    let maxSumError = 0;
    for (let i = 0; i + 1 < tokens.length; i++) {
      const probs = out[i]?.next?.probabilities;
      if (!probs) throw new Error(`no distribution at position ${i}`);
      let sum = 0;
      for (const p of probs.values()) sum += p;
      maxSumError = Math.max(maxSumError, Math.abs(sum - 1));
      nll -= Math.log(probs.get(tokens[i + 1]!) ?? 0);
    }
    await ctx.dispose();
    return { ppl: Math.exp(nll / (tokens.length - 1)), maxSumError };
  } finally {
    await model.dispose();
  }
}

describe("llama.cpp loads deepcast's GGUF of the fixture", () => {
  for (const type of TYPES) {
    it(`${type}: loads, gives normalized distributions and a perplexity far below uniform`, async () => {
      const r = await measure(type);
      expect(r.maxSumError).toBeLessThan(1e-3);
      // Uniform over the 2048-token vocabulary would be 2048; the fixture's eval perplexity is 42.85.
      expect(r.ppl).toBeLessThan(80);
    });
  }

  it("split output: llama.cpp loads a 3-file Q8_0 split from its first file, with the same predictions", async () => {
    const dir = await tempDir();
    const plan = await planToGguf(new LocalSource(FIXTURE), join(dir, "tiny-Q8_0.gguf"), { ftype: "Q8_0", split: { maxTensors: 30 } });
    expect(plan.layout.files.map((f) => f.path.slice(dir.length + 1))).toEqual([
      "tiny-Q8_0-00001-of-00003.gguf", "tiny-Q8_0-00002-of-00003.gguf", "tiny-Q8_0-00003-of-00003.gguf"]);
    await runToGguf(plan, { kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true });
    const r = await perplexity(plan.layout.files[0]!.path);
    expect(r.ppl).toBe((await measure("Q8_0")).ppl);
  });

  for (const type of IQ_TYPES) {
    it(`${type} (with llama-imatrix's imatrix): loads, predicts the held-out text, and our forward pass reads it to the same perplexity`, async () => {
      const r = await measure(type);
      expect(r.maxSumError).toBeLessThan(1e-3);
      expect(r.ppl).toBeLessThan(type === "IQ2_XXS" ? 120 : 80);
      const ours = await ourPerplexity(r.path);
      console.log(`${type}: llama.cpp PPL ${r.ppl.toFixed(4)}, our forward pass ${ours.toFixed(4)} (one 128-token window)`);
      expect(Math.abs(ours / r.ppl - 1)).toBeLessThan(0.02);
    });
  }

  it("quantization costs little perplexity at 8 bits and more at 2 bits", async () => {
    const ppl = new Map<string, number>();
    for (const t of TYPES) ppl.set(t, (await measure(t)).ppl);
    const bf16 = ppl.get("BF16")!;
    expect(Math.abs(ppl.get("Q8_0")! / bf16 - 1)).toBeLessThan(0.01);
    expect(ppl.get("Q4_K_M")! / bf16).toBeLessThan(1.1);
    expect(ppl.get("Q2_K")!).toBeGreaterThan(ppl.get("Q4_K_M")!);
    console.log("perplexity over one 128-token window:", Object.fromEntries(ppl));
  });
});
