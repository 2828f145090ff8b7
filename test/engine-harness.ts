/**
 * The engine-agreement harness the tests share: llama.cpp's next-token distributions at every
 * position of some token windows (node-llama-cpp, CPU), and their agreement with our forward pass
 * per position: KL(P_llama || P_ours) (natural log) and the top-1 token.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { getLlama, type Llama, type Token } from "node-llama-cpp";
import { expect } from "vitest";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { LocalSource } from "../src/io/source.js";
import type { ForwardResult } from "../src/model/forward.js";
import { kernels } from "../src/quant/kernels.js";
import { ROOT } from "./helpers.js";

export interface Agreement {
  kld: number[];
  mean: number;
  median: number;
  max: number;
  top1: number;
}

export const quantile = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]!;

/** Per position KL(P || softmax(logits)) and top-1 agreement; P[i] is a probability per token id. */
export function agreement(P: Float64Array[], r: ForwardResult): Agreement {
  const V = r.vocab;
  const kld: number[] = [];
  let same = 0;
  for (let i = 0; i < P.length; i++) {
    const row = r.logits.subarray(i * V, (i + 1) * V);
    const p = P[i]!;
    let mx = -Infinity;
    let ours = 0;
    for (let v = 0; v < V; v++) {
      if (row[v]! > mx) {
        mx = row[v]!;
        ours = v;
      }
    }
    let z = 0;
    for (let v = 0; v < V; v++) z += Math.exp(row[v]! - mx);
    const logZ = mx + Math.log(z);
    let kl = 0;
    let theirs = 0;
    for (let v = 0; v < V; v++) {
      if (p[v]! > p[theirs]!) theirs = v;
      if (p[v]! > 0) kl += p[v]! * (Math.log(p[v]!) - (row[v]! - logZ));
    }
    kld.push(kl);
    if (ours === theirs) same++;
  }
  return { kld, mean: kld.reduce((a, b) => a + b, 0) / kld.length, median: quantile(kld, 0.5), max: Math.max(...kld), top1: same / P.length };
}

/** The softmax of every row of our logits, as P for agreement(). */
export function distributions(r: ForwardResult): Float64Array[] {
  const V = r.vocab;
  const P: Float64Array[] = [];
  for (let i = 0; i < r.logits.length / V; i++) {
    const row = r.logits.subarray(i * V, (i + 1) * V);
    let mx = -Infinity;
    for (const x of row) mx = Math.max(mx, x);
    const p = new Float64Array(V);
    let z = 0;
    for (let v = 0; v < V; v++) z += (p[v] = Math.exp(row[v]! - mx));
    for (let v = 0; v < V; v++) p[v] = p[v]! / z;
    P.push(p);
  }
  return P;
}

/** KL(softmax(a) || softmax(b)) per position, for two of our own passes. */
export function selfAgreement(a: ForwardResult, b: ForwardResult): Agreement {
  return agreement(distributions(a), b);
}

export const fmt = (a: Agreement) =>
  `mean ${a.mean.toExponential(2)}, median ${a.median.toExponential(2)}, p90 ${quantile(a.kld, 0.9).toExponential(2)}, ` +
  `max ${a.max.toExponential(2)}, top-1 ${(a.top1 * 100).toFixed(1)}%`;

/** llama.cpp's next-token distribution at every position of every window (arrays by token id), one window at a time. */
export async function engineDistributions(llama: Llama, path: string, windows: readonly number[][], opts: { flashAttention: boolean; threads: number }): Promise<Float64Array[]> {
  const model = await llama.loadModel({ modelPath: path });
  try {
    const longest = Math.max(...windows.map((w) => w.length));
    // contextSize above the window: node-llama-cpp keeps one cell free (it pads to 256 anyway)
    const ctx = await model.createContext({ contextSize: 2 * longest, batchSize: longest, threads: opts.threads, sequences: 1, flashAttention: opts.flashAttention });
    const seq = ctx.getSequence();
    const out: Float64Array[] = [];
    for (const w of windows) {
      await seq.clearHistory();
      const res = await seq.controlledEvaluate(w.map((t) => [t as Token, { generateNext: { probabilities: true } }]));
      for (let i = 0; i < w.length; i++) {
        const probs = res[i]?.next?.probabilities;
        if (!probs) throw new Error(`no distribution at position ${i}`);
        const p = new Float64Array(probs.size);
        for (const [t, v] of probs) p[t] = v;
        out.push(p);
      }
    }
    await ctx.dispose();
    return out;
  } finally {
    await model.dispose();
  }
}

