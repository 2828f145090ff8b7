/**
 * DeepSeek-V4 config and weights for the forward pass (issue 14 item 5): config.json parses into a
 * ModelConfig with its V4 part, and HfWeightSource reads every V4 tensor kind of fixtures/tiny-dsv4 as
 * the exact float32 values, checked against decoders written plainly here from the format definitions
 * (e4m3fn bits x 2^(e-127); e2m1 nibbles, element 2k low, x 2^(e-127), code 8 = +0; I64 ids).
 */
import { cp, open, readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

import { DeepcastError } from "../src/errors.js";
import { loadCheckpoint, locate } from "../src/io/checkpoint.js";
import { parseV4Config } from "../src/io/hf-config-v4.js";
import { LocalSource } from "../src/io/source.js";
import { HfWeightSource } from "../src/model/weights.js";
import { ROOT, tempDir } from "./helpers.js";
import { e2m1, e4m3 } from "./numeric.js";

const V4 = join(ROOT, "fixtures", "tiny-dsv4");

/** Where a tensor's bytes lie in its shard (header parsed here, not by the project's reader). */
async function placeOf(dir: string, name: string): Promise<{ path: string; begin: number; end: number }> {
  const ck = await loadCheckpoint(new LocalSource(dir));
  const path = join(dir, locate(ck, name)!.file);
  const bytes = await readFile(path);
  const start = 8 + Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, start).toString("utf8")) as Record<string, { data_offsets: [number, number] }>;
  const [a, b] = header[name]!.data_offsets;
  return { path, begin: start + a, end: start + b };
}

/** The raw bytes of a tensor, straight from its shard. */
async function rawBytes(name: string): Promise<Uint8Array> {
  const { path, begin, end } = await placeOf(V4, name);
  const fh = await open(path, "r");
  try {
    const out = Buffer.alloc(end - begin);
    await fh.read(out, 0, end - begin, begin);
    return new Uint8Array(out);
  } finally {
    await fh.close();
  }
}


describe("DeepSeek-V4 config.json -> ModelConfig with its V4 part", () => {
  it("reads every V4 hyper-parameter of tiny-dsv4 and maps the shared ones", async () => {
    const raw = JSON.parse(await readFile(join(V4, "config.json"), "utf8"));
    const c = parseV4Config(raw);
    expect(c).toMatchObject({ dim: 256, nLayers: 4, nHeads: 4, qLoraRank: 128, qkRopeHeadDim: 64, qkNopeHeadDim: 64, vHeadDim: 128, kvLoraRank: 128,
      nRoutedExperts: 8, nSharedExperts: 1, nActivatedExperts: 2, moeInterDim: 128, scoreFunc: "sqrtsoftplus", routeScale: 1.5, nMtpLayers: 1, nDenseLayers: 0,
      ropeTheta: 10000, ropeScaling: { factor: 4, originalMaxPositionEmbeddings: 512, betaFast: 32, betaSlow: 1 } });
    expect(c.v4).toEqual({ headDim: 128, oGroups: 2, oLoraRank: 128, slidingWindow: 16, compressRatios: [0, 4, 128, 4, 0], compressRopeTheta: 160000,
      indexHeads: 4, indexHeadDim: 128, indexTopk: 8, hashLayers: 2, swigluLimit: 10, hcMult: 4, hcSinkhornIters: 20, hcEps: 1e-6 });
  });

  it("refuses what the pass cannot run, naming the key", () => {
    const base = JSON.parse(JSON.stringify({ hidden_size: 8, num_hidden_layers: 2, num_attention_heads: 4, head_dim: 16, qk_rope_head_dim: 8, o_groups: 2, o_lora_rank: 8,
      n_routed_experts: 4, num_experts_per_tok: 2, moe_intermediate_size: 8, hc_mult: 4, q_lora_rank: 8, sliding_window: 4, compress_ratios: [0, 0],
      vocab_size: 16, max_position_embeddings: 64 }));
    expect(parseV4Config(base).v4!.compressRatios).toEqual([0, 0]);
    const err = (over: Record<string, unknown>) => { try { parseV4Config({ ...base, ...over }); return null; } catch (e) { return e as DeepcastError; } };
    expect(err({ compress_ratios: [0, 8] })?.message).toMatch(/compress_ratios must be a list of 0, 4, 128/);
    expect(err({ compress_ratios: [0] })?.message).toMatch(/compress_ratios has 1 entries, fewer than num_hidden_layers 2/);
    expect(err({ o_groups: 3 })?.message).toMatch(/o_groups 3 does not divide num_attention_heads 4/);
    expect(err({ scoring_func: "relu" })).toMatchObject({ code: "UNSUPPORTED" });
    expect(err({ num_key_value_heads: 2 })).toMatchObject({ code: "CONFIG_MISMATCH" });
    expect(err({ compress_ratios: [4, 0] })?.message).toMatch(/compress_rope_theta/);
    expect(err({ compress_ratios: [4, 0], compress_rope_theta: 1e5 })?.message).toMatch(/index_n_heads/);
  });
});

