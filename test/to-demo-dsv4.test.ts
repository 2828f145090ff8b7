/**
 * to-demo on DeepSeek-V4 (fixtures/tiny-dsv4) as V4's inference/convert.py (Mockingjay1316/deepseek-v4-flash-spark
 * @ 0825add): the expected rank files are derived here from convert.py's rules, restated independently of
 * deepcast's tables (formats/demo-names-v4.json) and planner; every value is checked against the input bytes
 * (slices, the F4 relabel), an FP8 x 2^(e-127) -> BF16 decode written here (wo_a), and fp8-to-bf16's
 * `--experts fp8` output (the FP4 -> FP8 cast, itself checked against an independent decode in
 * test/fp8-to-bf16-dsv4.test.ts).
 *
 * Not verifiable here (no torch, no GPU): that DeepSeek's model.py loads these files. safetensors' F4
 * spelling (dtype "F4", last dim doubled to the logical element count) is from the safetensors source
 * (bindings/python/src/lib.rs TensorSpec::new, safetensors/src/tensor.rs Dtype), not from a torch run.
 */
import { spawnSync } from "node:child_process";
import { cp, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";

import { planFp8ToBf16, runFp8ToBf16 } from "../src/convert/fp8-to-bf16.js";
import { MANIFEST } from "../src/convert/run-state.js";
import { planToDemoV4, runToDemo, type DemoPlanV4Options, type ToDemoRunOptions } from "../src/convert/to-demo.js";
import { DeepcastError } from "../src/errors.js";
import { loadCheckpoint } from "../src/io/checkpoint.js";
import { SafetensorsFile, SafetensorsWriter } from "../src/io/safetensors.js";
import { LocalSource } from "../src/io/source.js";
import { kernels } from "../src/quant/kernels.js";
import { writeDsv4Replica } from "../fixtures/dsv4-replica.js";
import { ROOT, sha256, tempDir } from "./helpers.js";
import { e4m3 } from "./numeric.js";

const V4 = join(ROOT, "fixtures", "tiny-dsv4");
const SHARDS = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"];

interface T { dtype: string; shape: number[]; data: Uint8Array }

async function tensorsOf(file: string): Promise<{ order: string[]; tensors: Map<string, T>; metadata: unknown }> {
  const st = await SafetensorsFile.open(file);
  const tensors = new Map<string, T>();
  for (const t of st.tensors) {
    const data = new Uint8Array(t.end - t.begin);
    await st.read(t.name, data);
    tensors.set(t.name, { dtype: t.dtype, shape: t.shape, data });
  }
  const r = { order: st.tensors.map((t) => t.name), tensors, metadata: st.header.metadata };
  await st.close();
  return r;
}

async function inputOf(dir: string): Promise<Map<string, T>> {
  const all = new Map<string, T>();
  for (const f of (await readdir(dir)).filter((x) => x.endsWith(".safetensors")).sort()) for (const [k, v] of (await tensorsOf(join(dir, f))).tensors) all.set(k, v);
  return all;
}

async function toDemo(input: string, out: string, o: DemoPlanV4Options, extra: Partial<ToDemoRunOptions> = {}) {
  const ckpt = await loadCheckpoint(new LocalSource(input));
  return runToDemo(ckpt, planToDemoV4(ckpt, o), { out, kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true, ...extra });
}

// ---- convert.py's rules, restated ------------------------------------------------------------

/** The split dims of convert.py's `mapping` that V4 names can hit (its V3 keys never occur in V4 names). */
const SPLIT: Record<string, number> = { embed: 0, head: 0, wq_b: 0, wo_a: 0, wo_b: 1, attn_sink: 0, weights_proj: 0 };
const ELEM: Record<string, number> = { BF16: 2, F32: 4, I64: 8, I8: 1, F8_E4M3: 1, F8_E8M0: 1 };
/** The safetensors crate's `Dtype` enum (safetensors/src/tensor.rs); save_file lays tensors out by it, descending, then by name. */
const CRATE_DTYPES = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"];

interface Want { dtype: string; shape: number[]; from: string; narrow?: { dim: number; rank: number }; kind: "bytes" | "wo_a" | "f4" | "fp8-expert" | "fp8-expert-scale" }

/** What convert.py writes to each rank for these input tensors (name -> dtype, shape, source). */
function convertPy(input: Map<string, T>, mp: number, nExperts: number, expertDtype: "fp4" | "fp8"): Map<string, Want>[] {
  const ranks = Array.from({ length: mp }, () => new Map<string, Want>());
  for (const [hf, t] of input) {
    let name = hf.startsWith("model.") ? hf.slice("model.".length) : hf;
    if (name.startsWith("mtp.") && (name.includes("emb") || name.endsWith("head.weight"))) continue;
    for (const [a, b] of [["self_attn", "attn"], ["mlp", "ffn"], ["weight_scale_inv", "scale"], ["e_score_correction_bias", "bias"]]) name = name.split(a!).join(b!);
    const parts = name.split(".");
    const key = ["hc", "attn_sink", "tie2eid", "ape"].some((x) => name.includes(x)) ? parts.at(-1)! : parts.at(-2)!;
    const dim = SPLIT[key];
    for (let i = 0; i < mp; i++) {
      if (name.includes("experts") && !name.includes("shared_experts")) {
        const idx = Number(parts.at(-3));
        if (idx < (i * nExperts) / mp || idx >= ((i + 1) * nExperts) / mp) continue;
        ranks[i]!.set(name, { dtype: t.dtype, shape: t.shape, from: hf, kind: "bytes" });
      } else if (dim !== undefined) {
        expect(t.shape[dim]! % mp, `${hf}: convert.py's assert`).toBe(0);
        ranks[i]!.set(name, { dtype: t.dtype, shape: t.shape.map((d, j) => (j === dim ? d / mp : d)), from: hf, narrow: { dim, rank: i }, kind: "bytes" });
      } else {
        ranks[i]!.set(name, { dtype: t.dtype, shape: t.shape, from: hf, kind: "bytes" });
      }
    }
  }
  for (const r of ranks) {
    for (const [name, w] of [...r]) {
      if (name.endsWith("wo_a.weight")) {
        r.delete(name.replace("weight", "scale"));
        r.set(name, { ...w, dtype: "BF16", kind: "wo_a" });
      } else if (name.includes("experts") && w.dtype === "I8") {
        const shape = [w.shape[0]!, w.shape[1]! * 2];
        if (expertDtype === "fp8") {
          const s = name.replace("weight", "scale");
          r.set(name, { ...w, dtype: "F8_E4M3", shape, kind: "fp8-expert" });
          r.set(s, { ...r.get(s)!, shape: [Math.ceil(shape[0]! / 128), Math.ceil(shape[1]! / 128)], kind: "fp8-expert-scale" });
        } else {
          r.set(name, { ...w, dtype: "F4", shape, kind: "f4" });
        }
      }
    }
  }
  return ranks;
}

/** Bytes of `narrow(dim, rank * size / mp, size / mp)` of a row-major tensor. */
function narrow(t: T, dim: number, rank: number, mp: number): Uint8Array {
  const inner = t.shape.slice(dim + 1).reduce((a, b) => a * b, 1) * ELEM[t.dtype]!;
  const outer = t.shape.slice(0, dim).reduce((a, b) => a * b, 1);
  const part = (t.shape[dim]! / mp) * inner;
  const out = new Uint8Array(outer * part);
  for (let o = 0; o < outer; o++) out.set(t.data.subarray(o * part * mp + rank * part, o * part * mp + (rank + 1) * part), o * part);
  return out;
}


const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** float32 -> bfloat16 bits, round to nearest even (finite inputs). */
function bf16(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** convert.py's wo_a: (W.float() * scale.float()) per 128x128 tile, one rounding to BF16, rows of rank `rank`. */
function woA(w: T, scale: T, rank: number, mp: number): Uint8Array {
  const [rows, cols] = w.shape as [number, number];
  const sCols = scale.shape[1]!;
  const lo = (rank * rows) / mp;
  const n = rows / mp;
  const out = new Uint16Array(n * cols);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < cols; j++) {
      const e = scale.data[Math.floor((lo + i) / 128) * sCols + Math.floor(j / 128)]!;
      out[i * cols + j] = bf16(Math.fround(e4m3(w.data[(lo + i) * cols + j]!) * 2 ** (e - 127)));
    }
  }
  return new Uint8Array(out.buffer);
}

