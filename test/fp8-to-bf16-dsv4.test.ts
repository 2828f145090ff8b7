/**
 * fp8-to-bf16 on DeepSeek-V3.2 (V3's arithmetic, the indexer included) and DeepSeek-V4 (FP8 x 2^(e-127)
 * with E8M0 tiles, packed FP4 experts e2m1 x 2^(e-127), both exact in BF16; `--experts fp8`: the
 * lossless FP4 -> FP8 cast). Every output value is checked against a decode written here from the
 * format definitions, independent of deepcast's kernels.
 */
import { copyFile, mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";

import { planFp8ToBf16, runFp8ToBf16, type ExpertsMode, type RunOptions } from "../src/convert/fp8-to-bf16.js";
import { MANIFEST } from "../src/convert/run-state.js";
import { DeepcastError } from "../src/errors.js";
import { loadCheckpoint } from "../src/io/checkpoint.js";
import { checkCheckpointConfig } from "../src/io/hf-config.js";
import { SafetensorsFile } from "../src/io/safetensors.js";
import { LocalSource } from "../src/io/source.js";
import { kernels, tsKernels } from "../src/quant/kernels.js";
import { FIXTURE, ROOT, sha256, tempDir } from "./helpers.js";
import { e2m1, e4m3 } from "./numeric.js";

const V32 = join(ROOT, "fixtures", "tiny-dsv32");
const V4 = join(ROOT, "fixtures", "tiny-dsv4");

async function convert(input: string, out: string, extra: Partial<RunOptions> & { experts?: ExpertsMode } = {}) {
  const ckpt = await loadCheckpoint(new LocalSource(input));
  checkCheckpointConfig(ckpt, "present");
  const plan = planFp8ToBf16(ckpt, { experts: extra.experts });
  return runFp8ToBf16(ckpt, plan, { out, kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true, ...extra });
}

/** Every tensor of a checkpoint folder: name -> {dtype, shape, bytes}. */
async function tensorsOf(dir: string): Promise<Map<string, { dtype: string; shape: number[]; data: Uint8Array }>> {
  const out = new Map<string, { dtype: string; shape: number[]; data: Uint8Array }>();
  for (const f of (await readdir(dir)).filter((x) => x.endsWith(".safetensors"))) {
    const st = await SafetensorsFile.open(join(dir, f));
    for (const t of st.tensors) {
      const data = new Uint8Array(t.end - t.begin);
      await st.read(t.name, data);
      out.set(t.name, { dtype: t.dtype, shape: t.shape, data });
    }
    await st.close();
  }
  return out;
}

async function hashTree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).sort()) if (f !== MANIFEST) out[f] = sha256(await readFile(join(dir, f)));
  return out;
}

// ---- the format definitions, decoded here ---------------------------------------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** BF16 bits of a value that must be exact in BF16 (asserted). */
function exactBf16(v: number): number {
  f32[0] = v;
  if (f32[0] !== v || (u32[0]! & 0xffff) !== 0) throw new Error(`${v} is not exact in bf16`);
  return u32[0]! >>> 16;
}
/** bf16 RNE of the f32 product (V3's fp8_cast_bf16.py arithmetic). */
function rneBf16(v: number): number {
  f32[0] = v;
  const u = u32[0]!;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}
const u16 = (b: Uint8Array) => new Uint16Array(b.buffer, b.byteOffset, b.length / 2);
const f32s = (b: Uint8Array) => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));

