/**
 * The reference forward pass against DeepSeek's model.py on the tiny-dsv3 fixture: logits of the
 * golden 4 x 128 batch, the routers' decisions, perplexity over the eval text with the fixture's
 * window protocol, and the native kernels against their TypeScript twins.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseModelConfig, ropeInvFreq, softmaxScale } from "../src/model/config.js";
import { forward, type RoutingInfo } from "../src/model/forward.js";
import { forwardOps, tsOps, type ForwardOps } from "../src/model/ops.js";
import { perplexity, perplexityWindows } from "../src/model/perplexity.js";
import { HfWeightSource } from "../src/model/weights.js";
import { loadNative } from "../src/quant/native.js";
import { FIXTURE, GOLDEN, lacking } from "./helpers.js";

const json = (p: string) => JSON.parse(readFileSync(p, "utf8"));
const sequences = json(join(GOLDEN, "logits", "tokens.json")).sequences as number[][];
const goldenBuf = readFileSync(join(GOLDEN, "logits", "logits.fp8-dequant.f32.bin"));
const golden = new Float32Array(goldenBuf.buffer.slice(goldenBuf.byteOffset, goldenBuf.byteOffset + goldenBuf.byteLength));
const routingGolden = json(join(GOLDEN, "logits", "routing.json")).layers as Record<string, {
  indices: number[][][]; weights: number[][][]; expert_margin: number[][]; group_margin: number[][];
}>;
const pplGolden = json(join(GOLDEN, "ppl.json")).eval as { tokens_scored: number; windows: number; modelpy_fp8_mp1_absorb: number; window_nll_sums_modelpy_fp8: number[] };
const evalIds = json(join(GOLDEN, "eval", "kjv_eval.ids.json")).ids as number[];
const V = 2048;

/** Max |ours - golden| over everything, divided by max |golden| (the tolerance's definition). */
function maxRelError(ours: Float32Array, ref: Float32Array): { maxAbs: number; refMax: number; rel: number; worstPositionRel: number } {
  let maxAbs = 0;
  let refMax = 0;
  let worstPositionRel = 0;
  for (let r = 0; r < ref.length / V; r++) {
    let d = 0;
    let m = 0;
    for (let j = r * V; j < (r + 1) * V; j++) {
      d = Math.max(d, Math.abs(ours[j]! - ref[j]!));
      m = Math.max(m, Math.abs(ref[j]!));
    }
    maxAbs = Math.max(maxAbs, d);
    refMax = Math.max(refMax, m);
    worstPositionRel = Math.max(worstPositionRel, d / m);
  }
  return { maxAbs, refMax, rel: maxAbs / refMax, worstPositionRel };
}

let src: HfWeightSource;
beforeAll(async () => {
  src = await HfWeightSource.open(FIXTURE, { threads: 2 });
});
afterAll(async () => {
  await src?.close();
});

describe("config", () => {
  it("derives model.py's softmax scale and YaRN inverse frequencies from config.json", () => {
    const cfg = parseModelConfig(json(join(FIXTURE, "config.json")));
    expect(cfg).toMatchObject({ dim: 256, nLayers: 4, nDenseLayers: 1, nHeads: 4, nRoutedExperts: 16, nActivatedExperts: 4, nExpertGroups: 4, nLimitedGroups: 2, routeScale: 2.5, scoreFunc: "sigmoid", nMtpLayers: 1 });
    expect(softmaxScale(cfg)).toBeCloseTo(0.187130335, 8);
    const want = [1.0, 0.25693506, 0.0625, 0.013834965, 0.0025, 0.00079056947, 0.00025, 7.9056947e-05];
    const got = ropeInvFreq(cfg);
    expect(got.length).toBe(8);
    want.forEach((w, i) => expect(Math.abs(got[i]! - w) / w).toBeLessThan(1e-6));
  });

  it("rejects what it cannot run", () => {
    const cfg = json(join(FIXTURE, "config.json"));
    expect(() => parseModelConfig({ ...cfg, model_type: "llama" })).toThrow(/model_type/);
    expect(() => parseModelConfig({ ...cfg, n_group: 3 })).toThrow(/n_group/);
    expect(() => parseModelConfig({ ...cfg, hidden_size: undefined })).toThrow(/hidden_size/);
  });
});

