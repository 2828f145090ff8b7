/**
 * to-gguf on a DeepSeek-V4 checkpoint (test/dsv4-synthetic.ts: the real layout and dtypes, tiny sizes)
 * writes llama.cpp's deepseek4 GGUF: generated tensors first, FP8 as Q8_0 of the exact dequantized
 * values, FP4 experts repacked into MXFP4 whose ggml dequantization equals DeepSeek's FP4 decode bit for
 * bit, tid2eid as I32; and every quantized output equals llama-quantize run on that file (its listings in
 * fixtures/llama-cpp-dsv4/, made by make.ts there; test/e2e/dsv4-llama.sh runs llama.cpp live).
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { getLlama } from "node-llama-cpp";
import { beforeAll, describe, expect, it } from "vitest";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { decodeFp4, repackFp4ToMxfp4 } from "../src/formats/mxfp4-repack.js";
import { e8m0ToF32Array } from "../src/formats/e8m0.js";
import { GgufReader } from "../src/io/gguf-reader.js";
import { SafetensorsFile } from "../src/io/safetensors.js";
import { LocalSource } from "../src/io/source.js";
import { dequantize, quantize } from "../src/quant/ggml.js";
import { kernels } from "../src/quant/kernels.js";
import { loadNative } from "../src/quant/native.js";
import { writeTinyDsv4 } from "./dsv4-synthetic.js";
import { expectGgufListing, lacking, ROOT, sha256, tempDir } from "./helpers.js";
import { LLAMA_DSV4 as LLAMA, llamaFixture as fixture, llamaQuantizeListingTests } from "./llama-cpp-dsv4.js";
import { parseImatrix } from "../src/io/imatrix.js";
import { planTargetGguf } from "../src/convert/target-plan.js";
import type { GgufListing } from "../fixtures/gguf-listing.js";
import { type Manifest, V4_IMATRIX, V4_IMATRIX_TYPES, V4_IMATRIX_USABLE, V4_TARGET_LISTING, V4_TYPES, v4Listing } from "../fixtures/llama-cpp-dsv4/make.js";
import { expectProbeDistributions, probeProbabilities } from "./engine-harness.js";

const noNative = lacking(loadNative() !== null, "the native addon did not load (MXFP4 dequantizer, quantizers)");
/** An imatrix of fixtures/llama-cpp-dsv4 under the name llama-quantize was given (recorded as quantize.imatrix.file). */
const imatrixFixture = async (name: string) => parseImatrix(await readFile(join(LLAMA, name)), name);

let dir: string;
let ckpt: string;
let st: SafetensorsFile;

async function convert(ftype: string, name: string, extra: Record<string, unknown> = {}): Promise<string> {
  const out = join(dir, name);
  const plan = await planToGguf(new LocalSource(ckpt), out, { ftype, ...extra });
  await runToGguf(plan, { kernels: kernels(), threads: 2, force: true, skipSpaceCheck: true });
  return out;
}

async function tensorBytes(r: GgufReader, name: string): Promise<Uint8Array> {
  const t = r.tensor(name)!;
  const b = new Uint8Array(t.nbytes);
  await r.read(t, 0, b);
  return b;
}

async function src(name: string): Promise<Uint8Array> {
  const t = st.entry(name);
  const b = new Uint8Array(t.end - t.begin);
  await st.read(name, b);
  return b;
}

beforeAll(async () => {
  dir = await tempDir("deepcast-dsv4-gguf-");
  ckpt = await writeTinyDsv4(dir);
  st = await SafetensorsFile.open(join(ckpt, "model-00001-of-00001.safetensors"));
});

describe("FP4 experts -> MXFP4", () => {
  it.skipIf(noNative)("repacking moves bits only: ggml's MXFP4 dequantizer gives DeepSeek's FP4 decode, for every code and scale byte 0..254", () => {
    const rows = 255;
    const cols = 64;
    const packed = new Uint8Array(rows * cols / 2);
    const scales = new Uint8Array(rows * cols / 32);
    for (let i = 0; i < packed.length; i++) packed[i] = (i * 37 + (i >> 3)) & 0xff; // every nibble pair
    for (let r = 0; r < rows; r++) scales.fill(r, r * 2, r * 2 + 2); // every E8M0 byte but 255
    const blocks = new Uint8Array(rows * (cols / 32) * 17);
    repackFp4ToMxfp4(packed, scales, rows, cols, blocks);
    const want = new Float32Array(rows * cols);
    decodeFp4(packed, scales, rows, cols, want);
    const got = dequantize("MXFP4", blocks, cols);
    expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer))).toBe(true);
    expect(want.some((v) => v !== 0)).toBe(true);
  });
});

