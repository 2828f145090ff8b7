/**
 * The forward pass's weights from a `deepseek4` GGUF (src/model/gguf-weights-deepseek4.ts): our to-gguf of
 * fixtures/tiny-dsv4 read back under the HF V4 names equals the HF source's read of the FP8 checkpoint
 * (HfWeightSource: FP8 x 2^(e-127), the FP4 decode, I64 ids, all exact float32), tensor for tensor, value
 * for value: BF16 and F32 tensors and the MXFP4 experts bit for bit, the Q8_0 tensors (FP8 weights) as the
 * Q8_0 round trip of the HF values, tid2eid as the I64 table. Also: row ranges, the config rebuilt from the
 * metadata, a K-quant GGUF of the model, and the MTP-only GGUF refused.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { parseV4Config } from "../src/io/hf-config-v4.js";
import { GgufReader } from "../src/io/gguf-reader.js";
import { LocalSource } from "../src/io/source.js";
import { forwardTensorNamesV4 } from "../src/model/forward-v4.js";
import { GgufWeightSource } from "../src/model/gguf-weights.js";
import { deepseek4ConfigJson } from "../src/model/gguf-weights-deepseek4.js";
import { HfWeightSource } from "../src/model/weights.js";
import { dequantize, quantize } from "../src/quant/ggml.js";
import { kernels } from "../src/quant/kernels.js";
import { ROOT, tempDir } from "./helpers.js";

const V4 = join(ROOT, "fixtures", "tiny-dsv4");

let dir: string;
let hfSrc: HfWeightSource;
/** The HF source's tensors by name (float32), read once. */
const hf = new Map<string, { shape: number[]; values: Float32Array }>();

async function toGguf(ftype: string, name: string, extra: Record<string, unknown> = {}): Promise<string> {
  const out = join(dir, name);
  const plan = await planToGguf(new LocalSource(V4), out, { ftype, ...extra });
  await runToGguf(plan, { kernels: kernels(), threads: 2, force: true, skipSpaceCheck: true });
  return out;
}

beforeAll(async () => {
  dir = await tempDir("deepcast-gguf-weights-dsv4-");
  hfSrc = await HfWeightSource.open(V4, { threads: 2 });
  for (const name of hfSrc.checkpoint.weightMap.keys()) {
    if (name.endsWith(".scale")) continue;
    hf.set(name, { shape: [...hfSrc.shape(name)], values: await hfSrc.read(name) });
  }
}, 120_000);

afterAll(async () => {
  await hfSrc?.close();
});

const same = (a: Float32Array, b: Float32Array) => a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