describe("HfWeightSource reads a V4 checkpoint", () => {
  it("opens tiny-dsv4 (the forward-pass commands accept V4) with the V4 config", async () => {
    const src = await HfWeightSource.open(V4);
    try {
      expect(src.config.v4?.hcMult).toBe(4);
      expect(src.has("layers.0.attn.wq_a.weight")).toBe(true);
    } finally {
      await src.close();
    }
  });

  it("FP8 x E8M0 tiles: the exact products, whole and by row ranges (scale in another shard too)", async () => {
    const src = await HfWeightSource.open(V4);
    try {
      for (const name of ["layers.0.attn.wkv.weight", "layers.1.attn.wq_b.weight", "layers.2.ffn.shared_experts.w2.weight"]) {
        const shape = src.shape(name);
        const [rows, cols] = [shape[0]!, shape[1]!];
        const codes = await rawBytes(name);
        const scale = await rawBytes(name.replace(/\.weight$/, ".scale"));
        const sc = Math.ceil(cols / 128);
        const want = new Float32Array(rows * cols);
        for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) want[r * cols + c] = e4m3(codes[r * cols + c]!) * 2 ** (scale[Math.floor(r / 128) * sc + Math.floor(c / 128)]! - 127);
        expect(Buffer.from((await src.read(name)).buffer).equals(Buffer.from(want.buffer)), name).toBe(true);
        const part = await src.read(name, 130 % rows, Math.min(5, rows - (130 % rows)));
        expect(Array.from(part)).toEqual(Array.from(want.subarray((130 % rows) * cols, ((130 % rows) + part.length / cols) * cols)));
      }
    } finally {
      await src.close();
    }
  });

  it("packed FP4 experts: unpacked shape, e2m1 x 2^(e-127) with code 8 as +0", async () => {
    const src = await HfWeightSource.open(V4);
    try {
      const name = "layers.3.ffn.experts.5.w2.weight";
      expect(src.shape(name)).toEqual([256, 128]);
      const packed = await rawBytes(name);
      const scale = await rawBytes("layers.3.ffn.experts.5.w2.scale");
      const want = new Float32Array(256 * 128);
      let negZero = 0;
      for (let r = 0; r < 256; r++) {
        for (let c = 0; c < 128; c++) {
          const b = packed[(r * 128 + c) >> 1]!;
          const code = c % 2 === 0 ? b & 15 : b >> 4;
          if (code === 8) negZero++;
          want[r * 128 + c] = e2m1(code) * 2 ** (scale[r * 4 + (c >> 5)]! - 127);
        }
      }
      expect(negZero).toBeGreaterThan(0);
      const got = await src.read(name);
      expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer))).toBe(true);
      expect(got.some((v) => Object.is(v, -0))).toBe(false);
      expect(Array.from(await src.read(name, 77, 3))).toEqual(Array.from(want.subarray(77 * 128, 80 * 128)));
    } finally {
      await src.close();
    }
  });

  it("I64 tid2eid as expert ids; F32 hc_* and attn_sink as stored", async () => {
    const src = await HfWeightSource.open(V4);
    try {
      const raw = await rawBytes("layers.1.ffn.gate.tid2eid");
      const ids = new BigInt64Array(raw.buffer, raw.byteOffset, raw.length / 8);
      const got = await src.read("layers.1.ffn.gate.tid2eid", 100, 4);
      expect(Array.from(got)).toEqual(Array.from(ids.subarray(200, 208), Number));
      expect(got.every((e) => e >= 0 && e < 8)).toBe(true);
      const fn = await rawBytes("layers.2.hc_ffn_fn");
      expect(Buffer.from((await src.read("layers.2.hc_ffn_fn")).buffer).equals(Buffer.from(fn))).toBe(true);
    } finally {
      await src.close();
    }
  });

  it("a NaN E8M0 scale byte (255) of an FP8 weight or an FP4 expert is BAD_SCALE naming the scale tensor", async () => {
    for (const scale of ["layers.2.attn.wo_b.scale", "layers.3.ffn.experts.5.w2.scale"]) {
      const d = await tempDir();
      await cp(V4, d, { recursive: true });
      const { path, begin } = await placeOf(d, scale);
      const fh = await open(path, "r+");
      await fh.write(Uint8Array.of(255), 0, 1, begin + 1);
      await fh.close();
      const src = await HfWeightSource.open(d);
      try {
        const e = await src.read(scale.replace(/\.scale$/, ".weight")).then(() => null, (x: unknown) => x);
        expect(e).toBeInstanceOf(DeepcastError);
        expect(e).toMatchObject({ code: "BAD_SCALE" });
        expect((e as Error).message).toMatch(new RegExp(`E8M0 scale byte 255 \\(NaN\\) at \\[0, 1\\].*tensor ${scale.replace(/\./g, "\\.")}`, "s"));
      } finally {
        await src.close();
      }
    }
  });
});
