/**
 * Weight sources for the forward pass beyond HF checkpoints: GGUF (ours at BF16 and Q8_0, a 3-file
 * split, llama.cpp's own BF16 file when the shared golden set is present) and DeepSeek demo shards
 * (mp1 and mp2 BF16, mp1 FP8 keep), each read back against the HF FP8 fixture, and the forward pass
 * on the golden batch from all of them.
 */
import { copyFile, mkdir, open, readFile, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { gguf } from "@huggingface/gguf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kvBSplit } from "../src/convert/gguf-plan.js";
import { planToDemo, runToDemo, type DemoDtype } from "../src/convert/to-demo.js";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { loadCheckpoint } from "../src/io/checkpoint.js";
import { GgufType, kv } from "../src/io/gguf-kv.js";
import { GgufWriter } from "../src/io/gguf-writer.js";
import { planGgufLayout } from "../src/io/gguf-layout.js";
import { GgufReader, readGgufHeader } from "../src/io/gguf-reader.js";
import { LocalSource } from "../src/io/source.js";
import type { ModelConfig } from "../src/model/config.js";
import { DemoWeightSource, demoModelConfig } from "../src/model/demo-weights.js";
import { forward } from "../src/model/forward.js";
import { f32Decimal, GgufWeightSource } from "../src/model/gguf-weights.js";
import { detectWeights, forwardTensorNames, openWeights } from "../src/model/open-weights.js";
import { HfWeightSource, type WeightSource } from "../src/model/weights.js";
import { dequantizeRows, quantizeRows } from "../src/quant/ggml.js";
import { kernels } from "../src/quant/kernels.js";
import { FIXTURE, GOLDEN, ROOT, sha256, tempDir } from "./helpers.js";

const LLAMA_BF16_SHARED = resolve(ROOT, "..", "shared", "golden", "llama-cpp-tiny-dsv3", "tiny-dsv3-BF16.gguf");
const sequences = (JSON.parse(await readFile(join(GOLDEN, "logits", "tokens.json"), "utf8")) as { sequences: number[][] }).sequences;
const THREADS = 2;

const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
const sameBits = (a: Float32Array, b: Float32Array) => a.length === b.length && bits(a).equals(bits(b));

/** The ModelConfig fields the forward pass uses (MTP count, token ids and topk_method are not). */
function forwardFields(c: ModelConfig) {
  const { nMtpLayers: _m, bosTokenId: _b, eosTokenId: _e, topkMethod: _t, normTopkProb, ropeScaling, ...rest } = c;
  // normTopkProb changes nothing under sigmoid scoring (always normalized); ropeScaling.mscale is unused.
  return { ...rest, normTopkProb: c.scoreFunc === "sigmoid" ? "n/a" : normTopkProb, ropeScaling: ropeScaling ? { ...ropeScaling, mscale: "unused" } : null };
}

/** Every forward tensor of `a` equals `b`'s bit for bit (shapes too); returns how many were compared. */
async function expectSameWeights(a: WeightSource, b: WeightSource, names: readonly string[]): Promise<number> {
  for (const n of names) {
    expect(a.has(n), n).toBe(true);
    expect(a.shape(n), n).toEqual(b.shape(n));
    const [x, y] = await Promise.all([a.read(n), b.read(n)]);
    if (!sameBits(x, y)) expect.fail(`${n}: values differ from ${b.description}`);
  }
  return names.length;
}

/** Row-range reads: a few ranges of a few tensors, including ones that cross rank / head / expert boundaries. */
async function expectSameRanges(a: WeightSource, b: WeightSource): Promise<void> {
  const cases: [string, number, number][] = [
    ["model.embed_tokens.weight", 1020, 9],
    ["model.embed_tokens.weight", 2047, 1],
    ["lm_head.weight", 1000, 100],
    ["model.layers.2.self_attn.kv_b_proj.weight", 37, 70],
    ["model.layers.2.self_attn.kv_b_proj.weight", 120, 16],
    ["model.layers.1.self_attn.o_proj.weight", 5, 3],
    ["model.layers.3.mlp.experts.9.down_proj.weight", 100, 31],
    ["model.layers.3.mlp.experts.15.gate_proj.weight", 250, 6],
    ["model.layers.0.mlp.down_proj.weight", 129, 2],
    ["model.layers.1.mlp.gate.e_score_correction_bias", 3, 5],
    ["model.norm.weight", 10, 20],
  ];
  for (const [n, s, c] of cases) {
    const [x, y] = await Promise.all([a.read(n, s, c), b.read(n, s, c)]);
    if (!sameBits(x, y)) expect.fail(`${n} rows ${s}..${s + c}: differ`);
  }
}

let dir: string;
let hf: HfWeightSource;
let hfExact: HfWeightSource;
let names: string[];
const opened: WeightSource[] = [];

async function makeGguf(out: string, ftype: string, split?: { maxTensors: number }): Promise<string[]> {
  const plan = await planToGguf(new LocalSource(FIXTURE), out, { ftype, ...(split ? { split } : {}) });
  const s = await runToGguf(plan, { kernels: kernels(), threads: THREADS, force: false, skipSpaceCheck: true });
  return s.files;
}

async function makeDemo(out: string, mp: number, dtype: DemoDtype): Promise<string> {
  const ckpt = await loadCheckpoint(new LocalSource(FIXTURE));
  await runToDemo(ckpt, planToDemo(ckpt, { modelParallel: mp, dtype }), { out, kernels: kernels(), threads: THREADS, force: false, skipSpaceCheck: true });
  return out;
}

async function track<T extends WeightSource>(p: Promise<T>): Promise<T> {
  const s = await p;
  opened.push(s);
  return s;
}

/**
 * Every forward tensor of a quantized GGUF is ggml's dequantization of the blocks the BF16-rounded
 * HF values quantize to (its own ggml type, no imatrix; F32 tensors exact). Returns the type of
 * every GGUF tensor read, by GGUF name.
 */
async function expectQuantRoundTrip(g: GgufWeightSource): Promise<Record<string, string>> {
  const types: Record<string, string> = {};
  const roundTrip = (type: string, v: Float32Array, ne0: number) => dequantizeRows(type, quantizeRows(type, v, v.length / ne0, ne0), v.length / ne0, ne0);
  for (const n of names) {
    const { tensors } = g.ggufTensors(n);
    for (const t of tensors) types[t.name] = t.type.name;
    const [got, ref] = await Promise.all([g.read(n), hf.read(n)]);
    if (tensors.length === 2) {
      // kv_b_proj: split both the same way; each half is the round trip of the HF half at its ggml row length.
      const d = { nHead: 4, qkNope: 32, vHead: 32, kvLora: 128 };
      for (const [part, t] of [["k_b", tensors[0]!], ["v_b", tensors[1]!]] as const) {
        const want = roundTrip(t.type.name, kvBSplit(ref, part, d), t.ne[0]!);
        if (!sameBits(kvBSplit(got, part, d), want)) expect.fail(`${n} ${part} (${t.type.name}): differs`);
      }
    } else {
      const t = tensors[0]!;
      const want = t.type.name === "F32" ? ref : roundTrip(t.type.name, ref, t.ne[0]!);
      if (!sameBits(got, want)) expect.fail(`${n} (${t.type.name}): differs`);
    }
  }
  return types;
}

/** Tensor types of llama.cpp's llama-quantize output for the fixture, by name. */
async function llamaTypes(mix: string): Promise<Record<string, string>> {
  const l = JSON.parse(await readFile(join(ROOT, "fixtures", "llama-cpp-tiny-dsv3", `tiny-dsv3-${mix}.listing.json`), "utf8")) as { tensors: { name: string; type: string }[] };
  return Object.fromEntries(l.tensors.map((t) => [t.name, t.type]));
}

const paths: Record<string, string> = {};
beforeAll(async () => {
  dir = await tempDir("deepcast-weights-");
  hf = await track(HfWeightSource.open(FIXTURE, { bf16Round: true, threads: THREADS }));
  hfExact = await track(HfWeightSource.open(FIXTURE, { threads: THREADS }));
  names = forwardTensorNames(hf.config, (n) => hf.has(n));
  paths.bf16 = (await makeGguf(join(dir, "bf16", "tiny.gguf"), "BF16"))[0]!;
  paths.q8 = (await makeGguf(join(dir, "q8", "tiny.gguf"), "Q8_0"))[0]!;
  paths.q4 = (await makeGguf(join(dir, "q4", "tiny.gguf"), "Q4_K_M"))[0]!;
  const nTensors = (await readGgufHeader(paths.bf16)).tensors.length;
  const files = await makeGguf(join(dir, "split", "tiny.gguf"), "BF16", { maxTensors: Math.ceil(nTensors / 3) });
  expect(files).toHaveLength(3);
  paths.split1 = files[0]!;
  paths.split2 = files[1]!;
  paths.mp1 = await makeDemo(join(dir, "mp1"), 1, "bf16");
  paths.mp2 = await makeDemo(join(dir, "mp2"), 2, "bf16");
  paths.keep = await makeDemo(join(dir, "keep"), 1, "keep");
});

afterAll(async () => {
  for (const s of opened) await s.close();
});

describe("the forward pass's tensor list", () => {
  it("is every non-MTP weight of the fixture (scales aside), each once", () => {
    const want = [...hf.checkpoint.weightMap.keys()].filter((n) => {
      const layer = /^model\.layers\.(\d+)\./.exec(n);
      return !n.endsWith("_scale_inv") && (!layer || Number(layer[1]) < hf.config.nLayers);
    });
    expect(new Set(names).size).toBe(names.length);
    expect([...names].sort()).toEqual([...want].sort());
    expect(names).toHaveLength(201);
  });
});

describe("GgufWeightSource", () => {
  it("BF16 GGUF (ours): config as the HF one; every tensor the forward reads equals the BF16-rounded HF source bit for bit", async () => {
    const g = await track(GgufWeightSource.open(paths.bf16!, { threads: THREADS }));
    expect(forwardFields(g.config)).toEqual(forwardFields(hf.config));
    expect(g.config.nMtpLayers).toBe(0);
    expect([...g.hfNames()].sort()).toEqual([...names].sort());
    // Both storage types occur: F32 (norms, router, bias: exact copies) and BF16 (everything else).
    const types = new Set(names.flatMap((n) => g.ggufTensors(n).tensors.map((t) => t.type.name)));
    expect([...types].sort()).toEqual(["BF16", "F32"]);
    expect(g.ggufTensors("model.layers.1.mlp.gate.weight").tensors[0]!.type.name).toBe("F32");
    expect(g.ggufTensors("model.layers.2.self_attn.kv_b_proj.weight").tensors.map((t) => t.name)).toEqual(["blk.2.attn_k_b.weight", "blk.2.attn_v_b.weight"]);
    expect(g.ggufTensors("model.layers.3.mlp.experts.7.up_proj.weight")).toMatchObject({ expert: 7, tensors: [{ name: "blk.3.ffn_up_exps.weight" }] });
    expect(await expectSameWeights(g, hf, names)).toBe(201);
    await expectSameRanges(g, hf);
    expect(g.has("model.layers.4.self_attn.kv_b_proj.weight")).toBe(false); // MTP layer: not converted
    expect(g.has("model.layers.1.mlp.experts.16.up_proj.weight")).toBe(false);
    await expect(g.read("model.layers.9.mlp.gate.weight")).rejects.toThrow(/not found in the GGUF/);
    await expect(g.read("model.norm.weight", 250, 10)).rejects.toThrow(/out of range/);
  });

  // llama.cpp's own GGUF lives outside the repository (/work/shared/golden); where it is absent, our BF16 file is
  // the same bytes (its sha256 is the listing's file_sha256 of llama.cpp's file), so the test runs everywhere.
  it("llama.cpp's own BF16 GGUF reads the same, and our reader agrees with @huggingface/gguf on its header", async () => {
    let LLAMA_BF16 = LLAMA_BF16_SHARED;
    if (!existsSync(LLAMA_BF16)) {
      const listing = JSON.parse(await readFile(join(ROOT, "fixtures", "llama-cpp-tiny-dsv3", "tiny-dsv3-BF16.listing.json"), "utf8")) as { file_sha256: string };
      expect(sha256(await readFile(paths.bf16!))).toBe(listing.file_sha256);
      LLAMA_BF16 = paths.bf16!;
    }
    const g = await track(GgufWeightSource.open(LLAMA_BF16, { threads: THREADS }));
    expect(forwardFields(g.config)).toEqual(forwardFields(hf.config));
    await expectSameWeights(g, hf, names);

    const ours = await readGgufHeader(LLAMA_BF16);
    const theirs = await gguf(LLAMA_BF16, { allowLocalFile: true, typedMetadata: true });
    const meta = theirs.typedMetadata as unknown as Record<string, { value: unknown; type: number; subType?: number }>;
    const norm = (v: unknown): unknown => (typeof v === "bigint" ? Number(v) : Array.isArray(v) ? v.map(norm) : v);
    expect(ours.kvs.map((k) => k.key)).toEqual(Object.keys(meta).filter((k) => !["version", "tensor_count", "kv_count"].includes(k)));
    for (const k of ours.kvs) {
      const m = meta[k.key]!;
      expect(m.type, k.key).toBe(GgufType[k.type]);
      if (k.type === "ARRAY") expect(m.subType, k.key).toBe(GgufType[k.elementType]);
      expect(norm(k.value), k.key).toEqual(norm(m.value));
    }
    expect(ours.dataStart).toBe(Number(theirs.tensorDataOffset));
    expect(ours.tensors.map((t) => [t.name, t.ne, t.type.id, t.offset])).toEqual(theirs.tensorInfos.map((t) => [t.name, t.shape.map(Number), t.dtype, Number(t.offset)]));
  });

  it("Q8_0 GGUF: each tensor is ggml's dequantization of its Q8_0 blocks (= quantize then dequantize the BF16 values); F32 ones exact", async () => {
    const g = await track(GgufWeightSource.open(paths.q8!, { threads: THREADS }));
    expect(forwardFields(g.config)).toEqual(forwardFields(hf.config));
    // every tensor of the file was read, with the types llama-quantize gives them (47 Q8_0, 23 F32)
    expect(await expectQuantRoundTrip(g)).toEqual(await llamaTypes("Q8_0"));

    // Spot checks straight from the file's bytes: expert 5 of a stacked tensor and a row range.
    const reader = await GgufReader.open(paths.q8!);
    try {
      const t = reader.tensor("blk.2.ffn_down_exps.weight")!;
      expect(t.type.name).toBe("Q8_0");
      const [ne0, ne1] = t.ne as [number, number];
      const rb = (ne0 / 32) * 34;
      const raw = new Uint8Array(ne1 * rb);
      await reader.read(t, 5 * ne1 * rb, raw);
      expect(sameBits(await g.read("model.layers.2.mlp.experts.5.down_proj.weight"), dequantizeRows("Q8_0", raw, ne1, ne0))).toBe(true);
      const part = await g.read("model.layers.2.mlp.experts.5.down_proj.weight", 17, 4);
      expect(sameBits(part, dequantizeRows("Q8_0", raw.subarray(17 * rb, 21 * rb), 4, ne0))).toBe(true);
    } finally {
      await reader.close();
    }
  });

  it("Q4_K_M GGUF (K-quants, with attn_k_b's fallback type): each tensor is the round trip of its ggml type", async () => {
    const g = await track(GgufWeightSource.open(paths.q4!, { threads: THREADS }));
    // 26 Q4_K, 5 Q6_K, 16 Q5_0 (attn_k_b/attn_v_b rows of 32/128 are not whole 256-blocks), 23 F32
    expect(await expectQuantRoundTrip(g)).toEqual(await llamaTypes("Q4_K_M"));
  });

  it("a 3-file split GGUF reads the same as the single file (opened from any of its files); a missing part is named", async () => {
    const single = await track(GgufWeightSource.open(paths.bf16!));
    const split = await track(GgufWeightSource.open(paths.split1!, { threads: THREADS }));
    expect(split.reader.files).toHaveLength(3);
    expect(new Set(names.flatMap((n) => split.ggufTensors(n).tensors.map((t) => t.file)))).toEqual(new Set([0, 1, 2]));
    expect(split.config).toEqual(single.config);
    await expectSameWeights(split, single, names);
    await expectSameRanges(split, single);
    const viaSecond = await track(GgufWeightSource.open(paths.split2!));
    expect(viaSecond.reader.files.map((f) => f.path)).toEqual(split.reader.files.map((f) => f.path));

    const lone = join(dir, "lone");
    await mkdir(lone);
    for (const f of split.reader.files.slice(0, 2)) await copyFile(f.path, join(lone, f.path.split("/").pop()!));
    await expect(GgufWeightSource.open(join(lone, "tiny-00001-of-00003.gguf"))).rejects.toThrow(/GGUF file not found.*tiny-00003-of-00003\.gguf/);
  });

  it("a legacy GGUF (unsplit attn_kv_b, key_length = nope + rope, no *_mla keys) reads the same", async () => {
    // Rewrite our BF16 file the way pre-MLA-split converters (llama.cpp b4747) laid it out.
    const r = await GgufReader.open(paths.bf16!);
    const path = join(dir, "legacy.gguf");
    try {
      const A = "deepseek2.attention.";
      const kvs = r.kvs
        .filter((k) => !k.key.endsWith("_mla"))
        .map((k) => (k.key === `${A}key_length` ? kv.u32(k.key, 48) : k.key === `${A}value_length` ? kv.u32(k.key, 32) : k.key === `${A}head_count_kv` ? kv.u32(k.key, 4) : k));
      const specs = r.tensors.filter((t) => !t.name.endsWith("attn_v_b.weight"))
        .map((t) => (t.name.endsWith("attn_k_b.weight") ? { name: t.name.replace("attn_k_b", "attn_kv_b"), ne: [128, 256], type: t.type } : { name: t.name, ne: t.ne, type: t.type }));
      const w = await GgufWriter.create(planGgufLayout(path, kvs, specs));
      for (const spec of specs) {
        const m = /^blk\.(\d+)\.attn_kv_b\.weight$/.exec(spec.name);
        if (m) {
          const v = await hf.read(`model.layers.${m[1]}.self_attn.kv_b_proj.weight`);
          const h = new Uint16Array(v.length);
          kernels().f32ToBf16(v, h, 1);
          await w.append(spec.name, new Uint8Array(h.buffer));
        } else {
          const t = r.tensor(spec.name)!;
          const bytes = new Uint8Array(t.nbytes);
          await r.read(t, 0, bytes);
          await w.append(spec.name, bytes);
        }
      }
      await w.commit();
    } finally {
      await r.close();
    }
    const g = await track(GgufWeightSource.open(path, { threads: THREADS }));
    expect(forwardFields(g.config)).toEqual(forwardFields(hf.config));
    expect(g.ggufTensors("model.layers.3.self_attn.kv_b_proj.weight").tensors.map((t) => t.name)).toEqual(["blk.3.attn_kv_b.weight"]);
    expect([...g.hfNames()].sort()).toEqual([...names].sort());
    await expectSameWeights(g, hf, names);
    await expectSameRanges(g, hf);
  });

  it("rejects what is not a usable GGUF with a clear message", async () => {
    const bad = join(dir, "bad");
    await mkdir(bad);
    const head = Buffer.alloc(4096);
    const fh = await open(paths.bf16!, "r");
    await fh.read(head, 0, head.length, 0);
    await fh.close();
    await writeFile(join(bad, "truncated.gguf"), head);
    await expect(GgufWeightSource.open(join(bad, "truncated.gguf"))).rejects.toThrow(/truncated or corrupt GGUF header/);
    await writeFile(join(bad, "magic.gguf"), Buffer.concat([Buffer.from("GGML"), head.subarray(4)]));
    await expect(GgufWeightSource.open(join(bad, "magic.gguf"))).rejects.toThrow(/not a GGUF file/);
    const whole = await readFile(paths.bf16!);
    await writeFile(join(bad, "short.gguf"), whole.subarray(0, whole.length - 100));
    await expect(GgufWeightSource.open(join(bad, "short.gguf"))).rejects.toThrow(/runs past the end of the file/);
  });

  it("reads float metadata back as the decimals that were written", () => {
    expect(f32Decimal(Math.fround(1e-6))).toBe(1e-6);
    expect(f32Decimal(Math.fround(2.5))).toBe(2.5);
    expect(f32Decimal(Math.fround(0.1))).toBe(0.1);
    expect(f32Decimal(Math.fround(0.0707))).toBe(0.0707);
  });
});

describe("DemoWeightSource", () => {
  it("turns the demo's ModelArgs into the HF config's forward-pass fields (ModelArgs defaults for absent keys)", async () => {
    const args = JSON.parse(await readFile(join(paths.mp2!, "config.json"), "utf8")) as Record<string, unknown>;
    expect(forwardFields(demoModelConfig(args))).toEqual(forwardFields(hf.config));
    // The 671B config leaves max_seq_len and YaRN to ModelArgs: 16384 > 4096, so YaRN is on with factor 40.
    const c671 = demoModelConfig({ vocab_size: 129280, dim: 7168, inter_dim: 18432, moe_inter_dim: 2048, n_layers: 61, n_dense_layers: 3, n_heads: 128, n_routed_experts: 256, n_shared_experts: 1, n_activated_experts: 8, n_expert_groups: 8, n_limited_groups: 4, route_scale: 2.5, score_func: "sigmoid", q_lora_rank: 1536, kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128, dtype: "fp8" });
    expect(c671).toMatchObject({ maxPositionEmbeddings: 16384, ropeTheta: 10000, rmsNormEps: 1e-6, ropeScaling: { factor: 40, originalMaxPositionEmbeddings: 4096, betaFast: 32, betaSlow: 1, mscaleAllDim: 1 } });
    expect(demoModelConfig({ ...args, max_seq_len: 512 }).ropeScaling).toBe(null);
  });

  it("mp1 and mp2 BF16 shards read identically to the BF16-rounded HF source (split rows, split columns, experts by rank)", async () => {
    for (const p of [paths.mp1!, paths.mp2!]) {
      const d = await track(DemoWeightSource.open(p, { threads: THREADS }));
      expect(d.mp).toBe(p === paths.mp1 ? 1 : 2);
      expect(forwardFields(d.config)).toEqual(forwardFields(hf.config));
      expect(await expectSameWeights(d, hf, names)).toBe(201);
      await expectSameRanges(d, hf);
      expect(d.has("model.layers.4.self_attn.kv_b_proj.weight")).toBe(false);
    }
  });

  it("mp1 FP8 (--dtype keep) shards dequantize with their .scale like the HF source, exact or BF16-rounded", async () => {
    const exact = await track(DemoWeightSource.open(paths.keep!, { threads: THREADS }));
    const rounded = await track(DemoWeightSource.open(paths.keep!, { threads: THREADS, bf16Round: true }));
    expect(exact.files[0]!.header.byName.get("layers.0.attn.wq_a.weight")!.dtype).toBe("F8_E4M3");
    await expectSameWeights(exact, hfExact, names);
    await expectSameRanges(exact, hfExact);
    await expectSameWeights(rounded, hf, names);
    await expectSameRanges(rounded, hf);
  });

  it("refuses incomplete or mixed shard sets and a missing config.json", async () => {
    const d = join(dir, "broken");
    await mkdir(d);
    await copyFile(join(paths.mp2!, "model0-mp2.safetensors"), join(d, "model0-mp2.safetensors"));
    await expect(DemoWeightSource.open(d)).rejects.toThrow(/incomplete: missing model1-mp2\.safetensors/);
    await copyFile(join(paths.mp2!, "model1-mp2.safetensors"), join(d, "model1-mp2.safetensors"));
    await expect(DemoWeightSource.open(d)).rejects.toThrow(/need their config\.json/);
    await copyFile(join(paths.mp1!, "model0-mp1.safetensors"), join(d, "model0-mp1.safetensors"));
    await expect(DemoWeightSource.open(d)).rejects.toThrow(/several model-parallel degrees \(mp1, mp2\)/);
  });
});

describe("openWeights", () => {
  it("chooses the source from what the path is", async () => {
    expect(await detectWeights(paths.bf16!)).toEqual({ kind: "gguf", path: paths.bf16 });
    expect(await detectWeights(paths.mp2!)).toEqual({ kind: "demo", path: paths.mp2 });
    expect(await detectWeights(FIXTURE)).toEqual({ kind: "hf", path: FIXTURE });
    expect(await detectWeights(join(dir, "q8"))).toEqual({ kind: "gguf", path: paths.q8 });
    expect(await detectWeights(join(dir, "split"))).toEqual({ kind: "gguf", path: paths.split1 });
    await expect(detectWeights(join(FIXTURE, "config.json"))).rejects.toThrow(/not a GGUF/);
    await expect(detectWeights(join(dir, "nope.gguf"))).rejects.toThrow(/GGUF file not found/);
    const kinds = [];
    for (const p of [paths.bf16!, paths.mp2!, FIXTURE]) {
      const s = await track(openWeights(p, { threads: THREADS }));
      kinds.push(s.constructor.name);
    }
    expect(kinds).toEqual(["GgufWeightSource", "DemoWeightSource", "HfWeightSource"]);
  });
});

describe("forward pass on the golden batch from every source", () => {
  it("BF16 GGUF, mp2 demo shards and the BF16-rounded HF source give bit-identical logits (and FP8 demo shards the exact HF ones)", async () => {
    const g = await track(GgufWeightSource.open(paths.bf16!, { threads: THREADS }));
    const d = await track(DemoWeightSource.open(paths.mp2!, { threads: THREADS }));
    // Same float32 weights (above), same config fields, same kernels and thread count: the pass is
    // deterministic, so the logits must match exactly, not just to a tolerance.
    const ref = await forward(hf, sequences, { threads: THREADS });
    expect(ref.logits.length).toBe(4 * 128 * 2048);
    for (const src of [g, d]) {
      const r = await forward(src, sequences, { threads: THREADS });
      expect([...r.offsets]).toEqual([...ref.offsets]);
      expect(sameBits(r.logits, ref.logits), src.description).toBe(true);
    }
    // FP8 demo shards (--dtype keep), dequantized exactly, give the exact-dequant HF logits, which
    // test/forward.test.ts holds to model.py's golden logits.
    const keep = await track(DemoWeightSource.open(paths.keep!, { threads: THREADS }));
    const [fromKeep, fromHf] = await Promise.all([forward(keep, sequences, { threads: THREADS }), forward(hfExact, sequences, { threads: THREADS })]);
    expect(sameBits(fromKeep.logits, fromHf.logits)).toBe(true);
    expect(sameBits(fromKeep.logits, ref.logits)).toBe(false);

    // A quantized GGUF runs too and stays near: Q8_0 moves each position's logits by well under 1%
    // of their range, except where a router picks a different expert (a handful of tokens).
    const q = await track(GgufWeightSource.open(paths.q8!, { threads: THREADS }));
    const r = await forward(q, sequences, { threads: THREADS });
    const V = 2048;
    const rel: number[] = [];
    let agree = 0;
    for (let t = 0; t < r.logits.length / V; t++) {
      let d = 0;
      let m = 0;
      let aq = 0;
      let ab = 0;
      for (let j = 0; j < V; j++) {
        const x = r.logits[t * V + j]!;
        const y = ref.logits[t * V + j]!;
        d = Math.max(d, Math.abs(x - y));
        m = Math.max(m, Math.abs(y));
        if (x > r.logits[t * V + aq]!) aq = j;
        if (y > ref.logits[t * V + ab]!) ab = j;
      }
      rel.push(d / m);
      if (aq === ab) agree++;
    }
    rel.sort((a, b) => a - b);
    const median = rel[rel.length >> 1]!;
    console.log(`Q8_0 GGUF vs BF16 logits: per-position max|d|/max|logit| median ${median.toExponential(2)}, worst ${rel.at(-1)!.toExponential(2)}; argmax agrees at ${agree}/${rel.length}`);
    expect(median).toBeGreaterThan(0);
    expect(median).toBeLessThan(0.02);
    expect(agree).toBeGreaterThanOrEqual(rel.length * 0.95);
  });
});