describe("to-gguf of a DeepSeek-V4 checkpoint (deepseek4)", () => {
  let bf16: string;
  let r: GgufReader;
  beforeAll(async () => {
    bf16 = await convert("BF16", "v4-bf16.gguf");
    r = await GgufReader.open(bf16);
  }, 120_000);

  it("writes convert_hf_to_gguf's header: arch, default template second, file type MXFP4_MOE, V4 keys", () => {
    expect(r.kvs[0]!.key).toBe("general.architecture");
    expect(r.value("general.architecture")).toBe("deepseek4");
    expect(r.kvs[1]!.key).toBe("tokenizer.chat_template");
    expect(r.value("general.file_type")).toBe(38);
    expect(r.value("deepseek4.block_count")).toBe(5);
    expect(r.value("deepseek4.hyper_connection.count")).toBe(4);
    expect(r.value("deepseek4.embedding_length_out")).toBe(4 * 256);
    const clamp = r.kv("deepseek4.swiglu_clamp_exp")!;
    expect(clamp.type === "ARRAY" && clamp.elementType).toBe("FLOAT32");
    expect(r.kv("deepseek4.attention.compress_ratios")).toMatchObject({ type: "ARRAY", elementType: "INT32", value: [0, 0, 4, 128, 4, 0] });
    expect(r.kv("deepseek4.nextn_predict_layers")).toBeUndefined();
    expect(r.kv("deepseek4.feed_forward_length")).toBeUndefined();
  });

  it("puts the generated tensors first (tid2eid, then each layer's gate/down/up experts), MTP skipped", () => {
    const names = r.tensors.map((t) => t.name);
    expect(names.slice(0, 3)).toEqual(["blk.0.ffn_gate_tid2eid.weight", "blk.1.ffn_gate_tid2eid.weight", "blk.2.ffn_gate_tid2eid.weight"]);
    expect(names.slice(3, 6)).toEqual(["blk.0.ffn_gate_exps.weight", "blk.0.ffn_down_exps.weight", "blk.0.ffn_up_exps.weight"]);
    expect(names.filter((n) => n.includes("_exps."))).toHaveLength(15);
    expect(names.some((n) => n.startsWith("blk.5."))).toBe(false);
    expect(names).not.toContain("blk.0.exp_probs_b.bias"); // hash layers drop gate.bias
    expect(names).toContain("blk.3.exp_probs_b.bias");
    const type = (n: string) => r.tensor(n)!.type.name;
    expect(type("blk.0.attn_q_a.weight")).toBe("Q8_0");
    expect(type("blk.0.ffn_gate_inp.weight")).toBe("BF16");
    expect(type("blk.0.hc_attn_fn.weight")).toBe("F32");
    expect(type("blk.0.attn_sinks.weight")).toBe("F32");
    expect(type("blk.2.indexer.proj.weight")).toBe("BF16");
    expect(type("blk.3.attn_compressor_ape.weight")).toBe("F32");
    expect(type("output_hc_scale.weight")).toBe("F32");
    expect(type("token_embd.weight")).toBe("BF16");
    expect(r.tensor("blk.0.ffn_gate_tid2eid.weight")).toMatchObject({ ne: [6, 2048] });
    expect(r.tensor("blk.1.ffn_down_exps.weight")).toMatchObject({ ne: [128, 256, 8] });
  });

  it.skipIf(noNative)("experts: ggml's dequantization of every MXFP4 slab equals DeepSeek's FP4 decode of the source", async () => {
    for (const [proj, name] of [["w1", "ffn_gate_exps"], ["w2", "ffn_down_exps"], ["w3", "ffn_up_exps"]] as const) {
      const t = r.tensor(`blk.3.${name}.weight`)!;
      const [cols, rows] = t.ne as [number, number];
      const got = dequantize("MXFP4", await tensorBytes(r, t.name), cols);
      for (let e = 0; e < 8; e++) {
        const want = new Float32Array(rows * cols);
        decodeFp4(await src(`layers.3.ffn.experts.${e}.${proj}.weight`), await src(`layers.3.ffn.experts.${e}.${proj}.scale`), rows, cols, want);
        expect(sha256(new Uint8Array(got.buffer, e * rows * cols * 4, rows * cols * 4)), `${name} expert ${e}`).toBe(sha256(new Uint8Array(want.buffer)));
      }
    }
  });

  it.skipIf(noNative)("FP8 weights: Q8_0 of fp8 x 2^(e-127) (gguf-py's Q8_0 of the F32 dequantization); tid2eid: the I64 values as I32", async () => {
    const w = await src("layers.1.attn.wq_b.weight");
    const s = e8m0ToF32Array(await src("layers.1.attn.wq_b.scale"));
    const [rows, cols] = [2 * 512, 128];
    const values = new Float32Array(rows * cols);
    kernels().fp8ToF32(w, rows, cols, s, values, 1, false);
    expect(sha256(await tensorBytes(r, "blk.1.attn_q_b.weight"))).toBe(sha256(quantize("Q8_0", values, cols)));
    const ids = new BigInt64Array((await src("layers.2.ffn.gate.tid2eid")).slice().buffer);
    const got = new Int32Array((await tensorBytes(r, "blk.2.ffn_gate_tid2eid.weight")).slice().buffer);
    expect(Array.from(got)).toEqual(Array.from(ids, Number));
  });

  it("--mtp writes the MTP block only: eh_proj = cat(e_proj, h_proj) as Q8_0, the MTP's own output_hc_*, nextn_predict_layers", async () => {
    const out = await convert("BF16", "v4-mtp.gguf", { mtp: "only" });
    const m = await GgufReader.open(out);
    try {
      expect(m.value("deepseek4.block_count")).toBe(6);
      expect(m.value("deepseek4.nextn_predict_layers")).toBe(1);
      const names = m.tensors.map((t) => t.name);
      expect(names.slice(0, 3)).toEqual(["blk.5.ffn_gate_exps.weight", "blk.5.ffn_down_exps.weight", "blk.5.ffn_up_exps.weight"]);
      expect(names[3]).toBe("blk.5.nextn.eh_proj.weight");
      expect(m.tensor("blk.5.nextn.eh_proj.weight")).toMatchObject({ ne: [512, 256] });
      expect(m.tensor("blk.5.nextn.eh_proj.weight")!.type.name).toBe("Q8_0");
      expect(names).toContain("blk.5.nextn.shared_head_norm.weight");
      expect(names).toContain("output_hc_fn.weight");
      expect(names.filter((n) => !n.startsWith("blk.5."))).toEqual(expect.arrayContaining(["token_embd.weight", "output_norm.weight", "output.weight"]));
      expect(names.some((n) => /^blk\.[0-4]\./.test(n))).toBe(false);
    } finally {
      await m.close();
    }
  });

  describe.skipIf(noNative)("quantized outputs equal llama-quantize --allow-requantize on the converted file (fixtures/llama-cpp-dsv4 listings)", () => {
    llamaQuantizeListingTests({ input: "v4-bf16.gguf", converted: () => bf16, types: V4_TYPES, listing: (t) => v4Listing(t), convert: (t) => convert(t, `v4-${t}.gguf`) });
  });

  it("the bundled llama.cpp (node-llama-cpp) loads our deepseek4 GGUFs (converted, Q4_K_M, MXFP4_MOE) and evaluates: finite distributions", async () => {
    const llama = await getLlama({ gpu: false, build: "never", skipDownload: true, logLevel: "error" as never });
    try {
      for (const [ftype, file] of [["BF16", bf16], ["Q4_K_M", await convert("Q4_K_M", "v4-load-q4km.gguf")], ["MXFP4_MOE", await convert("MXFP4_MOE", "v4-load-mxfp4.gguf")]] as const) {
        expectProbeDistributions(await probeProbabilities(llama, file), ftype, 2048);
      }
    } finally {
      await llama.dispose();
    }
  }, 180_000);

  describe.skipIf(noNative)("with llama-imatrix's importance matrix of our converted file (fixtures/llama-cpp-dsv4)", () => {
    it("refuses it as llama-quantize does (manifest.json imatrix_refusal): attn_output_a's entry does not fit the 2-D tensor", async () => {
      await expect(convert("IQ4_XS", "v4-bad-im.gguf", { imatrix: await imatrixFixture(V4_IMATRIX) })).rejects.toMatchObject({ code: "INVALID_INPUT", tensor: expect.stringContaining("attn_output_a") });
    });

    for (const ftype of V4_IMATRIX_TYPES) {
      it(`${ftype} with the imatrix (less attn_output_a) equals llama-quantize --imatrix`, async () => {
        const ours = await convert(ftype, `v4-im-${ftype}.gguf`, { imatrix: await imatrixFixture(V4_IMATRIX_USABLE) });
        await expectGgufListing(ours, await fixture<GgufListing>(v4Listing(ftype, true)), `${ftype} imatrix`);
      }, 120_000);
    }
  });

  it.skipIf(noNative)("--target-size plans V4 (MXFP4 experts measured from their exact values), lands within 3% below, and llama-quantize with its recipe writes the same bytes", async () => {
    const out = join(dir, "v4-target.gguf");
    const m = await fixture<Manifest>("manifest.json");
    const q8 = (await readFile(await convert("Q8_0", "v4-target-ref.gguf"))).length;
    const targetBytes = Math.round(q8 * 0.6);
    expect(targetBytes).toBe(m.target.bytes); // the target the fixture's recipe was planned for
    const plan = await planTargetGguf(new LocalSource(ckpt), out, { target: { bytes: targetBytes }, kernels: kernels() });
    await runToGguf(plan, { kernels: kernels(), threads: 2, force: true, skipSpaceCheck: true });
    const size = (await readFile(out)).length;
    expect(size).toBeLessThanOrEqual(targetBytes);
    expect(size).toBeGreaterThan(targetBytes * 0.97);
    expect(plan.target.analyticTensors).toBe(0);
    // llama-quantize --tensor-type-file was given this recipe (make.ts); a changed plan needs make.ts rerun
    expect(plan.output.ftype.name).toBe(m.target.ftype);
    expect(plan.target.recipe).toBe(await readFile(join(LLAMA, m.target.recipe), "utf8"));
    await expectGgufListing(out, await fixture<GgufListing>(V4_TARGET_LISTING), "target");
  }, 300_000);
});

