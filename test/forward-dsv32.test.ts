/**
 * The forward pass on DeepSeek-V3.2 (fixtures/tiny-dsv32, index_topk 32): up to 32 tokens the
 * lightning indexer keeps every key, so the pass is V3's dense MLA bit for bit (the spec's oracle d);
 * past 32 it masks, and its scores are those of the formula recomputed here independently (a plain
 * loop: explicit Hadamard matrix, FP8 by nearest-code search, no code shared with indexer-v32.ts but
 * the RoPE tables). Our deepseek32 GGUF (BF16 holds the FP8 values exactly) gives the same logits as
 * the HF checkpoint, indexer included. test/engine-agreement-dsv32.test.ts compares with llama.cpp.
 */
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { LocalSource } from "../src/io/source.js";
import { ropeTables, type ModelConfig } from "../src/model/config.js";
import { forward, type ForwardOptions } from "../src/model/forward.js";
import { GgufWeightSource } from "../src/model/gguf-weights.js";
import type { SequenceSelection } from "../src/model/indexer-v32.js";
import { HfWeightSource, type WeightSource } from "../src/model/weights.js";
import { fp8E4m3ToF32 } from "../src/quant/floats.js";
import { kernels } from "../src/quant/kernels.js";
import { ROOT, tempDir } from "./helpers.js";

const V32 = join(ROOT, "fixtures", "tiny-dsv32");
const THREADS = 2;
/** Deterministic token ids inside the 2,048-token vocabulary. */
const tokens = (n: number, seed: number) => Array.from({ length: n }, (_, i) => (i * 37 + seed * 101 + 11) % 2048);

let hf: HfWeightSource;
let ggufPath: string;

beforeAll(async () => {
  hf = await HfWeightSource.open(V32, { threads: THREADS });
  const dir = await tempDir();
  ggufPath = join(dir, "tiny-dsv32-BF16.gguf");
  const plan = await planToGguf(new LocalSource(V32), ggufPath, { ftype: "BF16" });
  await runToGguf(plan, { kernels: kernels(), threads: THREADS, force: false, skipSpaceCheck: true });
  return () => hf.close();
});

/** The same weights with another config (the dense V3 path: no indexer). */
function withConfig(src: WeightSource, config: ModelConfig): WeightSource {
  return { description: src.description, config, has: (n) => src.has(n), shape: (n) => src.shape(n), read: (n, s, c) => src.read(n, s, c), close: async () => undefined };
}
function dense(src: WeightSource): WeightSource {
  const { indexer: _, ...c } = src.config;
  return withConfig(src, c);
}

const same = (a: Float32Array, b: Float32Array) => a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