/** A copy of tiny-dsv4 plus a shard with MTP-own embedding and head tensors (convert.py skips `mtp.*` names with `emb` or ending in `head.weight`). */
async function withMtpEmbedHead(): Promise<string> {
  const dir = join(await tempDir(), "tiny-dsv4-mtp-embed");
  await cp(V4, dir, { recursive: true });
  const src = await inputOf(V4);
  const extra = "model-00004-of-00004.safetensors";
  const specs = [
    { name: "mtp.0.embed.weight", dtype: "BF16" as const, shape: [2048, 256] },
    { name: "mtp.0.head.weight", dtype: "BF16" as const, shape: [2048, 256] },
  ];
  const w = await SafetensorsWriter.create(join(dir, extra), specs, { format: "pt" });
  await w.append("mtp.0.embed.weight", src.get("embed.weight")!.data);
  await w.append("mtp.0.head.weight", src.get("head.weight")!.data);
  await w.commit();
  const index = JSON.parse(await readFile(join(dir, "model.safetensors.index.json"), "utf8"));
  for (const s of specs) index.weight_map[s.name] = extra;
  await writeFile(join(dir, "model.safetensors.index.json"), JSON.stringify(index, null, 2));
  return dir;
}

let mtpInput: string;
let input: Map<string, T>;
let fp8Experts: Map<string, T>;
beforeAll(async () => {
  mtpInput = await withMtpEmbedHead();
  input = await inputOf(mtpInput);
  // fp8-to-bf16 --experts fp8: the same lossless cast, written under the HF names (which V4's demo keeps).
  const out = join(await tempDir(), "experts-fp8");
  const ckpt = await loadCheckpoint(new LocalSource(V4));
  await runFp8ToBf16(ckpt, planFp8ToBf16(ckpt, { experts: "fp8" }), { out, kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true });
  fp8Experts = await inputOf(out);
});