describe("fp8-to-bf16 on tiny-dsv32 (DeepSeek-V3.2)", () => {
  it("dequantizes every FP8 weight, the indexer's included, as bf16(f32(fp8) * scale_inv); drops the scales and quantization_config", async () => {
    const out = join(await tempDir(), "bf16");
    const summary = await convert(V32, out);
    const src = await tensorsOf(V32);
    const dst = await tensorsOf(out);
    let fp8 = 0;
    for (const [name, t] of src) {
      if (name.endsWith("_scale_inv")) {
        expect(dst.has(name)).toBe(false);
        continue;
      }
      const o = dst.get(name)!;
      if (t.dtype !== "F8_E4M3") {
        expect(o.dtype).toBe(t.dtype);
        expect(Buffer.from(o.data).equals(Buffer.from(t.data)), name).toBe(true);
        continue;
      }
      fp8++;
      const [rows, cols] = t.shape as [number, number];
      const scale = f32s(src.get(`${name}_scale_inv`)!.data);
      const sc = Math.ceil(cols / 128);
      const got = u16(o.data);
      expect(o.dtype).toBe("BF16");
      for (let i = 0; i < rows * cols; i++) {
        const want = rneBf16(Math.fround(e4m3(t.data[i]!) * scale[Math.floor(i / cols / 128) * sc + Math.floor((i % cols) / 128)]!));
        if (got[i] !== want) throw new Error(`${name}[${i}]: ${got[i]} != ${want}`);
      }
    }
    expect(fp8).toBe(146);
    expect(summary.fp8Tensors).toBe(146);
    for (let l = 0; l <= 4; l++) expect(dst.get(`model.layers.${l}.self_attn.indexer.wk.weight`)!.dtype).toBe("BF16");
    const cfg = JSON.parse(await readFile(join(out, "config.json"), "utf8"));
    const orig = JSON.parse(await readFile(join(V32, "config.json"), "utf8"));
    delete orig.quantization_config;
    expect(cfg).toEqual(orig);
    const idx = JSON.parse(await readFile(join(out, "model.safetensors.index.json"), "utf8"));
    expect(Object.keys(idx.weight_map).some((n) => n.endsWith("_scale_inv"))).toBe(false);
    expect(Object.keys(idx.weight_map)).toHaveLength(dst.size);
  });
});

