import { readFileSync } from "node:fs";
import { open, readFile, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { gguf, ggufAllShards } from "@huggingface/gguf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { idToTitle, modelIdComponents, roundedParamCount, sizeLabel } from "../src/convert/gguf-naming.js";
import { kvBSplit, planDeepseek2Gguf, type Deepseek2GgufModel, type HfSourceRef } from "../src/convert/gguf-plan.js";
import { planGgufOutput, type GgufOutputPlan, type GgufOutputTensor } from "../src/convert/gguf-output.js";
import { loadHfModelFiles, type HfModelFiles } from "../src/convert/hf-model-files.js";
import { DeepcastError } from "../src/errors.js";
import { sha256 as sha, tempDir } from "./helpers.js";
import { encodeValueData, type GgufKV } from "../src/io/gguf-kv.js";
import { GgufWriter } from "../src/io/gguf-writer.js";
import { parseSplitSize, planGgufLayout } from "../src/io/gguf-layout.js";
import { SafetensorsFile } from "../src/io/safetensors.js";
import { LocalSource } from "../src/io/source.js";
import { tsKernels } from "../src/quant/kernels.js";
import { compareQuantizeOrder, parseFtype, parseTensorTypeOverride, planQuantMix, type MixTensorIn } from "../src/quant/mix.js";

const ROOT = resolve(import.meta.dirname, "..");
const FIXTURE = join(ROOT, "fixtures", "tiny-dsv3");
const LISTINGS = join(ROOT, "fixtures", "llama-cpp-tiny-dsv3");
const MIXES = ["Q2_K", "Q3_K_M", "Q4_K_M", "Q6_K", "Q8_0"] as const;

interface ListingKv { key: string; type: string; value?: unknown; element_type?: string; length?: number; sha256?: string }
interface ListingTensor { name: string; type: string; type_id: number; ne: number[]; offset: number; file_offset: number; nbytes: number; sha256: string }
interface Listing {
  file_size: number; file_sha256: string; alignment: number; header_bytes: number; data_start: number;
  n_kv: number; n_tensors: number; kv: ListingKv[]; tensors: ListingTensor[];
}
const listing = (name: string): Listing => JSON.parse(readFileSync(join(LISTINGS, `tiny-dsv3-${name}.listing.json`), "utf8")) as Listing;


/** Our KVs equal the listing's: keys in order, value types, values (f32 as stored), array payload hashes. */
function expectKvsMatch(ours: readonly GgufKV[], golden: readonly ListingKv[]): void {
  expect(ours.map((k) => k.key)).toEqual(golden.map((k) => k.key));
  golden.forEach((g, i) => {
    const a = ours[i]!;
    expect(a.type, g.key).toBe(g.type);
    if (a.type === "ARRAY") {
      expect(a.elementType, g.key).toBe(g.element_type);
      expect(a.value.length, g.key).toBe(g.length);
      expect(sha(encodeValueData(a)), g.key).toBe(g.sha256);
    } else {
      expect(a.type === "FLOAT32" ? Math.fround(a.value as number) : a.value, g.key).toBe(g.value);
    }
  });
}

let files: HfModelFiles;
let model: Deepseek2GgufModel;
beforeAll(async () => {
  files = await loadHfModelFiles(new LocalSource(FIXTURE));
  model = planDeepseek2Gguf(files);
});

describe("deepseek2 plan for tiny-dsv3 vs llama.cpp's own conversion (BF16)", () => {
  it("KVs: same keys, order, types and values (tokenizer arrays by payload hash)", () => {
    const out = planGgufOutput(model, { ftype: "BF16" });
    expect(out.style).toBe("convert");
    expectKvsMatch(out.kvs, listing("BF16").kv);
  });

  it("tensor infos, offsets, header and file size", () => {
    const bf = listing("BF16");
    const out = planGgufOutput(model, { ftype: "bf16" });
    const layout = planGgufLayout("/nowhere/x.gguf", out.kvs, out.tensors);
    const f = layout.files[0]!;
    expect(f.tensors.map((t) => ({ name: t.name, type: t.type.name, type_id: t.type.id, ne: t.ne, offset: t.offset, file_offset: t.fileOffset, nbytes: t.nbytes })))
      .toEqual(bf.tensors.map(({ sha256: _, ...t }) => t));
    expect(f.headerBytes).toBe(bf.header_bytes);
    expect(f.dataStart).toBe(bf.data_start);
    expect(f.fileSize).toBe(bf.file_size);
    expect(layout.alignment).toBe(bf.alignment);
  });

  it("drops MTP layers and scale tensors, stacks experts, splits kv_b_proj", () => {
    expect(model.tensors.some((t) => t.name.startsWith("blk.4."))).toBe(false);
    expect(model.skipped.every((n) => n.startsWith("model.layers.4."))).toBe(true);
    expect(model.skipped.length).toBeGreaterThan(0);
    const exps = model.tensors.find((t) => t.name === "blk.2.ffn_down_exps.weight")!;
    expect(exps.source.kind).toBe("stack");
    if (exps.source.kind !== "stack") return;
    expect(exps.source.experts.map((e) => e.name)).toEqual(Array.from({ length: 16 }, (_, x) => `model.layers.2.mlp.experts.${x}.down_proj.weight`));
    expect(exps.source.experts[0]!.scaleInv?.name).toBe("model.layers.2.mlp.experts.0.down_proj.weight_scale_inv");
    expect(exps.ne).toEqual([256, 256, 16]);
    const kb = model.tensors.find((t) => t.name === "blk.0.attn_k_b.weight")!;
    expect(kb.source).toMatchObject({ kind: "kv_b", part: "k_b", nHead: 4, qkNope: 32, vHead: 32, kvLora: 128 });
    expect(kb.ne).toEqual([32, 128, 4]);
    const router = model.tensors.find((t) => t.name === "blk.1.ffn_gate_inp.weight")!;
    expect(router.forceF32).toBe(true);
    expect(model.hparams).toMatchObject({ blockCount: 4, nHead: 4, nHeadKv: 1, nKvHeadHf: 4, nExpert: 16 });
    expect(model.params).toEqual({ total: 12123440, shared: 2686256, expert: 589824, expertCount: 16 });
  });

  it("F16 / F32 / --fp8-as-q8 outputs keep convert's order with forced-F32 tensors", () => {
    const f16 = planGgufOutput(model, { ftype: "F16" });
    expect(f16.kvs.find((k) => k.key === "general.file_type")!.value).toBe(1);
    expect(f16.kvs.map((k) => k.key)).toEqual(model.kvs.map((k) => k.key));
    const bf = listing("BF16");
    expect(f16.tensors.map((t) => [t.name, t.type.name])).toEqual(bf.tensors.map((t) => [t.name, t.type === "BF16" ? "F16" : t.type]));
    const f32 = planGgufOutput(model, { ftype: "F32" });
    expect(f32.tensors.every((t) => t.type.name === "F32")).toBe(true);
    expect(f32.kvs.find((k) => k.key === "general.file_type")!.value).toBe(0);
    const q8 = planGgufOutput(model, { ftype: "BF16", fp8AsQ8: true });
    for (const t of q8.tensors) {
      const want = t.name === "token_embd.weight" || t.name === "output.weight" ? "BF16" : t.fp8 ? "Q8_0" : t.type.name === "F32" ? "F32" : "BF16";
      expect(t.type.name, t.name).toBe(want);
    }
    expect(q8.tensors.filter((t) => t.type.name === "Q8_0")).toHaveLength(45); // the 45 FP8-origin tensors
    expect(() => planGgufOutput(model, { ftype: "Q4_K_M", fp8AsQ8: true })).toThrow(DeepcastError);
  });
});

describe("per-tensor types vs llama-quantize listings", () => {
  it("a type the table knows but deepcast does not quantize is refused at plan time, naming the tensor", () => {
    let err: unknown;
    try {
      planGgufOutput(model, { ftype: "Q4_K_M", tensorTypes: ["ffn_down_exps=MXFP4"] });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DeepcastError);
    expect((err as DeepcastError).code).toBe("UNSUPPORTED");
    expect((err as DeepcastError).tensor).toMatch(/^blk\.\d+\.ffn_down_exps\.weight$/);
  });

  for (const mix of MIXES) {
    it(`${mix}: every tensor's name, type, dims; KV order; layout`, () => {
      const g = listing(mix);
      // (1) from llama.cpp's BF16 file, independent of our converter
      const input: MixTensorIn[] = listing("BF16").tensors.map((t) => ({ name: t.name, ne: t.ne, type: t.type }));
      const direct = planQuantMix(input, { ftype: mix, nLayer: 4, nExpert: 16, nHead: 4, nHeadKv: 1 });
      expect(direct.tensors.map((t) => [t.name, t.type.name, t.ne])).toEqual(g.tensors.map((t) => [t.name, t.type, t.ne]));
      expect(direct.nFallback).toBe(mix === "Q8_0" ? 0 : 16);
      // (2) the whole output plan from the FP8 checkpoint
      const out = planGgufOutput(model, { ftype: mix });
      expect(out.style).toBe("quantize");
      expect(out.tensors.map((t) => [t.name, t.type.name, t.ne])).toEqual(g.tensors.map((t) => [t.name, t.type, t.ne]));
      expectKvsMatch(out.kvs, g.kv);
      const f = planGgufLayout("/nowhere/x.gguf", out.kvs, out.tensors).files[0]!;
      expect(f.tensors.map((t) => [t.offset, t.fileOffset, t.nbytes])).toEqual(g.tensors.map((t) => [t.offset, t.file_offset, t.nbytes]));
      expect([f.headerBytes, f.dataStart, f.fileSize]).toEqual([g.header_bytes, g.data_start, g.file_size]);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// data: materialize every tensor from the FP8 checkpoint the way llama.cpp's converter does
// ---------------------------------------------------------------------------------------------

const opened = new Map<string, SafetensorsFile>();
afterAll(async () => {
  for (const f of opened.values()) await f.close();
});
async function raw(file: string, name: string): Promise<Buffer> {
  let f = opened.get(file);
  if (!f) {
    f = await SafetensorsFile.open(join(FIXTURE, file));
    opened.set(file, f);
  }
  const e = f.entry(name);
  const b = Buffer.alloc(e.end - e.begin);
  await f.read(name, b);
  return b;
}

/** One HF tensor as BF16 bits or F32 values. */
async function load(r: HfSourceRef, as: "BF16" | "F32"): Promise<Uint16Array | Float32Array> {
  const b = await raw(r.file, r.name);
  const n = r.shape.reduce((a, c) => a * c, 1);
  if (r.scaleInv) {
    const s = await raw(r.scaleInv.file, r.scaleInv.name);
    const scale = new Float32Array(s.buffer, s.byteOffset, s.length / 4);
    const src = new Uint8Array(b.buffer, b.byteOffset, b.length);
    const [rows, cols] = r.shape as [number, number];
    if (as === "BF16") {
      const dst = new Uint16Array(n);
      tsKernels.fp8ToBf16(src, rows, cols, scale, dst, 1);
      return dst;
    }
    const dst = new Float32Array(n);
    tsKernels.fp8ToF32(src, rows, cols, scale, dst, 1, false);
    return dst;
  }
  if (r.dtype === "BF16") {
    const v = new Uint16Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
    if (as === "BF16") return v;
    const dst = new Float32Array(n);
    tsKernels.bf16ToF32(v, dst, 1);
    return dst;
  }
  if (r.dtype === "F32") {
    const v = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
    if (as === "F32") return v;
    const dst = new Uint16Array(n);
    tsKernels.f32ToBf16(v, dst, 1);
    return dst;
  }
  throw new Error(`unexpected dtype ${r.dtype}`);
}

const bytesOf = (a: Uint16Array | Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** The tensor's bytes as chunks (one per expert for stacked tensors). */
async function materialize(t: GgufOutputTensor): Promise<Uint8Array[]> {
  const as = t.type.name as "BF16" | "F32";
  const s = t.source;
  if (s.kind === "tensor") return [bytesOf(await load(s.src, as))];
  if (s.kind === "stack") return Promise.all(s.experts.map(async (e) => bytesOf(await load(e, as))));
  if (s.kind !== "kv_b") throw new Error(`no V4 sources in a V3 plan: ${s.kind}`);
  return [bytesOf(kvBSplit(await load(s.src, as), s.part, s))];
}

describe("writing the BF16 GGUF from the FP8 checkpoint", () => {
  let out: GgufOutputPlan;
  const data = new Map<string, Uint8Array[]>();
  beforeAll(async () => {
    out = planGgufOutput(model, { ftype: "BF16" });
    for (const t of out.tensors) data.set(t.name, await materialize(t));
  });

  it("every tensor's data equals llama.cpp's (sha256 per tensor)", () => {
    const bf = listing("BF16");
    for (const g of bf.tensors) {
      const chunks = data.get(g.name)!;
      expect(sha(Buffer.concat(chunks)), g.name).toBe(g.sha256);
    }
  });

  it("the written file is byte-identical to llama.cpp's, and its size is the planned size", async () => {
    const dir = await tempDir("deepcast-gguf-plan-");
    const path = join(dir, "tiny-dsv3-BF16.gguf");
    const layout = planGgufLayout(path, out.kvs, out.tensors);
    const w = await GgufWriter.create(layout);
    for (const t of out.tensors) for (const c of data.get(t.name)!) await w.append(t.name, c);
    await w.commit();
    expect((await stat(path)).size).toBe(layout.totalBytes);
    expect(sha(await readFile(path))).toBe(listing("BF16").file_sha256);
  });

  // (Our file is llama.cpp's BF16 GGUF byte for byte, by the sha256 above; reading it back with an independent
  // reader is test/to-gguf.test.ts's, and model-weights.test.ts reads it against the HF source.)

  it("split by size (10M): dry-run layout sizes equal the written files; shards read back", async () => {
    const dir = await tempDir("deepcast-gguf-plan-");
    const path = join(dir, "tiny.gguf");
    const layout = planGgufLayout(path, out.kvs, out.tensors, { maxBytes: parseSplitSize("10M") });
    expect(layout.files.length).toBe(3);
    for (const f of layout.files) {
      expect(f.dataBytes).toBeLessThanOrEqual(10e6);
    }
    const w = await GgufWriter.create(layout);
    for (const t of out.tensors) for (const c of data.get(t.name)!) await w.append(t.name, c);
    await w.commit();
    let total = 0;
    for (const f of layout.files) {
      const size = (await stat(f.path)).size;
      expect(size).toBe(f.fileSize);
      total += size;
    }
    expect(total).toBe(layout.totalBytes);
    const { shards } = await ggufAllShards(layout.files[0]!.path, { allowLocalFile: true });
    expect(shards.flatMap((s) => s.tensorInfos.map((t) => t.name))).toEqual(out.tensors.map((t) => t.name));
    const bf = new Map(listing("BF16").tensors.map((t) => [t.name, t]));
    for (const [i, s] of shards.entries()) {
      const fh = await open(layout.files[i]!.path, "r");
      try {
        for (const info of s.tensorInfos) {
          const g = bf.get(info.name)!;
          const buf = Buffer.alloc(g.nbytes);
          await fh.read(buf, 0, g.nbytes, Number(s.tensorDataOffset + info.offset));
          expect(sha(buf), info.name).toBe(g.sha256);
        }
      } finally {
        await fh.close();
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------
// mix rules beyond the listings
// ---------------------------------------------------------------------------------------------

/** DeepSeek-V3 671B as llama.cpp's BF16 conversion lists it (61 layers, first 3 dense, 256 experts). */
function dsv3Tensors(): MixTensorIn[] {
  const t: MixTensorIn[] = [
    { name: "token_embd.weight", ne: [7168, 129280], type: "BF16" },
    { name: "output_norm.weight", ne: [7168], type: "F32" },
    { name: "output.weight", ne: [7168, 129280], type: "BF16" },
  ];
  for (let i = 0; i < 61; i++) {
    const b = `blk.${i}.`;
    t.push(
      { name: b + "attn_norm.weight", ne: [7168], type: "F32" },
      { name: b + "attn_q_a.weight", ne: [7168, 1536], type: "BF16" },
      { name: b + "attn_q_a_norm.weight", ne: [1536], type: "F32" },
      { name: b + "attn_q_b.weight", ne: [1536, 24576], type: "BF16" },
      { name: b + "attn_kv_a_mqa.weight", ne: [7168, 576], type: "BF16" },
      { name: b + "attn_kv_a_norm.weight", ne: [512], type: "F32" },
      { name: b + "attn_k_b.weight", ne: [128, 512, 128], type: "BF16" },
      { name: b + "attn_v_b.weight", ne: [512, 128, 128], type: "BF16" },
      { name: b + "attn_output.weight", ne: [16384, 7168], type: "BF16" },
      { name: b + "ffn_norm.weight", ne: [7168], type: "F32" },
    );
    if (i < 3) {
      t.push(
        { name: b + "ffn_gate.weight", ne: [7168, 18432], type: "BF16" },
        { name: b + "ffn_up.weight", ne: [7168, 18432], type: "BF16" },
        { name: b + "ffn_down.weight", ne: [18432, 7168], type: "BF16" },
      );
    } else {
      t.push(
        { name: b + "ffn_gate_inp.weight", ne: [7168, 256], type: "F32" },
        { name: b + "exp_probs_b.bias", ne: [256], type: "F32" },
        { name: b + "ffn_gate_exps.weight", ne: [7168, 2048, 256], type: "BF16" },
        { name: b + "ffn_up_exps.weight", ne: [7168, 2048, 256], type: "BF16" },
        { name: b + "ffn_down_exps.weight", ne: [2048, 7168, 256], type: "BF16" },
        { name: b + "ffn_gate_shexp.weight", ne: [7168, 2048], type: "BF16" },
        { name: b + "ffn_up_shexp.weight", ne: [7168, 2048], type: "BF16" },
        { name: b + "ffn_down_shexp.weight", ne: [2048, 7168], type: "BF16" },
      );
    }
  }
  return t;
}

const useMoreBits = (i: number, n: number) => i < Math.trunc(n / 8) || i >= Math.trunc((7 * n) / 8) || (i - Math.trunc(n / 8)) % 3 === 2;
const layerOf = (name: string) => Number(/^blk\.(\d+)\./.exec(name)?.[1] ?? -1);

describe("mix rules", () => {
  const V3 = { nLayer: 61, nExpert: 256, nHead: 128, nHeadKv: 1 };
  const typesOf = (p: ReturnType<typeof planQuantMix>) => new Map(p.tensors.map((t) => [t.name, t.type.name]));

  it("parses ftypes by name, alias and id", () => {
    expect(parseFtype("q4_k")).toMatchObject({ name: "Q4_K_M", id: 15 });
    expect(parseFtype("Q3_K")).toMatchObject({ name: "Q3_K_M", id: 12 });
    expect(parseFtype(21)).toMatchObject({ name: "Q2_K_S" });
    expect(parseFtype("18").name).toBe("Q6_K");
    expect(parseFtype("bf16").defaultType.name).toBe("BF16");
    expect(() => parseFtype("Q7_K")).toThrow(DeepcastError);
    expect(parseFtype("iq2_m")).toMatchObject({ name: "IQ2_M", id: 29, ownRulesOnly: true });
    expect(parseFtype("IQ3_XS").defaultType.name).toBe("IQ3_S");
  });

  it("orders like llama-quantize: layer number, then byte-wise name", () => {
    const names = ["blk.10.a", "blk.2.b", "output.weight", "blk.2.a", "token_embd.weight", "output_norm.weight"];
    expect([...names].sort(compareQuantizeOrder)).toEqual(["output.weight", "output_norm.weight", "token_embd.weight", "blk.2.a", "blk.2.b", "blk.10.a"]);
  });

  it("DeepSeek-V3 671B recipes (spec 4.5 table)", () => {
    const input = dsv3Tensors();
    const check = (ftype: string, f: (name: string) => string | undefined, extra: object = {}) => {
      const types = typesOf(planQuantMix(input, { ftype, ...V3, ...extra }));
      for (const [name, type] of types) {
        const want = f(name);
        if (want !== undefined) expect(type, `${ftype} ${name}`).toBe(want);
      }
    };
    const f32 = (n: string) => (n.endsWith("_norm.weight") || n.includes("ffn_gate_inp") || n.endsWith(".bias") ? "F32" : undefined);
    check("Q4_K_M", (n) => f32(n) ?? (n === "output.weight" ? "Q6_K" : n.includes("attn_k_b") ? "Q5_0"
      : n.includes("ffn_down") ? (useMoreBits(layerOf(n), 61) ? "Q6_K" : "Q4_K") : "Q4_K"));
    check("Q3_K_M", (n) => f32(n) ?? (n === "output.weight" ? "Q6_K" : n.includes("attn_k_b") ? "Q4_0" : n.includes("attn_output") ? "Q4_K"
      : n.includes("ffn_down") ? (layerOf(n) < 3 ? "Q5_K" : "Q4_K") : "Q3_K"));
    check("Q2_K", (n) => f32(n) ?? (n === "output.weight" ? "Q6_K" : n.includes("attn_k_b") ? "Q4_0"
      : n.includes("attn_output") || n.includes("ffn_down") ? "Q3_K" : "Q2_K"));
    check("Q4_K_S", (n) => f32(n) ?? (n === "output.weight" ? "Q6_K" : n.includes("attn_k_b") ? "Q5_0"
      : n.includes("ffn_down") ? (layerOf(n) < 7 ? "Q5_K" : "Q4_K") : "Q4_K"));
    check("Q3_K_L", (n) => f32(n) ?? (n === "output.weight" ? "Q6_K" : n.includes("attn_k_b") ? "Q4_0"
      : n.includes("attn_output") || n.includes("ffn_down") ? "Q5_K" : "Q3_K"));
    check("Q5_K_S", (n) => f32(n) ?? (n === "output.weight" ? "Q6_K" : n.includes("attn_k_b") ? "Q5_1" : "Q5_K"));
    check("Q5_K_M", (n) => f32(n) ?? (n === "output.weight" ? "Q6_K" : n.includes("attn_k_b") ? "Q5_1"
      : n.includes("ffn_down") ? (useMoreBits(layerOf(n), 61) ? "Q6_K" : "Q5_K") : "Q5_K"));
    check("Q4_1", (n) => f32(n) ?? (n === "output.weight" ? "Q6_K" : "Q4_1"));
    check("Q4_0", (n) => f32(n) ?? (n === "output.weight" ? "Q6_K" : n.includes("ffn_down") && layerOf(n) < 7 ? "Q4_1" : "Q4_0"), { hasImatrix: true });
    check("Q5_0", (n) => f32(n) ?? (n === "output.weight" ? "Q6_K" : "Q5_0"));
    check("Q8_0", (n) => f32(n) ?? "Q8_0");
    check("Q6_K", (n) => f32(n) ?? (n.includes("attn_k_b") ? "Q8_0" : "Q6_K"));
    check("F16", (n) => f32(n) ?? "F16");
    check("BF16", (n) => f32(n) ?? "BF16");
    check("F32", () => "F32");
  });

  it("Q2_K_S needs an imatrix (except token_embd/output); --dry-run plans anyway", () => {
    const input = dsv3Tensors();
    expect(() => planQuantMix(input, { ftype: "Q2_K_S", ...V3 })).toThrow(/importance matrix/);
    const p = planQuantMix(input, { ftype: "Q2_K_S", ...V3, dryRun: true });
    const types = typesOf(p);
    expect(types.get("token_embd.weight")).toBe("Q2_K");
    expect(types.get("blk.6.ffn_down_exps.weight")).toBe("Q4_K");
    expect(types.get("blk.7.ffn_down_exps.weight")).toBe("Q2_K");
    expect(p.requiresImatrix).not.toContain("token_embd.weight");
    expect(p.requiresImatrix).toContain("blk.7.ffn_down_exps.weight");
    expect(p.requiresImatrix).toContain("blk.0.attn_q_a.weight");
    expect(planQuantMix(input, { ftype: "Q2_K_S", ...V3, hasImatrix: true }).requiresImatrix.length).toBe(p.requiresImatrix.length);
  });

  it("synthetic 8-layer deepseek2 (spec 4.6): Q4_K_M ffn_down* Q6_K in layers 0, 3, 6, 7", () => {
    const input = dsv3Tensors().filter((t) => layerOf(t.name) < 8).filter((t) => layerOf(t.name) !== 1 && layerOf(t.name) !== 2);
    const p = planQuantMix(input, { ftype: "Q4_K_M", nLayer: 8, nExpert: 16, nHead: 128, nHeadKv: 1 });
    const q6 = p.tensors.filter((t) => t.name.includes("ffn_down") && t.type.name === "Q6_K").map((t) => layerOf(t.name));
    expect([...new Set(q6)].sort()).toEqual([0, 3, 6, 7]);
  });

  it("--tensor-type (first match, lower-cased, fallback still applies), --output-tensor-type, --token-embedding-type", () => {
    const input = dsv3Tensors();
    const p = planQuantMix(input, {
      ftype: "Q4_K_M", ...V3,
      tensorTypes: ["blk\\.[0-2]\\.ffn_.*=q8_0", "BLK\\.1\\.FFN_UP=q2_k", "attn_k_b=q6_k", "attn_q_b=f16"],
      outputTensorType: "q8_0", tokenEmbeddingType: "Q5_K",
    });
    const byName = new Map(p.tensors.map((t) => [t.name, t]));
    expect(byName.get("blk.1.ffn_up.weight")!.type.name).toBe("Q8_0"); // first pattern wins
    expect(byName.get("blk.1.ffn_up.weight")!.manual).toBe(true);
    expect(byName.get("blk.3.ffn_up_exps.weight")!.type.name).toBe("Q4_K");
    expect(byName.get("blk.0.attn_k_b.weight")!.type.name).toBe("Q8_0"); // q6_K on ne0=128 falls back
    expect(byName.get("blk.0.attn_k_b.weight")!.fallbackFrom?.name).toBe("Q6_K");
    expect(byName.get("blk.0.attn_q_b.weight")!.type.name).toBe("F16");
    expect(byName.get("output.weight")!.type.name).toBe("Q8_0");
    expect(byName.get("token_embd.weight")!.type.name).toBe("Q5_K");
    expect(byName.get("blk.0.attn_norm.weight")!.type.name).toBe("F32");
    expect(() => parseTensorTypeOverride("attn_q_b")).toThrow(DeepcastError);
    expect(() => parseTensorTypeOverride("attn_q_b=q9_9")).toThrow(DeepcastError);
    expect(parseTensorTypeOverride("ATTN_Q_B=Q8_0")).toMatchObject({ pattern: "attn_q_b" });
    // for non-quantized ftypes --tensor-type is ignored, output/token types are not
    const f = typesOf(planQuantMix(input, { ftype: "F16", ...V3, tensorTypes: ["attn_q_b=q8_0"], outputTensorType: "q6_k" }));
    expect(f.get("blk.0.attn_q_b.weight")).toBe("F16");
    expect(f.get("output.weight")).toBe("Q6_K");
  });

  it("--pure, --leave-output-tensor, tied embeddings, shape fallback to F16", () => {
    const input = dsv3Tensors();
    const pure = typesOf(planQuantMix(input, { ftype: "Q4_K_M", ...V3, pure: true }));
    expect(pure.get("output.weight")).toBe("Q4_K");
    expect(pure.get("blk.0.ffn_down.weight")).toBe("Q4_K");
    expect(pure.get("blk.0.attn_k_b.weight")).toBe("Q5_0");
    const leave = typesOf(planQuantMix(input, { ftype: "Q4_K_M", ...V3, leaveOutputTensor: true }));
    expect(leave.get("output.weight")).toBe("BF16");
    const tied = typesOf(planQuantMix(input.filter((t) => t.name !== "output.weight"), { ftype: "Q4_K_M", ...V3 }));
    expect(tied.get("token_embd.weight")).toBe("Q6_K");
    const odd: MixTensorIn[] = [
      { name: "blk.0.attn_q_b.weight", ne: [48, 64], type: "BF16" },
      { name: "blk.0.attn_q_a.weight", ne: [96, 64], type: "BF16" },
      { name: "output.weight", ne: [96, 64], type: "BF16" },
    ];
    const o = planQuantMix(odd, { ftype: "Q4_K_M", nLayer: 1, nExpert: 0 });
    expect(typesOf(o).get("blk.0.attn_q_b.weight")).toBe("F16");
    expect(typesOf(o).get("blk.0.attn_q_a.weight")).toBe("Q5_0");
    expect(typesOf(o).get("output.weight")).toBe("Q8_0");
    expect(typesOf(planQuantMix(odd, { ftype: "Q8_0", nLayer: 1, nExpert: 0 })).get("blk.0.attn_q_b.weight")).toBe("F16");
  });

  it("attn_v-like tensors (legacy attn_kv_b) use running counters in llama-quantize order", () => {
    const input: MixTensorIn[] = [];
    for (let i = 0; i < 12; i++) input.push({ name: `blk.${i}.attn_kv_b.weight`, ne: [512, 32768], type: "BF16" });
    const qm = planQuantMix(input, { ftype: "Q3_K_M", nLayer: 12, nExpert: 256, nHead: 128, nHeadKv: 128 });
    expect(qm.tensors.map((t) => t.type.name)).toEqual(["Q5_K", "Q5_K", ...Array(10).fill("Q4_K")]);
    expect(qm.tensors.map((t) => layerOf(t.name))).toEqual([...Array(12).keys()]);
    const km = planQuantMix(input, { ftype: "Q4_K_M", nLayer: 12, nExpert: 256, nHead: 128, nHeadKv: 128 });
    expect(km.tensors.map((t) => t.type.name)).toEqual(km.tensors.map((_, i) => (useMoreBits(i, 12) ? "Q6_K" : "Q4_K")));
    expect(planQuantMix(input, { ftype: "Q2_K", nLayer: 12, nExpert: 256, nHead: 128, nHeadKv: 128 }).tensors[0]!.type.name).toBe("Q3_K");
    expect(planQuantMix(input, { ftype: "Q2_K", nLayer: 12, nExpert: 256, nHead: 128, nHeadKv: 16 }).tensors[0]!.type.name).toBe("Q4_K");
    // n_expert == 8 (Mixtral-style): attn_v -> Q8_0, attn_k -> Q8_0, attn_output -> Q5_K
    const mx: MixTensorIn[] = [
      { name: "blk.0.attn_v.weight", ne: [4096, 1024], type: "BF16" },
      { name: "blk.0.attn_k.weight", ne: [4096, 1024], type: "BF16" },
      { name: "blk.0.attn_output.weight", ne: [4096, 4096], type: "BF16" },
      { name: "blk.0.attn_qkv.weight", ne: [4096, 6144], type: "BF16" },
    ];
    const m8 = typesOf(planQuantMix(mx, { ftype: "Q4_K_M", nLayer: 32, nExpert: 8, nHead: 32, nHeadKv: 8 }));
    expect([m8.get("blk.0.attn_v.weight"), m8.get("blk.0.attn_k.weight"), m8.get("blk.0.attn_output.weight"), m8.get("blk.0.attn_qkv.weight")])
      .toEqual(["Q8_0", "Q8_0", "Q5_K", "Q8_0"]);
  });

  it("dense models count ffn_down tensors; manual overrides do not advance the counter", () => {
    const input: MixTensorIn[] = [];
    for (let i = 0; i < 8; i++) input.push({ name: `blk.${i}.ffn_down.weight`, ne: [1024, 256], type: "BF16" });
    const plain = planQuantMix(input, { ftype: "Q4_K_M", nLayer: 8, nExpert: 0 });
    expect(plain.tensors.map((t) => t.type.name)).toEqual([0, 1, 2, 3, 4, 5, 6, 7].map((i) => (useMoreBits(i, 8) ? "Q6_K" : "Q4_K")));
    const over = planQuantMix(input, { ftype: "Q4_K_M", nLayer: 8, nExpert: 0, tensorTypes: ["blk\\.0\\.=q8_0"] });
    // blk.1 is now the counter's tensor 0 -> use_more_bits(0, 8)
    expect(over.tensors.map((t) => t.type.name)).toEqual(["Q8_0", ...[0, 1, 2, 3, 4, 5, 6].map((i) => (useMoreBits(i, 8) ? "Q6_K" : "Q4_K"))]);
    expect(() => planQuantMix([{ name: "ffn_down.weight", ne: [256, 256], type: "BF16" }], { ftype: "Q4_K_M", nLayer: 8, nExpert: 16 })).toThrow(/layer/);
    expect(() => planQuantMix([{ name: "blk.9.ffn_down.weight", ne: [256, 256], type: "BF16" }], { ftype: "Q4_K_M", nLayer: 8, nExpert: 16 })).toThrow(/bad layer/);
  });
});

describe("helpers", () => {
  it("kvBSplit: k_b transposed per head, v_b sliced", () => {
    const d = { nHead: 2, qkNope: 3, vHead: 2, kvLora: 4 };
    const src = Float32Array.from({ length: 2 * 5 * 4 }, (_, i) => i);
    const kb = kvBSplit(src, "k_b", d);
    const vb = kvBSplit(src, "v_b", d);
    for (let h = 0; h < 2; h++) {
      for (let c = 0; c < 4; c++) for (let k = 0; k < 3; k++) expect(kb[(h * 4 + c) * 3 + k]).toBe(src[(h * 5 + k) * 4 + c]);
      for (let v = 0; v < 2; v++) for (let c = 0; c < 4; c++) expect(vb[(h * 2 + v) * 4 + c]).toBe(src[(h * 5 + 3 + v) * 4 + c]);
    }
    expect(kvBSplit(new Uint16Array(40), "k_b", d)).toBeInstanceOf(Uint16Array);
    expect(() => kvBSplit(new Float32Array(39), "k_b", d)).toThrow(RangeError);
  });

  // expected values printed by gguf-py (llama.cpp v0.4.0) Metadata.get_model_id_components / id_to_title
  it("general.* name heuristics match gguf-py", () => {
    const cases: [string, number, (string | null)[], string][] = [
      ["DeepSeek-V3", 0, ["DeepSeek-V3", null, "DeepSeek", null, "V3", null], "DeepSeek V3"],
      ["tiny-dsv3", 12123440, ["tiny-dsv3", null, null, null, null, null], "Tiny Dsv3"],
      ["DeepSeek-R1", 0, ["DeepSeek-R1", null, null, null, null, null], "DeepSeek R1"],
      ["DeepSeek-V3-0324", 671e9, ["DeepSeek-V3-0324", null, "DeepSeek", null, "V3-0324", null], "DeepSeek V3 0324"],
      ["DeepSeek-V3.1-Base", 0, ["DeepSeek-V3.1-Base", null, null, null, null, null], "DeepSeek V3.1 Base"],
      ["deepseek-ai/DeepSeek-V2-Chat-0628", 0, ["DeepSeek-V2-Chat-0628", "deepseek-ai", "DeepSeek-V2", "Chat", "0628", null], "DeepSeek V2 Chat 0628"],
      ["Mistral/Mixtral-8x7B-Instruct-v0.1", 0, ["Mixtral-8x7B-Instruct-v0.1", "Mistral", "Mixtral", "Instruct", "v0.1", "8x7B"], "Mixtral 8x7B Instruct v0.1"],
      ["Qwen1.5-MoE-A2.7B-Chat", 0, ["Qwen1.5-MoE-A2.7B-Chat", null, "Qwen1.5-MoE", "Chat", null, "A2.7B"], "Qwen1.5 MoE A2.7B Chat"],
      ["microsoft/Phi-3-mini-4k-instruct", 4e9, ["Phi-3-mini-4k-instruct", "microsoft", "Phi-3", "4k-instruct", null, "mini"], "Phi 3 Mini 4k Instruct"],
      ["bigscience/bloom-7b1-petals", 0, ["bloom-7b1-petals", "bigscience", "bloom", "petals", null, "7.1B"], "Bloom 7b1 Petals"],
      ["internlm/internlm2_5-7b-chat-1m", 7e9, ["internlm2_5-7b-chat-1m", "internlm", "internlm2_5", "chat-1m", null, "7B"], "Internlm2_5 7b Chat 1m"],
      ["mistralai/-Mistral--Nemo-Base-2407-", 0, ["-Mistral--Nemo-Base-2407-", "mistralai", "Mistral-Nemo-Base", null, "2407", null], "Mistral Nemo Base 2407"],
      ["Llama-3-Instruct-abliteration-LoRA-8B", -1234, ["Llama-3-Instruct-abliteration-LoRA-8B", null, "Llama-3", "Instruct-abliteration", null, "8B"], "Llama 3 Instruct Abliteration LoRA 8B"],
      ["Moonlight-16B-A3B-Instruct", 0, ["Moonlight-16B-A3B-Instruct", null, "Moonlight", "Instruct", null, "16B-A3B"], "Moonlight 16B A3B Instruct"],
    ];
    for (const [id, total, [name, org, basename, finetune, version, size], title] of cases) {
      const c = modelIdComponents(id, total);
      expect([c.name ?? null, c.organization ?? null, c.basename ?? null, c.finetune ?? null, c.version ?? null, c.sizeLabel ?? null], id)
        .toEqual([name, org, basename, finetune, version, size]);
      expect(idToTitle(c.name!), id).toBe(title);
    }
    const counts: [number, string][] = [[3276080, "3.3M"], [671026419200, "671B"], [12123440, "12M"], [999, "1.0K"], [1000001, "1.0M"], [9500000, "10M"], [950000, "950K"], [1.5e12, "1.5T"], [37e9, "37B"]];
    for (const [n, s] of counts) expect(roundedParamCount(n), String(n)).toBe(s);
    expect(sizeLabel(684531386000, 16.5e9, 2.6e9, 256)).toBe("256x19B");
  });

  it("plan options and errors", () => {
    const named = planDeepseek2Gguf(files, { name: "My Model", tokenizerPre: "custom" });
    expect(named.kvs.find((k) => k.key === "general.name")!.value).toBe("My Model");
    expect(named.kvs.find((k) => k.key === "tokenizer.ggml.pre")!.value).toBe("custom");
    // without transformers' head_dim, key_length/value_length come after kv_lora_rank
    const keys = planDeepseek2Gguf(files, { transformersKnowsModel: false }).kvs.map((k) => k.key);
    expect(keys.indexOf("deepseek2.attention.key_length")).toBe(keys.indexOf("deepseek2.attention.kv_lora_rank") + 1);
    expect(() => planDeepseek2Gguf({ ...files, config: { ...files.config, architectures: ["LlamaForCausalLM"] } })).toThrow(/architecture/);
    const noExpert = files.shards.map((s) => ({ ...s, tensors: s.tensors.filter((t) => t.name !== "model.layers.2.mlp.experts.7.up_proj.weight") }));
    expect(() => planDeepseek2Gguf({ ...files, shards: noExpert })).toThrow(DeepcastError);
    const extra = files.shards.map((s, i) => (i === 0 ? { ...s, tensors: [...s.tensors, { name: "model.layers.0.mystery.weight", dtype: "BF16" as const, shape: [4] }] } : s));
    expect(() => planDeepseek2Gguf({ ...files, shards: extra })).toThrow(/cannot map/);
  });
});