describe("to-demo on tiny-dsv4 as V4's convert.py", () => {
  for (const [mp, expertDtype] of [[1, "fp4"], [2, "fp4"], [2, "fp8"]] as const) {
    it(`--model-parallel ${mp} --expert-dtype ${expertDtype}: every rank file's names, dtypes, shapes, layout and bytes`, async () => {
      const out = join(await tempDir(), `mp${mp}-${expertDtype}`);
      const s = await toDemo(mtpInput, out, { modelParallel: mp, expertDtype });
      const want = convertPy(input, mp, 8, expertDtype);
      expect(s).toMatchObject({ ranks: mp, fp8Dequantized: 4 + 1, fp4CastToFp8: expertDtype === "fp8" ? 3 * 8 * 5 : 0 });
      expect((await readdir(out)).sort()).toEqual([MANIFEST, "config.json", ...want.map((_, i) => `model${i}-mp${mp}.safetensors`), "tokenizer.json", "tokenizer_config.json"].sort());
      for (const f of ["tokenizer.json", "tokenizer_config.json"]) expect((await readFile(join(out, f))).equals(await readFile(join(V4, f))), f).toBe(true);
      const kinds = new Map<string, number>();
      for (const [rank, w] of want.entries()) {
        const got = await tensorsOf(join(out, `model${rank}-mp${mp}.safetensors`));
        expect(got.metadata, "save_file without metadata").toBe(null);
        expect([...got.tensors.keys()].sort()).toEqual([...w.keys()].sort());
        // save_file's layout: dtype descending in the crate's enum order, then name.
        const order = [...w.entries()].sort(([an, a], [bn, b]) => CRATE_DTYPES.indexOf(b.dtype) - CRATE_DTYPES.indexOf(a.dtype) || (an < bn ? -1 : an > bn ? 1 : 0)).map(([n]) => n);
        expect(got.order).toEqual(order);
        for (const [name, x] of w) {
          const g = got.tensors.get(name)!;
          expect([g.dtype, g.shape], name).toEqual([x.dtype, x.shape]);
          const src = input.get(x.from)!;
          let expected: Uint8Array;
          if (x.kind === "wo_a") expected = woA(src, input.get(x.from.replace(".weight", ".scale"))!, rank, mp);
          else if (x.kind === "fp8-expert" || x.kind === "fp8-expert-scale") expected = fp8Experts.get(x.from)!.data;
          else if (x.narrow && mp > 1) expected = narrow(src, x.narrow.dim, x.narrow.rank, mp);
          else expected = src.data;
          if (x.kind === "fp8-expert-scale") expect(fp8Experts.get(x.from)!.shape).toEqual(x.shape);
          expect(Buffer.from(g.data).equals(Buffer.from(expected)), `rank ${rank} ${name} (${x.kind})`).toBe(true);
          kinds.set(x.kind, (kinds.get(x.kind) ?? 0) + 1);
          if (x.narrow && mp > 1) kinds.set("narrowed", (kinds.get("narrowed") ?? 0) + 1);
        }
        expect([...got.tensors.keys()].some((n) => n.startsWith("mtp.0.emb") || n === "mtp.0.head.weight"), "MTP embed/head").toBe(false);
        expect(got.tensors.has("mtp.0.e_proj.weight") && got.tensors.has("mtp.0.hc_head_fn"), "the rest of the MTP module is kept").toBe(true);
      }
      // Each kind of rule was exercised: 5 wo_a (4 layers + MTP), 120 routed expert weights (3 x 8 x 5).
      expect(kinds.get("wo_a")).toBe(5 * mp);
      expect(kinds.get(expertDtype === "fp8" ? "fp8-expert" : "f4")).toBe(120);
      // Split per rank: embed, head, 5 x (wq_b, wq_b.scale, wo_a, wo_b, wo_b.scale, attn_sink) and 2 x the indexer's wq_b, .scale, weights_proj.
      if (mp > 1) expect(kinds.get("narrowed")).toBe(mp * (2 + 5 * 6 + 2 * 3));
    });
  }

  it("writes the V4 demo's ModelArgs: dtype fp8, expert_dtype fp4 only with F4 experts, the config's values", async () => {
    const ckpt = await loadCheckpoint(new LocalSource(V4));
    const plan = planToDemoV4(ckpt, { modelParallel: 2 });
    expect(plan.modelArgs).toEqual({
      dtype: "fp8", scale_fmt: "ue8m0", expert_dtype: "fp4",
      vocab_size: 2048, dim: 256, moe_inter_dim: 128, n_layers: 4, n_hash_layers: 2, n_mtp_layers: 1, n_heads: 4,
      n_routed_experts: 8, n_shared_experts: 1, n_activated_experts: 2, score_func: "sqrtsoftplus", route_scale: 1.5, swiglu_limit: 10,
      q_lora_rank: 128, head_dim: 128, rope_head_dim: 64, norm_eps: 1e-6, o_groups: 2, o_lora_rank: 128, window_size: 16,
      original_seq_len: 512, rope_theta: 10000, rope_factor: 4, beta_fast: 32, beta_slow: 1,
      index_n_heads: 4, index_head_dim: 128, index_topk: 8, hc_mult: 4, hc_sinkhorn_iters: 20, hc_eps: 1e-6,
      compress_rope_theta: 160000, compress_ratios: [0, 4, 128, 4, 0],
    });
    const fp8 = planToDemoV4(ckpt, { modelParallel: 2, expertDtype: "fp8", maxSeqLen: 1024 });
    expect(fp8.modelArgs.expert_dtype).toBeUndefined();
    expect(fp8.modelArgs.max_seq_len).toBe(1024);
  });
});