describe("fp8-to-bf16 on tiny-dsv4 (DeepSeek-V4)", () => {
  let out: string;
  let src: Awaited<ReturnType<typeof tensorsOf>>;
  let inputBefore: Record<string, string>;
  beforeAll(async () => {
    inputBefore = await hashTree(V4);
    out = join(await tempDir(), "bf16");
    await convert(V4, out);
    src = await tensorsOf(V4);
  });

  it("FP8 x 2^(e-127) and FP4 e2m1 x 2^(e-127), exact in BF16 (code 8 +0), every other tensor as stored, no .scale left", async () => {
    const dst = await tensorsOf(out);
    let fp8 = 0;
    let fp4 = 0;
    let zeros = 0;
    for (const [name, t] of src) {
      if (name.endsWith(".scale")) {
        expect(dst.has(name), name).toBe(false);
        continue;
      }
      const o = dst.get(name)!;
      const scale = src.get(name.replace(/\.weight$/, ".scale"));
      if (t.dtype === "F8_E4M3") {
        fp8++;
        const [rows, cols] = t.shape as [number, number];
        const sc = Math.ceil(cols / 128);
        expect([o.dtype, o.shape]).toEqual(["BF16", [rows, cols]]);
        const got = u16(o.data);
        for (let i = 0; i < rows * cols; i++) {
          const e = scale!.data[Math.floor(i / cols / 128) * sc + Math.floor((i % cols) / 128)]!;
          if (got[i] !== exactBf16(e4m3(t.data[i]!) * 2 ** (e - 127))) throw new Error(`${name}[${i}]`);
        }
      } else if (t.dtype === "I8") {
        fp4++;
        const [rows, packed] = t.shape as [number, number];
        const cols = packed * 2;
        expect([o.dtype, o.shape]).toEqual(["BF16", [rows, cols]]);
        const got = u16(o.data);
        for (let i = 0; i < rows * cols; i++) {
          const b = t.data[i >> 1]!;
          const code = i & 1 ? b >> 4 : b & 15;
          const e = scale!.data[Math.floor(i / cols) * (cols / 32) + Math.floor((i % cols) / 32)]!;
          if (code === 8) zeros++;
          if (got[i] !== exactBf16(e2m1(code) * 2 ** (e - 127))) throw new Error(`${name}[${i}]`);
        }
      } else {
        expect(o.dtype, name).toBe(t.dtype);
        expect(Buffer.from(o.data).equals(Buffer.from(t.data)), name).toBe(true);
      }
    }
    expect([fp8, fp4]).toEqual([44, 120]);
    expect(zeros).toBeGreaterThan(100_000); // the -0 codes really were there, and came out +0
    expect(dst.get("layers.0.ffn.gate.tid2eid")!.dtype).toBe("I64");
  });

  it("writes a config without quantization_config and expert_dtype, the index without scales, leaves the input untouched", async () => {
    const cfg = JSON.parse(await readFile(join(out, "config.json"), "utf8"));
    const orig = JSON.parse(await readFile(join(V4, "config.json"), "utf8"));
    delete orig.quantization_config;
    delete orig.expert_dtype;
    expect(cfg).toEqual(orig);
    const idx = JSON.parse(await readFile(join(out, "model.safetensors.index.json"), "utf8"));
    expect(Object.keys(idx.weight_map).filter((n) => n.endsWith(".scale"))).toEqual([]);
    expect(Object.keys(idx.weight_map)).toHaveLength([...src.keys()].filter((n) => !n.endsWith(".scale")).length);
    for (const f of ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]) {
      expect((await readFile(join(out, f))).equals(await readFile(join(V4, f)))).toBe(true);
    }
    expect(await hashTree(V4)).toEqual(inputBefore);
  });

  it("the TypeScript kernels write the same bytes as the native ones", async () => {
    const out2 = join(await tempDir(), "ts");
    await convert(V4, out2, { kernels: tsKernels, threads: 1 });
    expect(await hashTree(out2)).toEqual(await hashTree(out));
  });

  it("resumes after an interruption and ends byte-identical to an uninterrupted run", async () => {
    const out2 = join(await tempDir(), "bf16");
    const first = await readFile(join(out, "model-00001-of-00003.safetensors"));
    const firstData = first.length - 8 - Number(first.readBigUInt64LE(0));
    let written = 0;
    let after = 0;
    await expect(convert(V4, out2, {
      chunkBytes: 16 * 1024,
      onEvent: (e) => {
        if (e.kind !== "bytes") return;
        written += e.outBytes;
        if (written > firstData && ++after === 5) throw new Error("simulated crash");
      },
    })).rejects.toThrow("simulated crash");
    const partial = await readdir(out2);
    expect(partial).toContain("model-00001-of-00003.safetensors");
    expect(partial).not.toContain("model-00002-of-00003.safetensors");
    expect(partial.some((f) => f.endsWith(".partial") && f !== `${MANIFEST}.partial`)).toBe(false);
    const resumed = await convert(V4, out2, { threads: 1 });
    expect(resumed.resumedShards).toBe(1);
    expect(await hashTree(out2)).toEqual(await hashTree(out));
    // A different mode is a different output: not resumed into this folder.
    await expect(convert(V4, out2, { experts: "fp8" })).rejects.toThrow(/different inputs or options/);
  });
});