/** `count` windows of `length` tokens: BOS then consecutive slices of the fixture's held-out eval text. */
export async function evalWindows(length: number, count: number, bos = 0): Promise<number[][]> {
  const ids = (JSON.parse(await readFile(join(ROOT, "fixtures", "tiny-dsv3-golden", "eval", "kjv_eval.ids.json"), "utf8")) as { ids: number[] }).ids;
  return Array.from({ length: count }, (_, w) => [bos, ...ids.slice(w * (length - 1), (w + 1) * (length - 1))]);
}

/** Converts the checkpoint folder `from` with our to-gguf to each type, as dir/<name>-<type>.gguf. */
export async function convertTo<T extends string>(from: string, types: readonly T[], dir: string, name: string, threads: number): Promise<Map<T, string>> {
  const out = new Map<T, string>();
  for (const type of types) {
    const file = join(dir, `${name}-${type}.gguf`);
    const plan = await planToGguf(new LocalSource(from), file, { ftype: type });
    await runToGguf(plan, { kernels: kernels(), threads, force: false, skipSpaceCheck: true });
    out.set(type, file);
  }
  return out;
}

/**
 * What the agreement tests' beforeAll sets up: the bundled llama.cpp on the CPU, `count` windows of
 * `length` tokens (BOS `bos` first) and our conversions of `checkpoint` to `types` in a temporary folder.
 */
export async function openEngines<T extends string>(checkpoint: string, types: readonly T[], name: string,
                                                    opts: { length: number; count: number; threads: number; bos?: number; dir: string }): Promise<{ llama: Llama; windows: number[][]; files: Map<T, string> }> {
  const llama = await getLlama({ gpu: false, build: "never", skipDownload: true, logLevel: "error" as never });
  const windows = await evalWindows(opts.length, opts.count, opts.bos);
  return { llama, windows, files: await convertTo(checkpoint, types, opts.dir, name, opts.threads) };
}

/** The agreement tests' afterAll: llama.cpp disposed, and the figures collected printed under `title`. */
export async function closeEngines(llama: Llama | undefined, results: readonly string[], title: string): Promise<void> {
  await llama?.dispose();
  if (results.length) console.log(`${title}:\n${results.join("\n")}`);
}

/** The few tokens the load tests evaluate (BOS first). */
export const PROBE_TOKENS = [0, 17, 300, 1999, 5, 64, 128, 1000] as const;

/** llama.cpp's next-token probabilities after each token of `tokens` in the GGUF `file` (model and context disposed after). */
/**
 * The load tests' checks on probeProbabilities: every distribution finite and summing to 1; `lengths`:
 * one per probe token, each over `vocab` ids; `peaked`: far from uniform (the fixtures' weights predict).
 */
export function expectProbeDistributions(probs: number[][], label: string, vocab: number, opts: { lengths?: boolean; peaked?: boolean } = {}): void {
  const { lengths = true, peaked = false } = opts;
  if (lengths) expect(probs, label).toHaveLength(PROBE_TOKENS.length);
  for (const p of probs) {
    if (lengths) expect(p.length, label).toBe(vocab);
    expect(p.every(Number.isFinite), label).toBe(true);
    expect(Math.abs(p.reduce((a, b) => a + b, 0) - 1), label).toBeLessThan(1e-3);
    if (peaked) expect(Math.max(...p), label).toBeGreaterThan(10 / vocab);
  }
}

export async function probeProbabilities(llama: Llama, file: string, tokens: readonly number[] = PROBE_TOKENS): Promise<number[][]> {
  const model = await llama.loadModel({ modelPath: file });
  try {
    const ctx = await model.createContext({ contextSize: 256, batchSize: 64, threads: 2, sequences: 1 });
    try {
      const res = await ctx.getSequence().controlledEvaluate(tokens.map((t) => [t as Token, { generateNext: { probabilities: true } }]));
      return res.map((r) => [...r!.next!.probabilities!.values()]);
    } finally {
      await ctx.dispose();
    }
  } finally {
    await model.dispose();
  }
}