describe("forward on the FP8 fixture vs model.py (FP8 dequantized to float32)", () => {
  let logits: Float32Array;
  const routing = new Map<number, RoutingInfo>();

  beforeAll(async () => {
    const r = await forward(src, sequences, { threads: 2, onRouting: (x) => routing.set(x.layer, x) });
    expect(r.vocab).toBe(V);
    expect([...r.offsets]).toEqual([0, 128, 256, 384, 512]);
    logits = r.logits;
  });

  it("logits at every position: max|ours - golden| / max|golden| <= 1e-4", () => {
    expect(logits.length).toBe(golden.length);
    const e = maxRelError(logits, golden);
    console.log(`forward vs golden: max |dlogit| ${e.maxAbs.toExponential(3)}, max |golden| ${e.refMax.toFixed(3)}, ` +
      `rel ${e.rel.toExponential(3)}, worst per-position rel ${e.worstPositionRel.toExponential(3)}`);
    expect(e.rel).toBeLessThanOrEqual(1e-4);
    expect(e.worstPositionRel).toBeLessThanOrEqual(1e-4);
  });

  it("router decisions of every MoE layer equal model.py's (experts in its topk order, weights)", () => {
    expect([...routing.keys()]).toEqual([1, 2, 3]);
    for (const [layer, r] of routing) {
      const g = routingGolden[`model.layers.${layer}`]!;
      expect(r.topk).toBe(4);
      let maxW = 0;
      for (let b = 0; b < 4; b++) {
        for (let p = 0; p < 128; p++) {
          const t = b * 128 + p;
          expect([...r.indices.subarray(t * 4, t * 4 + 4)], `layer ${layer} seq ${b} pos ${p}`).toEqual(g.indices[b]![p]);
          for (let k = 0; k < 4; k++) maxW = Math.max(maxW, Math.abs(r.weights[t * 4 + k]! - g.weights[b]![p]![k]!));
          expect(Math.abs(r.expertMargin[t]! - g.expert_margin[b]![p]!)).toBeLessThan(1e-5);
          expect(Math.abs(r.groupMargin[t]! - g.group_margin[b]![p]!)).toBeLessThan(1e-5);
        }
      }
      expect(maxW).toBeLessThan(1e-5);
    }
  });

  it("is bit-identical for 1 and 2 threads", async () => {
    const one = await forward(src, sequences, { threads: 1 });
    expect(Buffer.from(one.logits.buffer).equals(Buffer.from(logits.buffer))).toBe(true);
  });

  it("runs ragged batches: each sequence's logits equal those of the batch", async () => {
    const short = sequences[1]!.slice(0, 37);
    const r = await forward(src, [short, sequences[2]!], { threads: 2 });
    expect([...r.offsets]).toEqual([0, 37, 165]);
    const e1 = maxRelError(r.logits.subarray(0, 37 * V), golden.subarray(128 * V, (128 + 37) * V));
    const e2 = maxRelError(r.logits.subarray(37 * V), golden.subarray(256 * V, 384 * V));
    expect(e1.rel).toBeLessThanOrEqual(1e-4);
    expect(e2.rel).toBeLessThanOrEqual(1e-4);
  });

  it.runIf(loadNative()?.hasAvx2())("the scalar kernels match the golden logits too", async () => {
    const n = loadNative()!;
    n.setSimd("scalar");
    try {
      const r = await forward(src, sequences, { threads: 2 });
      expect(maxRelError(r.logits, golden).rel).toBeLessThanOrEqual(1e-4);
    } finally {
      n.setSimd("auto");
    }
  });

  it("the TypeScript kernels (no addon) match the golden logits", async () => {
    const r = await forward(src, [sequences[3]!.slice(0, 24)], { ops: tsOps });
    expect(maxRelError(r.logits, golden.subarray(384 * V, (384 + 24) * V)).rel).toBeLessThanOrEqual(1e-4);
  });

  it("rejects token ids outside the vocabulary and sequences past max_position_embeddings", async () => {
    await expect(forward(src, [[0, 5, 2048]], { threads: 1 })).rejects.toThrow(/outside the vocabulary/);
    await expect(forward(src, [new Array(2049).fill(5)], { threads: 1 })).rejects.toThrow(/max_position_embeddings/);
  });
});

describe("perplexity (fixture protocol: windows of 256, [BOS] + w[0:n-1], all n scored)", () => {
  it("cuts the eval text into the golden windows", () => {
    const w = perplexityWindows(evalIds, 256, 0);
    expect(w.length).toBe(pplGolden.windows);
    expect(w.reduce((a, x) => a + x.targets.length, 0)).toBe(pplGolden.tokens_scored);
    expect(w[1]!.input).toEqual([0, ...evalIds.slice(256, 511)]);
    expect(w[1]!.targets).toEqual(evalIds.slice(256, 512));
    expect(w.at(-1)!.targets.length).toBe(7547 - 29 * 256);
  });

  it("full eval text: ppl equals model.py's 42.8542 to 1e-5 relative", async () => {
    const r = await perplexity(src, evalIds, { threads: 2, batchWindows: 8 });
    console.log(`eval ppl ${r.ppl.toFixed(6)} (golden ${pplGolden.modelpy_fp8_mp1_absorb.toFixed(6)}), ${r.tokens} tokens, ` +
      `forward ${(r.forwardTokens / r.forwardSeconds).toFixed(0)} tokens/s`);
    expect(r.tokens).toBe(pplGolden.tokens_scored);
    expect(Math.abs(r.ppl - pplGolden.modelpy_fp8_mp1_absorb) / pplGolden.modelpy_fp8_mp1_absorb).toBeLessThan(1e-5);
    r.windowNll.forEach((s, i) => {
      const g = pplGolden.window_nll_sums_modelpy_fp8[i]!;
      expect(Math.abs(s - g) / g, `window ${i}`).toBeLessThan(1e-5);
    });
  });
});