describe("to-demo V4: refusals, resume", () => {
  async function variant(patch: (dir: string) => Promise<void>): Promise<string> {
    const d = join(await tempDir(), "in");
    await cp(V4, d, { recursive: true });
    await patch(d);
    return d;
  }
  const patchConfig = (p: Record<string, unknown>) => async (d: string) => {
    const cfg = JSON.parse(await readFile(join(d, "config.json"), "utf8"));
    await writeFile(join(d, "config.json"), JSON.stringify({ ...cfg, ...p }));
  };
  /** Overwrites bytes of a tensor in place (offset within the tensor's data). */
  const patchTensor = (name: string, offset: number, bytes: number[]) => async (d: string) => {
    const index = JSON.parse(await readFile(join(d, "model.safetensors.index.json"), "utf8"));
    const file = join(d, index.weight_map[name]);
    const st = await SafetensorsFile.open(file);
    const at = st.header.dataStart + st.entry(name).begin + offset;
    await st.close();
    const buf = await readFile(file);
    buf.set(bytes, at);
    await writeFile(file, buf);
  };
  const plan = async (dir: string, o: DemoPlanV4Options) => planToDemoV4(await loadCheckpoint(new LocalSource(dir)), o);

  it("wo_a with a different scale per 128x128 tile: each rank's BF16 rows are FP8 x 2^(e-127) of their own tile", async () => {
    // The fixture's wo_a tiles all share byte 116; give layers.2's four tiles four different scales.
    const name = "layers.2.attn.wo_a";
    const dir = await variant(patchTensor(`${name}.scale`, 0, [110, 116, 121, 127]));
    const src = await inputOf(dir);
    const out = join(await tempDir(), "demo");
    await toDemo(dir, out, { modelParallel: 2 });
    for (const rank of [0, 1]) {
      const got = (await tensorsOf(join(out, `model${rank}-mp2.safetensors`))).tensors.get(`${name}.weight`)!;
      expect([got.dtype, got.shape]).toEqual(["BF16", [128, 256]]);
      expect(Buffer.from(got.data).equals(Buffer.from(woA(src.get(`${name}.weight`)!, src.get(`${name}.scale`)!, rank, 2))), `rank ${rank}`).toBe(true);
      // Row 0 of the rank, columns 0 and 128 lie in tiles with different scales: their ratio is the scales' ratio.
      const v = new Uint16Array(got.data.buffer, got.data.byteOffset, 128 * 256);
      const w = src.get(`${name}.weight`)!.data;
      const row = rank * 128;
      for (const col of [0, 128]) {
        u32[0] = v[col]! << 16;
        expect(f32[0]).toBe(e4m3(w[row * 256 + col]!) * 2 ** ([110, 116, 121, 127][rank * 2 + col / 128]! - 127));
      }
    }
  });

  it("N not dividing the experts, the heads, the output groups or a split FP8 weight's 128-blocks: an error naming the cause and tensor", async () => {
    await expect(plan(V4, { modelParallel: 3 })).rejects.toThrow(/cannot give 8 routed experts to 3 ranks/);
    await expect(plan(V4, { modelParallel: 8 })).rejects.toThrow(/cannot split 4 attention heads over 8 ranks/);
    await expect(plan(V4, { modelParallel: 4 })).rejects.toThrow(/cannot split 2 output groups over 4 ranks: o_groups must be divisible/);
    const groups4 = await variant(patchConfig({ o_groups: 4 }));
    await expect(plan(groups4, { modelParallel: 4 })).rejects.toThrow(
      /cannot split FP8 weight layers\.0\.attn\.wo_b\.weight \[256,256\] into 4 ranks along dim 1: each rank would get 64, not a multiple of the 128-wide scale blocks, so a block would straddle ranks.*tensor layers\.0\.attn\.wo_b\.weight/);
    await expect(plan(V4, { modelParallel: 2, nExperts: 16 })).rejects.toThrow(/--n-experts 16 disagrees with n_routed_experts 8/);
    // With the config checks passed (heads and groups patched to 8), the first tensor convert.py's assert would stop at.
    const heads8 = await variant(patchConfig({ num_attention_heads: 8, o_groups: 8 }));
    await expect(plan(heads8, { modelParallel: 8 })).rejects.toThrow(
      /cannot split layers\.0\.attn\.attn_sink \[4\] into 8 ranks along dim 0: dim 0 has 4, not divisible by 8.*tensor layers\.0\.attn\.attn_sink/);
  });

  it("--expert-dtype fp8 refuses a tile the cast would round, naming the tensor and tile; leaves no rank file", async () => {
    // Group 0 of row 0 of an expert's w1 gets scale byte 100 (< its tile's max - 14) while its codes are nonzero.
    const name = "layers.3.ffn.experts.0.w1";
    const bad = await variant(patchTensor(`${name}.scale`, 0, [100]));
    const src = await inputOf(bad);
    expect(src.get(`${name}.weight`)!.data.subarray(0, 16).some((b) => (b & 0x77) !== 0)).toBe(true);
    const out = join(await tempDir(), "demo");
    await expect(toDemo(bad, out, { modelParallel: 2, expertDtype: "fp8" })).rejects.toThrow(
      /FP4 -> FP8 cast of 128x128 tile \[0, 0\] would not be lossless: row 0, elements 0\.\.31 have scale byte 100.*write the experts as FP4 instead \(without --expert-dtype fp8\).*tensor layers\.3\.ffn\.experts\.0\.w1\.weight/);
    expect((await readdir(out)).filter((f) => f.endsWith(".safetensors"))).toEqual([]);
    // As F4 the same experts are written as stored (convert.py does not look at the values).
    await expect(toDemo(bad, join(await tempDir(), "demo"), { modelParallel: 2 })).resolves.toBeTruthy();
  });

  it("an E8M0 scale byte 255 (NaN) is refused, in a kept scale and in wo_a's", async () => {
    for (const name of ["layers.1.attn.wq_b.scale", "layers.1.attn.wo_a.scale", "layers.2.ffn.experts.5.w2.scale"]) {
      const bad = await variant(patchTensor(name, 1, [255]));
      await expect(toDemo(bad, join(await tempDir(), "demo"), { modelParallel: 2 }), name).rejects.toThrow(/E8M0 scale byte 255 \(NaN\) at \[\d+, \d+\]/);
    }
  });

  it("--max-seq-len 0 is a usage error", async () => {
    const err = await plan(V4, { modelParallel: 1, maxSeqLen: 0 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeepcastError);
    expect((err as DeepcastError).code).toBe("USAGE");
  });

  it("resumes after a crash from the last durable input shard and ends byte-identical", async () => {
    const ref = join(await tempDir(), "demo");
    await toDemo(V4, ref, { modelParallel: 2, expertDtype: "fp8" });
    const out = join(await tempDir(), "demo");
    let shards = 0;
    let chunks = 0;
    await expect(toDemo(V4, out, { modelParallel: 2, expertDtype: "fp8" }, {
      chunkBytes: 16 * 1024,
      onEvent: (e) => {
        if (e.kind === "shard") shards++;
        if (e.kind === "bytes" && shards === 1 && ++chunks === 20) throw new Error("simulated crash");
      },
    })).rejects.toThrow("simulated crash");
    expect(JSON.parse(await readFile(join(out, MANIFEST), "utf8")).progress).toEqual({ shardsDone: 1 });
    const resumed = await toDemo(V4, out, { modelParallel: 2, expertDtype: "fp8" }, { threads: 1 });
    expect(resumed).toMatchObject({ resumedShards: 1, resumedFiles: 0 });
    const hash = async (d: string) => Object.fromEntries(await Promise.all((await readdir(d)).filter((f) => f !== MANIFEST).sort().map(async (f) => [f, sha256(await readFile(join(d, f)))])));
    expect(await hash(out)).toEqual(await hash(ref));
    // Another expert dtype is another output: not a resume.
    await expect(toDemo(V4, out, { modelParallel: 2 })).rejects.toThrow(/different inputs or options/);
  });
});

describe("to-demo V4 at full scale and from the CLI", () => {
  it("plans V4-Flash (sparse replica) at mp 4 as DeepSeek's README runs it, with DeepSeek's inference/config.json as ModelArgs", async () => {
    const dir = join(await tempDir("deepcast-dsv4-replica-"), "DeepSeek-V4-Flash");
    await writeDsv4Replica(dir, { variant: "flash" });
    const t0 = performance.now();
    const plan = planToDemoV4(await loadCheckpoint(new LocalSource(dir)), { modelParallel: 4 });
    expect((performance.now() - t0) / 1000).toBeLessThan(30);
    // DeepSeek-V4-Flash inference/config.json (Mockingjay1316/deepseek-v4-flash-spark @ 0825add), key for key,
    // plus the keys deepcast also writes from the HF config (n_mtp_layers, norm_eps, hc_eps at their ModelArgs defaults).
    expect(plan.modelArgs).toEqual({
      vocab_size: 129280, dim: 4096, moe_inter_dim: 2048, n_layers: 43, n_hash_layers: 3, n_heads: 64, n_routed_experts: 256,
      n_shared_experts: 1, n_activated_experts: 6, score_func: "sqrtsoftplus", route_scale: 1.5, swiglu_limit: 10.0, q_lora_rank: 1024,
      head_dim: 512, rope_head_dim: 64, o_groups: 8, o_lora_rank: 1024, window_size: 128, original_seq_len: 65536, rope_theta: 10000,
      rope_factor: 16, beta_fast: 32, beta_slow: 1, index_n_heads: 64, index_head_dim: 128, index_topk: 512, hc_mult: 4,
      hc_sinkhorn_iters: 20, dtype: "fp8", scale_fmt: "ue8m0", expert_dtype: "fp4", compress_rope_theta: 160000,
      compress_ratios: [0, 0, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 0],
      n_mtp_layers: 1, norm_eps: 1e-6, hc_eps: 1e-6,
    });
    const r1 = new Map(plan.ranks[1]!.tensors.map((t) => [t.name, t]));
    expect(r1.get("embed.weight")).toMatchObject({ dtype: "BF16", shape: [32320, 4096] });
    expect(r1.get("layers.2.attn.wq_b.weight")).toMatchObject({ dtype: "F8_E4M3", shape: [8192, 1024] });
    expect(r1.get("layers.2.attn.wq_b.scale")).toMatchObject({ dtype: "F8_E8M0", shape: [64, 8] });
    expect(r1.get("layers.2.attn.wo_a.weight")).toMatchObject({ dtype: "BF16", shape: [2048, 4096] });
    expect(r1.has("layers.2.attn.wo_a.scale")).toBe(false);
    expect(r1.get("layers.2.attn.wo_b.weight")).toMatchObject({ dtype: "F8_E4M3", shape: [4096, 2048] });
    expect(r1.get("layers.2.attn.wo_b.scale")).toMatchObject({ dtype: "F8_E8M0", shape: [32, 16] });
    expect(r1.get("layers.2.attn.indexer.wq_b.weight")).toMatchObject({ shape: [2048, 1024] });
    expect(r1.get("layers.2.attn.indexer.weights_proj.weight")).toMatchObject({ shape: [16, 4096] });
    expect(r1.get("layers.2.attn.attn_sink")).toMatchObject({ shape: [16] });
    expect(r1.get("layers.2.ffn.experts.64.w1.weight")).toMatchObject({ dtype: "F4", shape: [2048, 4096] });
    expect(r1.get("layers.2.ffn.experts.64.w1.scale")).toMatchObject({ dtype: "F8_E8M0", shape: [2048, 128] });
    expect(r1.has("layers.2.ffn.experts.63.w1.weight") || r1.has("layers.2.ffn.experts.128.w1.weight")).toBe(false);
    expect(r1.get("layers.0.ffn.gate.tid2eid")).toMatchObject({ dtype: "I64", shape: [129280, 6] });
    expect(r1.get("mtp.0.ffn.experts.127.w2.weight")).toMatchObject({ dtype: "F4", shape: [4096, 2048] });
    // 167.9 GB: the 159.6 GB checkpoint (FP4 experts byte for byte), wo_a twice as large in BF16, the replicated tensors four times.
    expect(plan.outputBytes / 1e9).toBeGreaterThan(167.5);
    expect(plan.outputBytes / 1e9).toBeLessThan(168.5);
  }, 120_000);

  const cli = (...args: string[]) =>
    spawnSync(process.execPath, ["--import", "tsx", join(ROOT, "src/cli/main.ts"), ...args], { cwd: ROOT, encoding: "utf8", env: { ...process.env, HF_HUB_OFFLINE: "1" } });

  it("--dry-run --json plans the V4 rank files; --dtype bf16 on V4 and --expert-dtype on V3 exit 2", async () => {
    const out = join(await tempDir(), "never");
    const r = cli("to-demo", V4, out, "--model-parallel", "2", "--expert-dtype", "fp8", "--dry-run", "--json");
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ command: "to-demo", modelParallel: 2, nExperts: 8, expertDtype: "fp8", fp4CastToFp8: 120, skippedMtpTensors: 0, droppedScales: 5, fp8Dequantized: 5 });
    expect(j.files).toEqual(["config.json", "tokenizer.json", "tokenizer_config.json"]);
    expect(j.ranks.map((x: { file: string }) => x.file)).toEqual(["model0-mp2.safetensors", "model1-mp2.safetensors"]);
    expect(await readdir(out).catch(() => null)).toBeNull();

    const bf16 = cli("to-demo", V4, out, "--model-parallel", "2", "--dtype", "bf16");
    expect(bf16.status).toBe(2);
    expect(bf16.stderr).toMatch(/^deepcast: error: --dtype bf16 is for DeepSeek-V3\/V3\.2/m);
    const v3 = cli("to-demo", join(ROOT, "fixtures", "tiny-dsv3"), out, "--model-parallel", "1", "--expert-dtype", "fp8");
    expect(v3.status).toBe(2);
    expect(v3.stderr).toMatch(/--expert-dtype is for DeepSeek-V4/);
    expect(await readdir(out).catch(() => null)).toBeNull();
  });
});