describe("fp8-to-bf16 --experts fp8 on tiny-dsv4", () => {
  it("casts every FP4 expert to FP8 losslessly (value and tile scale), keeps everything else as stored", async () => {
    const out = join(await tempDir(), "fp8");
    const summary = await convert(V4, out, { experts: "fp8" });
    expect(summary.fp8Tensors).toBe(120);
    const src = await tensorsOf(V4);
    const dst = await tensorsOf(out);
    expect([...dst.keys()].sort()).toEqual([...src.keys()].sort());
    let cast = 0;
    for (const [name, t] of src) {
      const o = dst.get(name)!;
      if (t.dtype === "I8") {
        cast++;
        const [rows, packed] = t.shape as [number, number];
        const cols = packed * 2;
        const s4 = src.get(name.replace(/\.weight$/, ".scale"))!.data;
        const s8 = dst.get(name.replace(/\.weight$/, ".scale"))!;
        expect([o.dtype, o.shape, s8.dtype, s8.shape]).toEqual(["F8_E4M3", [rows, cols], "F8_E8M0", [rows / 128, cols / 128]]);
        for (let i = 0; i < rows * cols; i++) {
          const r = Math.floor(i / cols), c = i % cols;
          const b = t.data[i >> 1]!;
          const v4 = e2m1(i & 1 ? b >> 4 : b & 15) * 2 ** (s4[r * (cols / 32) + (c >> 5)]! - 127);
          const v8 = e4m3(o.data[i]!) * 2 ** (s8.data[(r >> 7) * (cols / 128) + (c >> 7)]! - 127);
          if (v4 !== v8 || (v8 === 0 && o.data[i] !== 0)) throw new Error(`${name}[${i}]: ${v8} != ${v4}`);
        }
      } else if (!(name.endsWith(".scale") && src.get(name.replace(/\.scale$/, ".weight"))?.dtype === "I8")) {
        expect(o.dtype, name).toBe(t.dtype);
        expect(Buffer.from(o.data).equals(Buffer.from(t.data)), name).toBe(true);
      }
    }
    expect(cast).toBe(120);
    const cfg = JSON.parse(await readFile(join(out, "config.json"), "utf8"));
    const orig = JSON.parse(await readFile(join(V4, "config.json"), "utf8"));
    expect(cfg).toEqual({ ...orig, expert_dtype: "fp8" });
    // The TypeScript twin of the cast writes the same bytes.
    const ts = join(await tempDir(), "ts");
    await convert(V4, ts, { experts: "fp8", kernels: tsKernels, threads: 1 });
    expect(await hashTree(ts)).toEqual(await hashTree(out));
  });

  it("refuses a tile the cast cannot keep exact, naming the tensor, tile and group", async () => {
    // Lower one group's scale byte of expert 3's w2 by 15 below its tile's maximum: its nonzero codes would round.
    const d = await copyV4();
    const name = "layers.2.ffn.experts.3.w2";
    await patchTensor(d, `${name}.scale`, (b) => { b[5 * 4 + 1] = b[5 * 4 + 1]! - 15 - 2; });
    const e = await convert(d, join(await tempDir(), "o"), { experts: "fp8" }).then(() => null, (x: unknown) => x);
    expect(e).toBeInstanceOf(DeepcastError);
    expect((e as DeepcastError).code).toBe("UNSUPPORTED");
    expect((e as Error).message).toMatch(/FP4 -> FP8 cast of 128x128 tile \[0, 0\] would not be lossless: row 5, elements 32\.\.63 have scale byte \d+, 1[5-9] below/);
    expect((e as Error).message).toContain(`tensor ${name}.weight`);
    // Without --experts fp8 the same checkpoint converts (BF16 holds every value).
    await expect(convert(d, join(await tempDir(), "o"))).resolves.toBeTruthy();
  });

  it("is a usage error on a checkpoint without FP4 experts", async () => {
    const e = await convert(FIXTURE, join(await tempDir(), "o"), { experts: "fp8" }).then(() => null, (x: unknown) => x);
    expect((e as DeepcastError).code).toBe("USAGE");
  });
});

async function copyV4(): Promise<string> {
  const d = join(await tempDir(), "in");
  await mkdir(d);
  for (const f of await readdir(V4)) await copyFile(join(V4, f), join(d, f));
  return d;
}

/** Edits the data of one tensor in place (same size). */
async function patchTensor(dir: string, tensor: string, edit: (b: Uint8Array) => void): Promise<string> {
  const idx = JSON.parse(await readFile(join(dir, "model.safetensors.index.json"), "utf8"));
  const file = join(dir, idx.weight_map[tensor]);
  const buf = await readFile(file);
  const n = Number(buf.readBigUInt64LE(0));
  const t = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"))[tensor];
  edit(buf.subarray(8 + n + t.data_offsets[0], 8 + n + t.data_offsets[1]));
  await writeFile(file, buf);
  return idx.weight_map[tensor];
}