describe("weights", () => {
  it("reads FP8 row ranges that straddle a 128-row scale block, scales from another shard", async () => {
    const name = "model.layers.2.self_attn.q_b_proj.weight"; // [192, 128], its scale_inv in shard 1
    const all = await src.read(name);
    const part = await src.read(name, 100, 70);
    expect(part).toEqual(all.subarray(100 * 128, 170 * 128));
    await expect(src.read(name, 150, 50)).rejects.toThrow(/out of range/);
    expect(() => src.shape("model.layers.9.mlp.gate.weight")).toThrow(/not found/);
  });

  it("bf16Round gives the BF16-rounded values", async () => {
    const r = await HfWeightSource.open(FIXTURE, { bf16Round: true });
    try {
      const w = await r.read("model.layers.0.mlp.down_proj.weight");
      const bits = new Uint32Array(w.buffer, w.byteOffset, w.length);
      expect(bits.every((b) => (b & 0xffff) === 0)).toBe(true);
    } finally {
      await r.close();
    }
  });
});

describe("kernels: native vs TypeScript", () => {
  const native = forwardOps();
  const rand = (n: number, seed: number) => {
    let s = seed >>> 0;
    return Float32Array.from({ length: n }, () => {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      return s / 2 ** 31 - 1;
    });
  };
  const close = (a: Float32Array, b: Float32Array, tol: number) => {
    let d = 0;
    let m = 0;
    for (let i = 0; i < a.length; i++) {
      d = Math.max(d, Math.abs(a[i]! - b[i]!));
      m = Math.max(m, Math.abs(b[i]!));
    }
    expect(d / m).toBeLessThan(tol);
  };
  const ops: ForwardOps = native;
  lacking(native.backend === "native", "the native addon did not load, so its forward kernels cannot be compared with the TypeScript ones");

  it.runIf(native.backend === "native")("matmul (odd sizes, strided output, any thread count)", () => {
    for (const [T, inD, out] of [[1, 1, 1], [7, 13, 5], [9, 300, 37], [33, 256, 130]] as const) {
      const x = rand(T * inD, T + inD);
      const w = rand(out * inD, out);
      const ldy = out + 3;
      const ref = new Float32Array(T * ldy).fill(7);
      tsOps.matmul(x, w, ref, T, inD, out, 1, ldy);
      for (const th of [1, 2, 3]) {
        const y = new Float32Array(T * ldy).fill(7);
        ops.matmul(x, w, y, T, inD, out, th, ldy);
        close(y, ref, 1e-5);
        for (let t = 0; t < T; t++) for (let c = out; c < ldy; c++) expect(y[t * ldy + c]).toBe(7);
      }
    }
    const big = [64, 512, 256] as const;
    const x = rand(big[0] * big[1], 1);
    const w = rand(big[2] * big[1], 2);
    const y1 = new Float32Array(big[0] * big[2]);
    const y2 = new Float32Array(big[0] * big[2]);
    ops.matmul(x, w, y1, ...big, 1);
    ops.matmul(x, w, y2, ...big, 2);
    expect(y2).toEqual(y1);
  });

  it.runIf(native.backend === "native")("causal attention over ragged sequences", () => {
    const H = 3, dqk = 11, dv = 9;
    const offsets = Int32Array.from([0, 5, 5, 17]);
    const N = 17;
    const q = rand(N * H * dqk, 1), k = rand(N * H * dqk, 2), v = rand(N * H * dv, 3);
    const ref = new Float32Array(N * H * dv);
    tsOps.attention(q, k, v, ref, offsets, H, dqk, dv, 0.3, 1);
    const out = new Float32Array(N * H * dv);
    ops.attention(q, k, v, out, offsets, H, dqk, dv, 0.3, 2);
    close(out, ref, 1e-5);
    // The first token of a sequence sees only itself: its output is its own v.
    for (let h = 0; h < H; h++) expect(out.subarray((5 * H + h) * dv, (5 * H + h + 1) * dv)).toEqual(v.subarray((5 * H + h) * dv, (5 * H + h + 1) * dv));
  });

  it.runIf(native.backend === "native")("silu(g) * u", () => {
    const g = rand(1000, 5).map((x) => x * 20);
    const u = rand(1000, 6);
    const ref = g.slice();
    tsOps.siluMul(ref, u, 1);
    ops.siluMul(g, u, 2);
    close(g, ref, 1e-6);
  });
});