describe("DeepSeek-V3.2 forward pass", () => {
  it("reads the indexer's hyper-parameters from config.json and from the deepseek32 GGUF's KVs", async () => {
    expect(hf.config.indexer).toEqual({ nHeads: 4, headDim: 128, topk: 32 });
    expect(hf.config.nLayers).toBe(4);
    const g = await GgufWeightSource.open(ggufPath);
    try {
      expect(g.config).toEqual(hf.config);
      expect(g.arch).toBe("deepseek32");
      expect(g.shape("model.layers.2.self_attn.indexer.wq_b.weight")).toEqual([512, 128]);
      expect(g.shape("model.layers.2.self_attn.indexer.k_norm.bias")).toEqual([128]);
      expect(await g.read("model.layers.1.self_attn.indexer.wk.weight")).toEqual(await hf.read("model.layers.1.self_attn.indexer.wk.weight"));
      expect(await g.read("model.layers.3.self_attn.indexer.weights_proj.weight")).toEqual(await hf.read("model.layers.3.self_attn.indexer.weights_proj.weight"));
    } finally {
      await g.close();
    }
  });

  it("up to index_topk tokens every key is selected: logits bit-identical to the dense V3 path on the same weights", async () => {
    const seqs = [tokens(32, 1), tokens(17, 2), tokens(1, 3)];
    const seen: number[] = [];
    const r = await forward(hf, seqs, { threads: THREADS, v32: { onIndexer: (l, s) => {
      seen.push(l);
      expect(s.map((x) => x.mask)).toEqual([null, null, null]);
    } } });
    const d = await forward(dense(hf), seqs, { threads: THREADS });
    expect(seen).toEqual([0, 1, 2, 3]);
    expect(same(r.logits, d.logits)).toBe(true);
  });

  it("past index_topk the indexer masks: each query keeps min(32, visible) keys, earlier rows stay dense, later ones differ from dense", async () => {
    const seqs = [tokens(80, 4), tokens(20, 5)];
    const sel = new Map<number, readonly SequenceSelection[]>();
    const r = await forward(hf, seqs, { threads: THREADS, v32: { onIndexer: (l, s) => sel.set(l, s) } });
    const d = await forward(dense(hf), seqs, { threads: THREADS });
    for (const [, s] of sel) {
      expect(s[1]!.mask).toBeNull();
      const m = s[0]!.mask!;
      for (let i = 0; i < 80; i++) {
        let kept = 0;
        for (let t = 0; t < 80; t++) {
          if (m[i * 80 + t]) {
            expect(t).toBeLessThanOrEqual(i);
            kept++;
          }
        }
        expect(kept).toBe(Math.min(32, i + 1));
      }
    }
    const V = r.vocab;
    // positions 0..31 of the long sequence and the whole short one: dense, bit for bit
    expect(same(r.logits.subarray(0, 32 * V), d.logits.subarray(0, 32 * V))).toBe(true);
    expect(same(r.logits.subarray(80 * V), d.logits.subarray(80 * V))).toBe(true);
    // past 32 the mask changes the prediction
    let maxDiff = 0;
    for (let i = 32 * V; i < 80 * V; i++) maxDiff = Math.max(maxDiff, Math.abs(r.logits[i]! - d.logits[i]!));
    expect(maxDiff).toBeGreaterThan(0.5);
  });

  it("layer 0's scores and top-32 are the formula's, recomputed independently for a few queries", async () => {
    const seq = tokens(72, 6);
    let s0: SequenceSelection | undefined;
    await forward(hf, [seq], { threads: THREADS, v32: { onIndexer: (l, s) => { if (l === 0) s0 = s[0]; } } });
    const cfg = hf.config;
    const ix = cfg.indexer!;
    const dim = cfg.dim;
    const D = ix.headDim;
    const Hi = ix.nHeads;
    const dr = cfg.qkRopeHeadDim;
    const n = seq.length;
    const read = (name: string) => hf.read(name);
    const emb = await read("model.embed_tokens.weight");
    const lin = (x: Float64Array, w: Float32Array, inDim: number) => {
      const out = new Float64Array(w.length / inDim);
      for (let o = 0; o < out.length; o++) {
        let s = 0;
        for (let i = 0; i < inDim; i++) s += x[i]! * w[o * inDim + i]!;
        out[o] = s;
      }
      return out;
    };
    const rms = (x: Float64Array, w: Float32Array) => {
      const ms = x.reduce((a, v) => a + v * v, 0) / x.length;
      return x.map((v, i) => (v / Math.sqrt(ms + cfg.rmsNormEps)) * w[i]!);
    };
    const [inNorm, wqa, qaNorm, wqb, wk, kw, kb, wp] = await Promise.all([
      read("model.layers.0.input_layernorm.weight"), read("model.layers.0.self_attn.q_a_proj.weight"), read("model.layers.0.self_attn.q_a_layernorm.weight"),
      read("model.layers.0.self_attn.indexer.wq_b.weight"), read("model.layers.0.self_attn.indexer.wk.weight"),
      read("model.layers.0.self_attn.indexer.k_norm.weight"), read("model.layers.0.self_attn.indexer.k_norm.bias"), read("model.layers.0.self_attn.indexer.weights_proj.weight"),
    ]);
    const tab = ropeTables(cfg, n);
    const half = dr / 2;
    const neox = (v: Float64Array, p: number) => {
      for (let j = 0; j < half; j++) {
        const c = tab.cos[p * half + j]!;
        const s = tab.sin[p * half + j]!;
        const a = v[j]!;
        const b = v[j + half]!;
        v[j] = a * c - b * s;
        v[j + half] = a * s + b * c;
      }
    };
    const popcount = (x: number) => x.toString(2).split("").filter((c) => c === "1").length;
    const had = (v: Float64Array) => Float64Array.from({ length: D }, (_, i) => {
      let s = 0;
      for (let j = 0; j < D; j++) s += (popcount(i & j) % 2 ? -1 : 1) * v[j]!;
      return s / Math.sqrt(D);
    });
    const codes = Array.from({ length: 127 }, (_, c) => fp8E4m3ToF32(c));
    const e4m3 = (v: number) => {
      let best = 0;
      for (let c = 1; c < 127; c++) if (Math.abs(codes[c]! - Math.abs(v)) < Math.abs(codes[best]! - Math.abs(v))) best = c;
      return Math.sign(v) * codes[best]!;
    };
    const quant = (v: Float64Array) => {
      const amax = Math.max(1e-4, ...v.map(Math.abs));
      const s = 2 ** Math.ceil(Math.log2(amax / 448));
      return { q: v.map((x) => e4m3(x / s)), s };
    };
    // per token: x (normed embedding), k codes and scale; per query: q codes, weights
    const xs = seq.map((t) => rms(Float64Array.from(emb.subarray(t * dim, (t + 1) * dim)), inNorm));
    const keys = xs.map((x, p) => {
      const k = lin(x, wk, dim);
      const mean = k.reduce((a, v) => a + v, 0) / D;
      const vr = k.reduce((a, v) => a + (v - mean) ** 2, 0) / D;
      const kn = k.map((v, i) => ((v - mean) / Math.sqrt(vr + 1e-6)) * kw[i]! + kb[i]!);
      neox(kn, p);
      return quant(had(kn));
    });
    for (const i of [32, 47, 71]) {
      const qr = rms(lin(xs[i]!, wqa, dim), qaNorm);
      const q = lin(qr, wqb, cfg.qLoraRank);
      const w = lin(xs[i]!, wp, dim);
      const heads = Array.from({ length: Hi }, (_, h) => {
        const v = q.slice(h * D, (h + 1) * D);
        neox(v, i);
        return quant(had(v));
      });
      const score = new Float64Array(i + 1);
      for (let t = 0; t <= i; t++) {
        let acc = 0;
        for (let h = 0; h < Hi; h++) {
          let dot = 0;
          for (let c = 0; c < D; c++) dot += heads[h]!.q[c]! * keys[t]!.q[c]!;
          acc += Math.max(0, dot) * w[h]! * Hi ** -0.5 * heads[h]!.s * D ** -0.5;
        }
        score[t] = acc * keys[t]!.s;
      }
      const got = s0!.scores!.subarray(i * n, i * n + i + 1);
      const scale = Math.max(...score.map(Math.abs));
      for (let t = 0; t <= i; t++) expect(Math.abs(got[t]! - score[t]!), `query ${i} key ${t}`).toBeLessThan(1e-4 * scale);
      const order = [...score.keys()].sort((a, b) => score[b]! - score[a]! || a - b);
      const want = new Set(order.slice(0, 32));
      // a tie within the tolerance would make the set ambiguous: the fixture has none at these queries
      expect(score[order[31]!]! - score[order[32]!]!).toBeGreaterThan(1e-3 * scale);
      const kept = [...Array(i + 1).keys()].filter((t) => s0!.mask![i * n + t]);
      expect(new Set(kept)).toEqual(want);
    }
  });

  it("our deepseek32 GGUF (BF16, exact for FP8 values) gives the HF checkpoint's logits bit for bit, indexer included", async () => {
    const seqs = [tokens(70, 7), tokens(40, 8)];
    const g = await GgufWeightSource.open(ggufPath, { threads: THREADS });
    try {
      const opts: ForwardOptions = { threads: THREADS };
      const a = await forward(hf, seqs, opts);
      const b = await forward(g, seqs, opts);
      expect(same(a.logits, b.logits)).toBe(true);
    } finally {
      await g.close();
    }
  });
});