describe("fp8-to-bf16 refuses bad E8M0 scales, naming the file, tensor and position", () => {
  it("byte 255 (NaN) in an FP8 weight's .scale", async () => {
    const d = await copyV4();
    const file = await patchTensor(d, "layers.1.attn.wq_b.scale", (b) => { b[2] = 255; });
    const e = await convert(d, join(await tempDir(), "o")).then(() => null, (x: unknown) => x) as DeepcastError;
    expect(e.code).toBe("BAD_SCALE");
    expect(e.message).toMatch(new RegExp(`E8M0 scale byte 255 \\(NaN\\) at \\[2, 0\\].*${file}.*layers\\.1\\.attn\\.wq_b\\.scale`, "s"));
  });

  it("byte 255 in a packed FP4 expert's .scale, in both modes, leaving no half-written shard", async () => {
    const d = await copyV4();
    await patchTensor(d, "layers.3.ffn.experts.5.w2.scale", (b) => { b[7 * 4 + 2] = 255; });
    for (const experts of ["bf16", "fp8"] as const) {
      const o = join(await tempDir(), "o");
      const e = await convert(d, o, { experts }).then(() => null, (x: unknown) => x) as DeepcastError;
      expect(e.code).toBe("BAD_SCALE");
      expect(e.message).toMatch(/E8M0 scale byte 255 \(NaN\) at \[7, 2\].*model-00003-of-00003\.safetensors.*layers\.3\.ffn\.experts\.5\.w2\.scale/s);
      expect((await readdir(o)).filter((f) => f.endsWith(".partial") && f !== `${MANIFEST}.partial`)).toEqual([]);
    }
  });

  it("a scale byte so large the values overflow, unless --allow-non-finite", async () => {
    const d = await copyV4();
    await patchTensor(d, "layers.0.attn.wkv.scale", (b) => { b[1] = 250; });
    const e = await convert(d, join(await tempDir(), "o")).then(() => null, (x: unknown) => x) as DeepcastError;
    expect(e.code).toBe("BAD_SCALE");
    expect(e.message).toMatch(/E8M0 scale byte 250 \(2\^123\) at \[0, 1\] is absurdly large.*layers\.0\.attn\.wkv\.scale/s);
    await expect(convert(d, join(await tempDir(), "o"), { allowNonFinite: true })).resolves.toBeTruthy();
  });

  it("a hash-routing table entry that names no expert", async () => {
    const d = await copyV4();
    // tid2eid is I64 [2048, 2]: entry [100, 1] becomes 8 (experts are 0..7).
    await patchTensor(d, "layers.1.ffn.gate.tid2eid", (b) => { new DataView(b.buffer, b.byteOffset).setBigInt64((100 * 2 + 1) * 8, 8n, true); });
    const e = await convert(d, join(await tempDir(), "o"), { chunkBytes: 1024 }).then(() => null, (x: unknown) => x) as DeepcastError;
    expect(e).toBeInstanceOf(DeepcastError);
    expect(e.message).toMatch(/hash-routing table entry \[100, 1\] = 8 is not an expert index \(n_routed_experts 8\).*layers\.1\.ffn\.gate\.tid2eid/s);
  });

  it("--experts fp8 keeps FP8 weights as stored but still refuses their NaN codes", async () => {
    const d = await copyV4();
    await patchTensor(d, "layers.2.attn.wo_b.weight", (b) => { b[256 * 3 + 5] = 0xff; });
    const e = await convert(d, join(await tempDir(), "o"), { experts: "fp8" }).then(() => null, (x: unknown) => x) as DeepcastError;
    expect(e.code).toBe("NON_FINITE");
    expect(e.message).toMatch(/1 FP8 NaN code.*row 3, column 5.*layers\.2\.attn\.wo_b\.weight/s);
  });

  it("a config that contradicts the tensors (compress ratio without a compressor)", async () => {
    const d = await copyV4();
    const cfg = JSON.parse(await readFile(join(d, "config.json"), "utf8"));
    cfg.compress_ratios = [4, 4, 128, 4, 0];
    await writeFile(join(d, "config.json"), JSON.stringify(cfg));
    const e = await convert(d, join(await tempDir(), "o")).then(() => null, (x: unknown) => x) as DeepcastError;
    expect(e.code).toBe("CONFIG_MISMATCH");
    expect(e.message).toMatch(/compress_ratios\[0\] = 4, but layers\.0 has no attention compressor/);
  });
});