describe("to-gguf of fixtures/tiny-dsv4 (the hub's file layout and config text)", () => {
  it("writes FLOAT32 clamp arrays (config swiglu_limit 10.0), and the bundled llama.cpp loads and evaluates its deepseek4 GGUFs (BF16, Q4_K_M): peaked, finite distributions", async () => {
    const fix = join(ROOT, "fixtures", "tiny-dsv4");
    const llama = await getLlama({ gpu: false, build: "never", skipDownload: true, logLevel: "error" as never });
    try {
      for (const ftype of ["BF16", "Q4_K_M"]) {
        const file = join(dir, `tiny-dsv4-${ftype}.gguf`);
        const plan = await planToGguf(new LocalSource(fix), file, { ftype });
        await runToGguf(plan, { kernels: kernels(), threads: 2, force: true, skipSpaceCheck: true });
        const g = await GgufReader.open(file);
        try {
          for (const key of ["deepseek4.swiglu_clamp_exp", "deepseek4.swiglu_clamp_shexp"]) {
            const kv = g.kv(key)!;
            expect(kv.type === "ARRAY" && kv.elementType, key).toBe("FLOAT32");
            expect(kv.type === "ARRAY" && kv.value.every((v) => v === 10), key).toBe(true);
          }
        } finally {
          await g.close();
        }
        expectProbeDistributions(await probeProbabilities(llama, file), ftype, 2048, { peaked: true });
      }
    } finally {
      await llama.dispose();
    }
  }, 180_000);
});
