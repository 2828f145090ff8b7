/**
 * The DeepSeek-V4 reference forward pass (src/model/forward-v4.ts and src/model/v4/) on
 * fixtures/tiny-dsv4. No PyTorch here, so the checks are independent re-computations and oracles:
 *  (a) each piece against a plain re-computation written from model.py's formulas in this file;
 *      the sliding window as a receptive field (a token outside every window changes nothing);
 *  (b) spec §5 (e): with ctx < 4 (index_topk + 1) the indexer is irrelevant (bit for bit the same
 *      logits as "select every visible entry"), above that it changes them;
 *  (c) deliberate errors change the logits; (d) QAT on vs off differ, less than a real error;
 *  (e) `deepcast validate` and `deepcast imatrix` run end to end on the V4 folder.
 */
import { spawnSync } from "node:child_process";
import { cp, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { parseImatrix } from "../src/io/imatrix.js";
import { forward, type ForwardOptions } from "../src/model/forward.js";
import { forwardBytesPerToken, forwardWeightBytes } from "../src/model/forward-memory.js";
import { forwardTensorNamesV4 } from "../src/model/forward-v4.js";
import { sinkAttention } from "../src/model/v4/attention.js";
import { compress } from "../src/model/v4/compressor.js";
import { hcSplitSinkhorn } from "../src/model/v4/hc.js";
import { sqrtSoftplus, routeV4 } from "../src/model/v4/moe.js";
import { fp4ActQuant, fp8ActQuant, hadamard, roundE2m1, roundE4m3 } from "../src/model/v4/qat.js";
import { tsOps } from "../src/model/ops.js";
import type { V4Params } from "../src/io/hf-config-v4.js";
import { HfWeightSource, type WeightSource } from "../src/model/weights.js";
import { ROOT, tempDir } from "./helpers.js";

const V4 = join(ROOT, "fixtures", "tiny-dsv4");
const BIN = join(ROOT, "bin", "deepcast.js");

/** A seeded generator (mulberry32) of uniform [0, 1) and roughly normal values. */
function rng(seed: number) {
  let a = seed >>> 0;
  const u = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { u, n: () => u() + u() + u() + u() - 2 };
}
const randn = (n: number, seed: number, s = 1) => { const r = rng(seed); return Float32Array.from({ length: n }, () => r.n() * s); };

/** The source with some V4 hyper-parameters replaced (a deliberate error or a test setting). */
function withV4(src: WeightSource, over: Partial<V4Params>): WeightSource {
  const config = { ...src.config, v4: { ...src.config.v4!, ...over } };
  return new Proxy(src, { get: (t, k) => (k === "config" ? config : typeof Reflect.get(t, k) === "function" ? Reflect.get(t, k).bind(t) : Reflect.get(t, k)) });
}

/** Mean KL(p_a || p_b) per row and the share of rows with the same top-1. */
function compare(a: Float32Array, b: Float32Array, V: number): { kld: number; top1: number } {
  let kld = 0;
  let same = 0;
  const rows = a.length / V;
  for (let i = 0; i < rows; i++) {
    const x = a.subarray(i * V, (i + 1) * V);
    const y = b.subarray(i * V, (i + 1) * V);
    const lse = (z: Float32Array) => { let m = -Infinity; for (const v of z) m = Math.max(m, v); let s = 0; for (const v of z) s += Math.exp(v - m); return m + Math.log(s); };
    const lx = lse(x);
    const ly = lse(y);
    let k = 0;
    let ax = 0;
    let ay = 0;
    for (let j = 0; j < V; j++) {
      k += Math.exp(x[j]! - lx) * (x[j]! - lx - (y[j]! - ly));
      if (x[j]! > x[ax]!) ax = j;
      if (y[j]! > y[ay]!) ay = j;
    }
    kld += k;
    if (ax === ay) same++;
  }
  return { kld: kld / rows, top1: same / rows };
}

const text = (n: number, seed: number) => { const r = rng(seed); return Array.from({ length: n }, () => Math.floor(r.u() * 2048)); };
const same = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

describe("(a) the pieces against plain re-computations of model.py's formulas", () => {
  it("Sinkhorn split: pre, post and comb as written out; comb rows and columns sum to ~1", () => {
    const hc = 4;
    const mix = (2 + hc) * hc;
    const rows = 5;
    const m = randn(rows * mix, 1, 2);
    const scale = Float32Array.of(0.7, 1.3, 2.1);
    const base = randn(mix, 2);
    const eps = 1e-6;
    const got = hcSplitSinkhorn(m, rows, scale, base, hc, 20, eps);
    const sig = (z: number) => 1 / (1 + Math.exp(-z));
    for (let t = 0; t < rows; t++) {
      const mt = (i: number) => m[t * mix + i]!;
      for (let j = 0; j < hc; j++) {
        expect(got.pre[t * hc + j]).toBeCloseTo(sig(mt(j) * scale[0]! + base[j]!) + eps, 6);
        expect(got.post[t * hc + j]).toBeCloseTo(2 * sig(mt(hc + j) * scale[1]! + base[hc + j]!), 6);
      }
      // softmax over k, + eps, then column normalization, then 19 (row, column) rounds
      const c = Array.from({ length: hc }, (_, j) => Array.from({ length: hc }, (_, k) => mt(2 * hc + j * hc + k) * scale[2]! + base[2 * hc + j * hc + k]!));
      for (const row of c) {
        const mx = Math.max(...row);
        const e = row.map((z) => Math.exp(z - mx));
        const s = e.reduce((x, y) => x + y);
        e.forEach((z, k) => { row[k] = z / s + eps; });
      }
      const cols = () => { for (let k = 0; k < hc; k++) { const s = c.reduce((x, r) => x + r[k]!, 0) + eps; for (const r of c) r[k] = r[k]! / s; } };
      cols();
      for (let it = 1; it < 20; it++) {
        for (const r of c) { const s = r.reduce((x, y) => x + y) + eps; r.forEach((z, k) => { r[k] = z / s; }); }
        cols();
      }
      for (let j = 0; j < hc; j++) for (let k = 0; k < hc; k++) expect(got.comb[(t * hc + j) * hc + k]).toBeCloseTo(c[j]![k]!, 5);
      for (let j = 0; j < hc; j++) {
        let rs = 0;
        let cs = 0;
        for (let k = 0; k < hc; k++) { rs += got.comb[(t * hc + j) * hc + k]!; cs += got.comb[(t * hc + k) * hc + j]!; }
        expect(Math.abs(rs - 1)).toBeLessThan(1e-2);
        expect(Math.abs(cs - 1)).toBeLessThan(1e-5);
      }
    }
    // One iteration leaves the rows unbalanced: the iterations do something.
    const one = hcSplitSinkhorn(m, rows, scale, base, hc, 1, eps);
    let worst = 0;
    for (let j = 0; j < rows * hc; j++) worst = Math.max(worst, Math.abs(one.comb.subarray(j * hc, (j + 1) * hc).reduce((x, y) => x + y) - 1));
    expect(worst).toBeGreaterThan(1e-2);
  });

  for (const ratio of [4, 128]) {
    it(`compressor, ratio ${ratio}: gated softmax per channel over ${ratio === 4 ? "the previous and current block (overlap)" : "the block"}, then norm and RoPE at i*ratio`, () => {
      const d = 8;
      const rd = 4;
      const coff = ratio === 4 ? 2 : 1;
      const n = 2 * ratio + 3;
      const W = coff * d;
      const kv = randn((n + 2) * W, 3);
      const score = randn((n + 2) * W, 4, 1.5);
      const ape = randn(ratio * W, 5, 0.5);
      const norm = randn(d, 6, 0.1).map((x) => 1 + x);
      const maxPos = n;
      const cos = new Float32Array(maxPos * rd / 2);
      const sin = new Float32Array(maxPos * rd / 2);
      for (let p = 0; p < maxPos; p++) for (let i = 0; i < rd / 2; i++) { cos[p * rd / 2 + i] = Math.cos(p * 0.3 ** i); sin[p * rd / 2 + i] = Math.sin(p * 0.3 ** i); }
      const row0 = 2;
      const got = compress({ kv, score, row0, n, ratio, d, ape, norm, eps: 1e-6, ropeDim: rd, rope: { cos, sin }, qat: null });
      expect(got.length).toBe(2 * d);
      for (let i = 0; i < 2; i++) {
        const e = new Array<number>(d);
        for (let c = 0; c < d; c++) {
          const cand: [number, number][] = [];
          if (ratio === 4) {
            for (let p = 0; p < ratio; p++) {
              const r = row0 + (i - 1) * ratio + p;
              cand.push(i === 0 ? [-Infinity, 0] : [score[r * W + c]! + ape[p * W + c]!, kv[r * W + c]!]);
            }
          }
          const off = ratio === 4 ? d : 0;
          for (let p = 0; p < ratio; p++) {
            const r = row0 + i * ratio + p;
            cand.push([score[r * W + off + c]! + ape[p * W + off + c]!, kv[r * W + off + c]!]);
          }
          const mx = Math.max(...cand.map((x) => x[0]));
          const z = cand.reduce((s, x) => s + Math.exp(x[0] - mx), 0);
          e[c] = cand.reduce((s, x) => s + (Math.exp(x[0] - mx) / z) * x[1], 0);
        }
        const rms = Math.sqrt(e.reduce((s, x) => s + x * x, 0) / d + 1e-6);
        const y = e.map((x, c) => (x / rms) * norm[c]!);
        const pos = i * ratio;
        for (let j = 0; j < rd / 2; j++) {
          const a = y[d - rd + 2 * j]!;
          const b = y[d - rd + 2 * j + 1]!;
          const co = cos[pos * rd / 2 + j]!;
          const si = sin[pos * rd / 2 + j]!;
          y[d - rd + 2 * j] = a * co - b * si;
          y[d - rd + 2 * j + 1] = a * si + b * co;
        }
        for (let c = 0; c < d; c++) expect(got[i * d + c]).toBeCloseTo(y[c]!, 5);
      }
    });
  }

  it("attention of one query: softmax over the selected keys (K = V) with the head's sink in the denominator", () => {
    const H = 3;
    const d = 16;
    const K = 7;
    const q = randn(H * d, 7);
    const keys = randn(K * d, 8);
    const sink = Float32Array.of(-1, 0.5, 3);
    const out = new Float32Array(H * d);
    sinkAttention({ ops: tsOps, threads: 1 }, q, H, d, keys, K, sink, d ** -0.5, out);
    for (let h = 0; h < H; h++) {
      const s = Array.from({ length: K }, (_, k) => { let x = 0; for (let c = 0; c < d; c++) x += q[h * d + c]! * keys[k * d + c]!; return x * d ** -0.5; });
      const m = Math.max(...s);
      const z = s.reduce((a, x) => a + Math.exp(x - m), 0) + Math.exp(sink[h]! - m);
      for (let c = 0; c < d; c++) {
        const want = s.reduce((a, x, k) => a + (Math.exp(x - m) / z) * keys[k * d + c]!, 0);
        expect(out[h * d + c]).toBeCloseTo(want, 5);
      }
    }
  });

  it("router: sqrt(softplus), bias for the choice only, weights normalized x route_scale; hash ids replace the choice", () => {
    const E = 6;
    const logits = Float32Array.of(0.1, 2, -1, 0.5, 25, -30);
    const bias = Float32Array.of(0, -10, 0, 1, 0, 0);
    const s = Array.from(logits, (z) => Math.sqrt(Math.log1p(Math.exp(z))));
    expect(sqrtSoftplus(25)).toBe(Math.fround(Math.sqrt(25)));
    const r = routeV4(logits, 1, E, 2, bias, null, 1.5, 3);
    expect(Array.from(r.indices)).toEqual([4, 3]); // expert 1 (second largest score) loses to its bias
    expect(r.weights[0]).toBeCloseTo((s[4]! / (s[4]! + s[3]!)) * 1.5, 6);
    const h = routeV4(logits, 1, E, 2, bias, Float32Array.of(5, 1), 1.5, 0);
    expect(Array.from(h.indices)).toEqual([5, 1]);
    expect(h.weights[1]).toBeCloseTo((s[1]! / (s[5]! + s[1]!)) * 1.5, 6);
    // model.py's other scoring functions: softmax weights are not renormalized, sigmoid ones are
    const z = Array.from(logits, (x) => Math.exp(x - 25)).reduce((a, b) => a + b);
    const sm = routeV4(logits, 1, E, 2, null, null, 1, 0, "softmax");
    expect(Array.from(sm.indices)).toEqual([4, 1]);
    expect(sm.weights[1]).toBeCloseTo(Math.exp(2 - 25) / z, 9);
    const sg = routeV4(logits, 1, E, 2, null, null, 1, 0, "sigmoid");
    expect(sg.weights[0]! + sg.weights[1]!).toBeCloseTo(1, 6);
  });

  it("QAT simulations: e4m3 / e2m1 grids with ties to even, power-of-two block scales; the Hadamard rotation is H x / sqrt(n)", () => {
    expect([0.3, 448, 17, 19, 0.0009765625 * 1.5, -2.5 / 64].map(roundE4m3)).toEqual([0.3125, 448, 16, 20, 0.001953125, -0.0390625]);
    expect([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, -5.5, 0.1].map(roundE2m1)).toEqual([0, 1, 1, 2, 2, 4, 4, -6, 0]);
    // amax 3 -> scale 2^ceil(log2(3/448)) = 2^-7; 1.0 stays, 0.011 -> e4m3(1.408) * 2^-7 = 1.375/128
    const x = Float32Array.of(3, 1, 0.011, -3);
    fp8ActQuant(x, 1, 4, 0, 4, 4);
    expect(Array.from(x)).toEqual([3, 1, 1.375 / 128, -3]);
    // amax 5 -> scale 2^ceil(log2(5/6)) = 1; 2.6 -> 3, 0.2 -> 0
    const y = new Float32Array(32);
    y.set([5, 2.6, 0.2, -1.3]);
    fp4ActQuant(y, 1, 32);
    expect(Array.from(y.subarray(0, 4))).toEqual([4, 3, 0, -1.5]);
    const n = 8;
    const v = randn(n, 9);
    const hv = v.slice();
    hadamard(hv, 1, n);
    const Hm = (i: number, j: number): number => (-1) ** popcount(i & j);
    for (let i = 0; i < n; i++) expect(hv[i]).toBeCloseTo(Array.from(v).reduce((a, x, j) => a + Hm(i, j) * x, 0) / Math.sqrt(n), 5);
  });
});

function popcount(x: number): number {
  let c = 0;
  for (; x; x &= x - 1) c++;
  return c;
}

describe("the pass on tiny-dsv4", () => {
  let src: HfWeightSource;
  const V = 2048;
  const run = (s: WeightSource, seq: number[], v4: ForwardOptions["v4"] = {}, extra: ForwardOptions = {}) => forward(s, [seq], { threads: 2, v4, ...extra }).then((r) => r.logits);
  beforeAll(async () => {
    src = await HfWeightSource.open(V4);
  });
  afterAll(async () => {
    await src?.close();
  });

  it("forwardTensorNamesV4 lists exactly the tensors the pass reads, every one present", async () => {
    const names = forwardTensorNamesV4(src.config, (n) => src.has(n));
    for (const n of names) expect(src.has(n), n).toBe(true);
    const read = new Set<string>();
    const spy = new Proxy(src, { get: (t, k) => {
      const f = Reflect.get(t, k);
      if ((k === "read" || k === "readStored") && typeof f === "function") return (n: string, ...rest: unknown[]) => { read.add(n); return f.call(t, n, ...rest); };
      return typeof f === "function" ? f.bind(t) : f;
    } });
    await forward(spy, [text(64, 19), text(40, 20)], { threads: 2 });
    const routed = (n: string) => /\.experts\.\d+\./.test(n);
    expect([...read].filter((n) => !routed(n)).sort()).toEqual(names.filter((n) => !routed(n)).sort());
    expect([...read].every((n) => names.includes(n))).toBe(true);
    expect(names.some((n) => n.startsWith("mtp."))).toBe(false);
  });

  it("the memory estimate covers a layer's weights as float32 (and the next attention's prefetch)", () => {
    let attn = 0;
    for (const n of ["wq_a", "wq_b", "wkv", "wo_a", "wo_b", "compressor.wkv", "compressor.wgate", "indexer.wq_b", "indexer.weights_proj", "indexer.compressor.wkv", "indexer.compressor.wgate"]) {
      attn += src.shape(`layers.1.attn.${n}.weight`).reduce((a, b) => a * b) * 4;
    }
    const expert = ["w1", "w2", "w3"].reduce((a, w) => a + src.shape(`layers.1.ffn.experts.0.${w}.weight`).reduce((x, y) => x * y) * 4, 0);
    expect(forwardWeightBytes(src.config)).toBeGreaterThanOrEqual(2 * attn + 3 * expert);
    expect(forwardWeightBytes(src.config)).toBeLessThan(4 * (2 * attn + 4 * expert + 2048 * 2 * 4 + 2 * 24 * 1024 * 4));
    expect(forwardBytesPerToken(src.config)).toBeGreaterThanOrEqual(4 * 3 * 4 * 256);
  });

  it("logits at every position, finite and far from uniform; batching and logitsFrom give the same rows", async () => {
    const a = text(40, 11);
    const b = text(23, 12);
    const both = await forward(src, [a, b], { threads: 2 });
    expect(Array.from(both.offsets)).toEqual([0, 40, 63]);
    expect(both.logits.every(Number.isFinite)).toBe(true);
    const alone = await run(src, b);
    expect(same(both.logits.subarray(40 * V), alone)).toBe(true);
    const tail = await forward(src, [a, b], { threads: 2, logitsFrom: [30, 0] });
    expect(same(tail.logits.subarray(0, 10 * V), both.logits.subarray(30 * V, 40 * V))).toBe(true);
    // entropy well below log(2048): the fixture's predictions are confident
    const { kld } = compare(alone, new Float32Array(alone.length), V);
    expect(kld).toBeGreaterThan(2);
  });

  it("the sliding window is the only reach of a ratio-0 layer: with every ratio 0, token 0 reaches exactly positions < 1 + layers * (window - 1)", async () => {
    const dense = withV4(src, { compressRatios: [0, 0, 0, 0, 0] });
    const seq = text(64, 13);
    const other = [...seq];
    other[0] = (seq[0]! + 1) % 2048;
    const [x, y] = [await run(dense, seq), await run(dense, other)];
    const reach = 1 + 4 * (16 - 1); // 61
    expect(same(x.subarray(reach * V), y.subarray(reach * V))).toBe(true);
    expect(same(x.subarray((reach - 1) * V, reach * V), y.subarray((reach - 1) * V, reach * V))).toBe(false);
    // with the compressed layers, token 0 reaches the last position through the compressed entries
    const [cx, cy] = [await run(src, seq), await run(src, other)];
    expect(same(cx.subarray(63 * V), cy.subarray(63 * V))).toBe(false);
  });

  it("(b) the indexer is irrelevant below 4 (index_topk + 1) tokens (bit for bit), and matters above", async () => {
    const short = text(35, 14); // 35 < 36: seq/4 = 8 <= index_topk 8
    expect(same(await run(src, short), await run(src, short, { indexer: "all" }))).toBe(true);
    expect(same(await run(src, short, { qat: false }), await run(src, short, { qat: false, indexer: "all" }))).toBe(true);
    const long = text(64, 15); // 16 entries, top 8 kept
    const [t, all] = [await run(src, long, { qat: false }), await run(src, long, { qat: false, indexer: "all" })];
    // identical while no query sees more than 8 entries (positions < 35), different after
    expect(same(t.subarray(0, 35 * V), all.subarray(0, 35 * V))).toBe(true);
    expect(compare(t.subarray(35 * V), all.subarray(35 * V), V).kld).toBeGreaterThan(1e-3);
  });

  it("(c) deliberate errors change the logits: no inverse RoPE, one Sinkhorn iteration, no SwiGLU clamp (where it binds)", async () => {
    const seq = text(64, 16);
    const base = await run(src, seq, { qat: false });
    const noInv = compare(base, await run(src, seq, { qat: false, skipInverseRope: true }), V);
    const sink1 = compare(base, await run(withV4(src, { hcSinkhornIters: 1 }), seq, { qat: false }), V);
    expect(noInv.kld).toBeGreaterThan(0.1);
    // tiny-dsv4's comb bases are near the identity, so one iteration is close to twenty: a small but certain change
    expect(sink1.kld).toBeGreaterThan(1e-4);
    // tiny-dsv4's expert activations stay below swiglu_limit 10 (no clamp changes nothing there), so the clamp is
    // checked where it binds: limit 1 vs none
    const limit1 = await run(withV4(src, { swigluLimit: 1 }), seq, { qat: false });
    expect(same(base, await run(withV4(src, { swigluLimit: 0 }), seq, { qat: false }))).toBe(true);
    expect(compare(base, limit1, V).kld).toBeGreaterThan(0.01);
  });

  it("(d) QAT on (model.py's default) and off (llama.cpp's numerics) differ, less than a real error", async () => {
    const seq = text(64, 17);
    const on = await run(src, seq);
    const off = await run(src, seq, { qat: false });
    const q = compare(on, off, V);
    const err = compare(off, await run(src, seq, { qat: false, skipInverseRope: true }), V);
    expect(q.kld).toBeGreaterThan(1e-4);
    expect(q.kld).toBeLessThan(err.kld / 4);
    expect(q.top1).toBeGreaterThan(err.top1);
  });
});

describe("(e) deepcast validate and imatrix run a V4 HF folder end to end", () => {
  const deepcast = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", env: { ...process.env, HF_HUB_OFFLINE: "1" } });

  it("validate: finite perplexity on text; far below uniform (2048) on the model's own greedy text", async () => {
    const d = await tempDir();
    const textFile = join(ROOT, "fixtures", "calibration", "web-jonah-micah-colossians-james.txt");
    const r = deepcast("validate", V4, "-f", textFile, "--ctx", "64", "--chunks", "2", "--json");
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.scoredTokens).toBe(62);
    expect(Number.isFinite(j.ppl)).toBe(true);
    // the model's own continuation of BOS (greedy), scored through the CLI with the windows protocol
    const src = await HfWeightSource.open(V4);
    const ids: number[] = [];
    try {
      for (let n = 0; n < 24; n++) {
        const l = (await forward(src, [[0, ...ids]], { threads: 2, logitsFrom: [n] })).logits;
        let best = 0;
        for (let k = 1; k < 2048; k++) if (l[k]! > l[best]!) best = k;
        ids.push(best);
      }
    } finally {
      await src.close();
    }
    await writeFile(join(d, "ids.json"), JSON.stringify(ids));
    const g = deepcast("validate", V4, "--tokens", join(d, "ids.json"), "--protocol", "windows", "--ctx", "24", "--json");
    expect(g.status, g.stderr).toBe(0);
    const gj = JSON.parse(g.stdout);
    expect(gj.scoredTokens).toBe(24);
    expect(gj.ppl).toBeGreaterThan(1);
    expect(gj.ppl).toBeLessThan(2048 / 20);
  }, 120_000);

  it("a V4 config the pass cannot run is a clear error naming config.json, exit 1, no stack trace", async () => {
    const d = await tempDir();
    await cp(V4, d, { recursive: true });
    const cfg = JSON.parse(await readFile(join(d, "config.json"), "utf8"));
    await writeFile(join(d, "config.json"), JSON.stringify({ ...cfg, compress_ratios: [0, 4, 64, 4, 0] }));
    const r = deepcast("validate", d, "--tokens", join(d, "config.json"), "--ctx", "16");
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/config\.json: compress_ratios must be a list of 0, 4, 128/);
    expect(r.stderr).toContain(join(d, "config.json"));
    expect(r.stderr).not.toMatch(/^\s+at /m);
  });

  it("imatrix: llama-imatrix's V4 entries under the deepseek4 GGUF names", async () => {
    const d = await tempDir();
    const out = join(d, "v4.imatrix.gguf");
    const r = deepcast("imatrix", V4, "-f", join(ROOT, "fixtures", "calibration", "web-jonah-micah-colossians-james.txt"), "--ctx", "64", "--chunks", "2", "-o", out);
    expect(r.status, r.stderr).toBe(0);
    const im = parseImatrix(await readFile(out), out);
    const names = [...im.entries.keys()];
    for (const n of ["blk.0.hc_attn_fn.weight", "blk.0.hc_ffn_fn.weight", "blk.0.attn_q_a.weight", "blk.0.attn_q_b.weight", "blk.0.attn_kv.weight",
      "blk.0.attn_output_a.weight", "blk.0.attn_output_b.weight", "blk.0.ffn_gate_inp.weight", "blk.0.ffn_gate_exps.weight", "blk.0.ffn_down_exps.weight",
      "blk.0.ffn_up_exps.weight", "blk.0.ffn_gate_shexp.weight", "blk.0.ffn_down_shexp.weight", "blk.0.ffn_up_shexp.weight",
      "blk.1.indexer.attn_q_b.weight", "blk.1.indexer.proj.weight", "blk.1.indexer_compressor_kv.weight", "blk.1.indexer_compressor_gate.weight",
      "blk.1.attn_compressor_kv.weight", "blk.2.attn_compressor_gate.weight"]) {
      expect(names, n).toContain(n);
    }
    expect(names.some((n) => n.startsWith("output"))).toBe(false);
    expect(names.some((n) => n.startsWith("blk.4."))).toBe(false); // MTP not run
    // as llama-imatrix's own V4 file (fixtures/llama-cpp-dsv4/v4.imatrix.gguf): the HC mixers see hc*dim inputs,
    // attn_output_a its 2 head groups' inputs side by side, experts one matrix each
    const llama = parseImatrix(await readFile(join(ROOT, "fixtures", "llama-cpp-dsv4", "v4.imatrix.gguf")), "v4.imatrix.gguf");
    const size = (m: typeof im, n: string) => m.entries.get(n)!.values.length;
    for (const n of ["blk.0.hc_attn_fn.weight", "blk.0.ffn_gate_exps.weight", "blk.0.ffn_down_exps.weight", "blk.0.attn_q_b.weight"]) {
      expect(size(im, n), n).toBe(size(llama, n));
    }
    // llama-imatrix's attn_output_a holds o_groups x ne0 values (2 x 512 there); here ne0 = 4 heads x 128 / 2 groups
    expect(size(llama, "blk.0.attn_output_a.weight")).toBe(2 * 512);
    expect(size(im, "blk.0.attn_output_a.weight")).toBe(2 * 256);
    expect(im.entries.get("blk.0.ffn_gate_exps.weight")!.nMat).toBe(8);
  }, 120_000);
});