describe("GgufWeightSource on our deepseek4 GGUF of tiny-dsv4", () => {
  it("names every trunk tensor of the checkpoint under its HF name (no .scale, no MTP), with its HF shape: what the V4 pass reads", async () => {
    const src = await GgufWeightSource.open(await toGguf("BF16", "v4.gguf"));
    try {
      const trunk = [...hf.keys()].filter((n) => !n.startsWith("mtp.")).sort();
      expect(trunk.length).toBeGreaterThan(200);
      expect([...src.hfNames()].sort()).toEqual(trunk);
      for (const n of trunk) expect(src.shape(n), n).toEqual(hf.get(n)!.shape);
      expect(src.has("layers.0.attn.wq_a.scale")).toBe(false);
      expect(src.has("layers.0.ffn.gate.bias")).toBe(false); // hash layer: the converter drops it, the fixture has none
      expect(src.has("layers.2.ffn.gate.bias")).toBe(true);
      expect(src.has("mtp.0.e_proj.weight")).toBe(false);
      expect(src.has("layers.1.ffn.experts.8.w1.weight")).toBe(false); // 8 experts
      // exactly what the V4 pass reads
      expect([...src.hfNames()].sort()).toEqual(forwardTensorNamesV4(src.config, (n) => src.has(n)).sort());
    } finally {
      await src.close();
    }
  });

  it("reads every tensor exactly: BF16/F32/MXFP4 bit for bit, Q8_0 as the Q8_0 round trip of the FP8 values, tid2eid as the I64 table", async () => {
    const path = join(dir, "v4.gguf");
    const src = await GgufWeightSource.open(path, { threads: 2 });
    const byType = new Map<string, number>();
    try {
      for (const name of src.hfNames()) {
        const want = hf.get(name)!;
        const { tensors } = src.ggufTensors(name);
        const type = tensors[0]!.type.name;
        byType.set(type, (byType.get(type) ?? 0) + 1);
        const got = await src.read(name);
        const cols = want.shape.length === 1 ? want.shape[0]! : want.shape[1]!;
        const expected = type === "Q8_0" ? dequantize("Q8_0", quantize("Q8_0", want.values, cols), cols) : want.values;
        expect(same(got, expected), `${name} (${type})`).toBe(true);
      }
    } finally {
      await src.close();
    }
    // every kind of tensor the model has was compared (routed experts one by one)
    // BF16: embed, head, 4 routers, 3 compressors' and 2 indexer compressors' kv/gate, 2 weights_proj;
    // Q8_0: per layer wq_a, wq_b, wkv, wo_a, wo_b and the shared expert's 3, plus 2 indexer wq_b
    expect(Object.fromEntries(byType)).toEqual({ BF16: 2 + 4 + 3 * 2 + 2 * 2 + 2, F32: expect.any(Number), Q8_0: 4 * 8 + 2, MXFP4: 4 * 3 * 8, I32: 2 });
    expect(byType.get("F32")).toBeGreaterThan(40);
  });

  it("reads row ranges as slices of the whole tensor (copies, experts, tid2eid)", async () => {
    const src = await GgufWeightSource.open(join(dir, "v4.gguf"));
    try {
      for (const [name, r0, n] of [
        ["embed.weight", 1000, 7], ["layers.3.ffn.experts.7.w2.weight", 250, 6], ["layers.1.ffn.gate.tid2eid", 2040, 8],
        ["layers.2.attn.compressor.ape", 3, 100], ["layers.1.attn.wo_a.weight", 128, 128], ["layers.3.attn.attn_sink", 1, 2],
      ] as const) {
        const all = await src.read(name);
        const cols = all.length / src.shape(name)[0]!;
        expect(same(await src.read(name, r0, n), all.subarray(r0 * cols, (r0 + n) * cols)), name).toBe(true);
      }
      await expect(src.read("layers.1.ffn.gate.tid2eid", 2047, 2)).rejects.toThrow(/out of range/);
    } finally {
      await src.close();
    }
  });

  it("rebuilds config.json from the deepseek4 metadata: every key the forward pass needs, as the checkpoint has it; the same ModelConfig as the HF source's", async () => {
    const r = await GgufReader.open(join(dir, "v4.gguf"));
    try {
      const got = deepseek4ConfigJson(r);
      const want = JSON.parse(await readFile(join(V4, "config.json"), "utf8")) as Record<string, unknown>;
      // not in the GGUF: the storage format of the checkpoint, training-only keys, and the MTP (not converted)
      for (const k of ["quantization_config", "expert_dtype", "attention_bias", "attention_dropout", "initializer_range", "torch_dtype", "transformers_version", "num_nextn_predict_layers"]) delete want[k];
      expect(got.num_nextn_predict_layers).toBe(0);
      delete got.num_nextn_predict_layers;
      expect(got).toEqual(want);
    } finally {
      await r.close();
    }
    const src = await GgufWeightSource.open(join(dir, "v4.gguf"));
    try {
      expect(src.config).toEqual({ ...parseV4Config(JSON.parse(await readFile(join(V4, "config.json"), "utf8"))), nMtpLayers: 0 });
      expect(src.config).toEqual({ ...hfSrc.config, nMtpLayers: 0 });
    } finally {
      await src.close();
    }
  });

  it("reads a K-quant GGUF of the model (Q4_K_M: MXFP4 experts and Q8_0 re-quantized): every tensor close to the checkpoint's", async () => {
    const src = await GgufWeightSource.open(await toGguf("Q4_K_M", "v4-q4km.gguf"), { threads: 2 });
    const types = new Set<string>();
    try {
      for (const name of src.hfNames()) {
        const want = hf.get(name)!.values;
        const got = await src.read(name);
        types.add(src.ggufTensors(name).tensors[0]!.type.name);
        let d = 0;
        let s = 0;
        for (let i = 0; i < want.length; i++) {
          d += (got[i]! - want[i]!) ** 2;
          s += want[i]! ** 2;
        }
        // Q4_K: ~4-9% relative RMS error on these weights; a wrong slab, row or transposition is ~140%
        expect(Math.sqrt(d / s), name).toBeLessThan(0.15);
      }
    } finally {
      await src.close();
    }
    expect([...types].sort()).toEqual(expect.arrayContaining(["Q4_K", "Q6_K"]));
  });

  it("refuses an MTP-only GGUF (to-gguf --mtp): it has no trunk to run", async () => {
    const path = await toGguf("BF16", "mtp-v4.gguf", { mtp: "only" });
    await expect(GgufWeightSource.open(path)).rejects.toMatchObject({ code: "UNSUPPORTED", file: path, message: expect.stringMatching(/MTP-only GGUF/) });
  });
});
