import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { DeepcastError } from "../src/errors.js";
import { GgufWriter } from "../src/io/gguf-writer.js";
import { kv } from "../src/io/gguf-kv.js";
import { planGgufLayout, type GgufTensorSpec } from "../src/io/gguf-layout.js";
import { imatrixForTensors, imatrixKvs, parseImatrix, type Imatrix } from "../src/io/imatrix.js";
import { LocalSource } from "../src/io/source.js";
import { kernels } from "../src/quant/kernels.js";
import { FIXTURE, ROOT, sha256, tempDir } from "./helpers.js";

// ---------------------------------------------------------------------------------------------
// writing imatrix files the way llama-imatrix (llama.cpp v0.4.0, tools/imatrix/imatrix.cpp) does
// ---------------------------------------------------------------------------------------------

/** What llama-imatrix accumulates for one weight: raw sums of squared activations and token counts. */
interface RawEntry {
  name: string;
  /** n_mat * ne0 sums (ne0 = nval / n_mat). */
  sums: Float32Array;
  /** n_mat counts (experts of an `_exps` tensor, else 1). */
  counts: number[];
}

const f = Math.fround;

/** save_imatrix (GGUF): KVs, then per entry (sorted by name) `<name>.in_sum2` [ne0, n_mat] and `<name>.counts` [1, n_mat]. */
async function writeGgufImatrix(path: string, entries: RawEntry[], meta: { datasets: string[]; chunkCount: number; chunkSize: number }): Promise<Buffer> {
  const sorted = [...entries].sort((a, b) => (a.name < b.name ? -1 : 1));
  const trim = (ne: number[]) => (ne[1] === 1 ? [ne[0]!] : ne);
  const specs: GgufTensorSpec[] = [];
  const data: Float32Array[] = [];
  for (const e of sorted) {
    const nMat = e.counts.length;
    specs.push({ name: `${e.name}.in_sum2`, ne: trim([e.sums.length / nMat, nMat]), type: "F32" });
    specs.push({ name: `${e.name}.counts`, ne: trim([1, nMat]), type: "F32" });
    data.push(e.sums, Float32Array.from(e.counts));
  }
  const layout = planGgufLayout(path, [
    kv.str("general.type", "imatrix"),
    kv.arr("imatrix.datasets", "STRING", meta.datasets),
    kv.u32("imatrix.chunk_count", meta.chunkCount),
    kv.u32("imatrix.chunk_size", meta.chunkSize),
  ], specs);
  const w = await GgufWriter.create(layout);
  for (const [i, s] of specs.entries()) await w.append(s.name, new Uint8Array(data[i]!.buffer));
  await w.commit();
  return readFile(path);
}

/** save_imatrix_legacy: entries without any data skipped; value = (sum / count) * ncall, count 0 -> 1 / 1. */
function legacyImatrix(entries: RawEntry[], meta: { chunkCount: number; chunkSize: number; dataset: string }): Buffer {
  const parts: Buffer[] = [];
  const i32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    parts.push(b);
  };
  const kept = [...entries].filter((e) => e.counts.some((c) => c !== 0)).sort((a, b) => (a.name < b.name ? -1 : 1));
  i32(kept.length);
  for (const e of kept) {
    const name = Buffer.from(e.name, "utf8");
    i32(name.length);
    parts.push(name);
    const ncall = Math.trunc((Math.max(...e.counts) + meta.chunkSize - 1) / meta.chunkSize);
    i32(ncall);
    i32(e.sums.length);
    const per = e.sums.length / e.counts.length;
    const vals = new Float32Array(e.sums.length);
    for (let i = 0; i < vals.length; i++) {
      let count = f(e.counts[Math.floor(i / per)]!);
      let value = e.sums[i]!;
      if (count === 0) [value, count] = [1, 1];
      vals[i] = f(f(value / count) * f(ncall));
    }
    parts.push(Buffer.from(vals.buffer));
  }
  i32(meta.chunkCount);
  const ds = Buffer.from(meta.dataset, "utf8");
  i32(ds.length);
  parts.push(ds);
  return Buffer.concat(parts);
}

/** mulberry32 seeded by FNV-1a of a string. */
function rng(seed: string): () => number {
  let a = 0x811c9dc5;
  for (const ch of Buffer.from(seed, "utf8")) a = Math.imul(a ^ ch, 0x01000193) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface ListingTensor { name: string; type: string; ne: number[]; file_offset: number; nbytes: number; sha256: string }
interface Listing { file_size: number; file_sha256: string; kv: { key: string; type: string; value?: unknown }[]; tensors: ListingTensor[] }

const readJson = async <T>(...p: string[]) => JSON.parse(await readFile(join(ROOT, "fixtures", ...p), "utf8")) as T;

/**
 * Deterministic entries for every weight llama-imatrix collects from the fixture's GGUF: each `blk.*`
 * matrix multiplied with activations (2+-D `.weight`, the router too); per expert for `_exps`
 * (MUL_MAT_ID), one count for the per-head 3-D attn_k_b / attn_v_b. token_embd (a row lookup) and
 * output.weight (not collected without --process-output) get none.
 */
async function fixtureEntries(): Promise<RawEntry[]> {
  const bf16 = await readJson<Listing>("llama-cpp-tiny-dsv3", "tiny-dsv3-BF16.listing.json");
  const out: RawEntry[] = [];
  for (const t of bf16.tensors) {
    if (!t.name.startsWith("blk.") || !t.name.endsWith(".weight") || t.ne.length < 2 || t.name.includes("_norm")) continue;
    const r = rng(t.name);
    const ne0 = t.ne[0]!;
    const nMat = t.name.includes("_exps") ? t.ne[2]! : 1;
    const per = t.name.includes("_exps") ? ne0 : ne0 * (t.ne[2] ?? 1);
    const counts = Array.from({ length: nMat }, () => 16 + Math.floor(r() * 300));
    // an expert no token was routed to (llama-imatrix keeps such partial entries; quantize uses 1.0)
    if (t.name === "blk.2.ffn_up_exps.weight") counts[5] = 0;
    // a count that is not an integer (llama-quantize lround()s counts)
    if (t.name === "blk.1.ffn_down_exps.weight") counts[3] = 40.5;
    const sums = new Float32Array(per * nMat);
    for (let m = 0; m < nMat; m++) {
      for (let i = 0; i < per; i++) {
        // a few input columns that never see a non-zero activation
        const dead = t.name === "blk.3.ffn_down_shexp.weight" && i % 37 === 5;
        sums[m * per + i] = counts[m] === 0 || dead ? 0 : f(counts[m]! * f(Math.exp((r() - 0.5) * 8)));
      }
    }
    out.push({ name: t.name, sums, counts });
  }
  return out;
}

interface ImatrixFiles {
  gguf: Buffer;
  dat: Buffer;
}

/**
 * The two imatrix files behind fixtures/llama-cpp-tiny-dsv3-imatrix:
 *  - tiny-dsv3.imatrix.gguf: every collected entry except blk.0.attn_q_b.weight ("did not find weights");
 *  - tiny-dsv3.imatrix.dat (legacy): every entry except blk.3.ffn_up_shexp.weight, plus a token_embd.weight
 *    entry of the wrong size (llama-quantize then quantizes token_embd without weights and goes on).
 */
async function buildImatrixFiles(dir: string): Promise<ImatrixFiles> {
  const entries = await fixtureEntries();
  const gguf = await writeGgufImatrix(join(dir, "tiny-dsv3.imatrix.gguf"), entries.filter((e) => e.name !== "blk.0.attn_q_b.weight"), {
    datasets: ["tiny-dsv3-imatrix-test.txt"], chunkCount: 7, chunkSize: 512,
  });
  const dat = legacyImatrix(
    [...entries.filter((e) => e.name !== "blk.3.ffn_up_shexp.weight"), { name: "token_embd.weight", sums: new Float32Array(7).fill(3), counts: [3] }],
    { chunkCount: 9, chunkSize: 512, dataset: "tiny-dsv3-imatrix-test.txt" },
  );
  await writeFile(join(dir, "tiny-dsv3.imatrix.dat"), dat);
  if (process.env.DEEPCAST_IMATRIX_OUT) {
    await mkdir(process.env.DEEPCAST_IMATRIX_OUT, { recursive: true });
    await writeFile(join(process.env.DEEPCAST_IMATRIX_OUT, "tiny-dsv3.imatrix.gguf"), gguf);
    await writeFile(join(process.env.DEEPCAST_IMATRIX_OUT, "tiny-dsv3.imatrix.dat"), dat);
  }
  return { gguf, dat };
}

// ---------------------------------------------------------------------------------------------
// reader
// ---------------------------------------------------------------------------------------------

async function smallGguf(entries: RawEntry[], meta = { datasets: ["d.txt"], chunkCount: 3, chunkSize: 64 }): Promise<Buffer> {
  return writeGgufImatrix(join(await tempDir(), "im.gguf"), entries, meta);
}

const expectError = (fn: () => unknown, re: RegExp) => {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(DeepcastError);
  expect((err as Error).message).toMatch(re);
};

describe("imatrix reader", () => {
  it("GGUF: weights = in_sum2 / lround(count) per matrix, 1.0 where the count is 0; metadata and KVs", async () => {
    const sums = Float32Array.from({ length: 12 }, (_, i) => f(0.1 * (i + 1)));
    const bytes = await smallGguf([
      { name: "blk.0.ffn_up_exps.weight", sums, counts: [3, 0, 2.5] },
      { name: "blk.0.attn_k_b.weight", sums: Float32Array.from([2, 4, 6, 8, 10, 12]), counts: [2] },
    ]);
    const im = parseImatrix(bytes, "im.gguf");
    expect(im.format).toBe("gguf");
    expect([...im.entries.keys()]).toEqual(["blk.0.attn_k_b.weight", "blk.0.ffn_up_exps.weight"]);
    const e = im.entries.get("blk.0.ffn_up_exps.weight")!;
    expect(e.nMat).toBe(3);
    const want = [...sums.subarray(0, 4)].map((v) => f(v / 3)).concat([1, 1, 1, 1], [...sums.subarray(8)].map((v) => f(v / 3)));
    expect([...e.values]).toEqual(want);
    expect(im.entries.get("blk.0.attn_k_b.weight")).toEqual({ values: Float32Array.from([1, 2, 3, 4, 5, 6]), nMat: 1 });
    expect(im).toMatchObject({ datasets: ["d.txt"], chunkCount: 3, chunkSize: 64, file: "im.gguf" });
    expect(imatrixKvs(im)).toEqual([
      kv.str("quantize.imatrix.file", "im.gguf"),
      kv.str("quantize.imatrix.dataset", "d.txt"),
      kv.u32("quantize.imatrix.entries_count", 2),
      kv.u32("quantize.imatrix.chunks_count", 3),
    ]);
    expect(imatrixKvs({ ...im, file: "x".repeat(200), datasets: [], chunkCount: 0 })).toEqual([
      kv.str("quantize.imatrix.file", "x".repeat(127)),
      kv.u32("quantize.imatrix.entries_count", 2),
    ]);
  });

  it("legacy .dat: weights = value / ncall; trailer optional", () => {
    const entries: RawEntry[] = [{ name: "blk.0.ffn_down.weight", sums: Float32Array.from([3, 6, 9, 12]), counts: [3] }];
    const dat = legacyImatrix(entries, { chunkCount: 5, chunkSize: 2, dataset: "kjv.txt" });
    const im = parseImatrix(dat, "im.dat");
    expect(im.format).toBe("dat");
    // llama-imatrix stored (sum / 3) * ncall with ncall = ceil(3 / 2) = 2; quantize divides by ncall again
    expect([...im.entries.get("blk.0.ffn_down.weight")!.values]).toEqual([1, 2, 3, 4]);
    expect(im).toMatchObject({ datasets: ["kjv.txt"], chunkCount: 5, chunkSize: 0 });
    const noTrailer = dat.subarray(0, dat.length - 4 - 4 - 7);
    expect(parseImatrix(noTrailer, "im.dat")).toMatchObject({ datasets: [], chunkCount: 0 });
    // ncall 0: values are taken as they are
    const zero = Buffer.from(dat);
    zero.writeInt32LE(0, 4 + 4 + "blk.0.ffn_down.weight".length);
    expect([...parseImatrix(zero, "im.dat").entries.get("blk.0.ffn_down.weight")!.values]).toEqual([f(2), f(4), f(6), f(8)]);
  });

  it("clear errors: truncated, corrupt, missing metadata or halves, wrong types, non-finite values", async () => {
    const entries: RawEntry[] = [{ name: "blk.0.ffn_down.weight", sums: Float32Array.from([3, 6, 9, 12]), counts: [3] }];
    const dat = legacyImatrix(entries, { chunkCount: 5, chunkSize: 2, dataset: "kjv.txt" });
    expectError(() => parseImatrix(dat.subarray(0, 40), "a.dat"), /truncated.*blk\.0\.ffn_down\.weight.*file a\.dat/);
    expectError(() => parseImatrix(Buffer.from([0, 0, 0, 0]), "a.dat"), /no data/);
    expectError(() => parseImatrix(Buffer.from([1]), "a.dat"), /not an imatrix/);
    const nan = Buffer.from(dat);
    nan.writeFloatLE(NaN, 4 + 4 + 21 + 8 + 4);
    expectError(() => parseImatrix(nan, "a.dat"), /non-finite value NaN \(entry blk\.0\.ffn_down\.weight, index 1\)/);

    const gguf = await smallGguf(entries);
    expectError(() => parseImatrix(gguf.subarray(0, gguf.length - 30), "a.gguf"), /truncated: tensor blk\.0\.ffn_down\.weight\.counts/);
    expectError(() => parseImatrix(gguf.subarray(0, 60), "a.gguf"), /truncated/);
    const noMeta = await writeGgufImatrix(join(await tempDir(), "m.gguf"), entries, { datasets: [], chunkCount: 0, chunkSize: 0 });
    // rename imatrix.chunk_size -> imatrix.chunk_sizX: metadata incomplete
    const i = noMeta.indexOf("imatrix.chunk_size");
    noMeta.write("X", i + "imatrix.chunk_size".length - 1);
    expectError(() => parseImatrix(noMeta, "m.gguf"), /missing imatrix metadata \(imatrix\.chunk_size\)/);
    const half = Buffer.from(gguf);
    half.write("X", half.indexOf(".counts") + 1);
    expectError(() => parseImatrix(half, "h.gguf"), /mismatched sums and counts for blk\.0\.ffn_down\.weight: \.counts is missing/);
    const odd = await smallGguf([{ name: "w", sums: new Float32Array(6).fill(1), counts: [1, 1] }]);
    // in_sum2 dims [3, 2] -> [5, 1]: 5 sums for 2 counts
    const dims = odd.indexOf("w.in_sum2") + "w.in_sum2".length + 4;
    odd.writeBigInt64LE(5n, dims);
    odd.writeBigInt64LE(1n, dims + 8);
    expectError(() => parseImatrix(odd, "o.gguf"), /entry w has 5 sums for 2 counts/);
    // a count that rounds to 0 gives weights 1.0, whatever the sums
    const inf = await smallGguf([{ name: "w", sums: Float32Array.from([1, NaN, 1, 1]), counts: [0.49] }]);
    expect([...parseImatrix(inf, "i.gguf").entries.get("w")!.values]).toEqual([1, 1, 1, 1]);
    const inf2 = await smallGguf([{ name: "w", sums: Float32Array.from([1, Infinity]), counts: [1] }]);
    expectError(() => parseImatrix(inf2, "i.gguf"), /non-finite value Infinity \(entry w, index 1\)/);
  });

  it("matches entries to tensors like llama-quantize: ne0 x ne2 weights, token_embd exempt, required entries", () => {
    const im: Imatrix = {
      file: "x.gguf", format: "gguf", datasets: [], chunkCount: 0, chunkSize: 0, sha256: "",
      entries: new Map([
        ["blk.1.ffn_up_exps.weight", { values: new Float32Array(256 * 16), nMat: 16 }],
        ["blk.1.attn_k_b.weight", { values: new Float32Array(32 * 4), nMat: 1 }],
        ["blk.1.attn_q_a.weight", { values: new Float32Array(128), nMat: 1 }],
        ["token_embd.weight", { values: new Float32Array(7), nMat: 1 }],
      ]),
    };
    const use = imatrixForTensors(im, [
      { name: "token_embd.weight", ne: [256, 2048], requiresImatrix: false },
      { name: "blk.1.attn_k_b.weight", ne: [32, 128, 4], requiresImatrix: false },
      { name: "blk.1.ffn_up_exps.weight", ne: [256, 256, 16], requiresImatrix: true },
      { name: "blk.1.ffn_gate_exps.weight", ne: [256, 256, 16], requiresImatrix: false },
    ]);
    expect([...use.weights.keys()]).toEqual(["blk.1.attn_k_b.weight", "blk.1.ffn_up_exps.weight"]);
    expect(use.missing).toEqual(["blk.1.ffn_gate_exps.weight"]);
    expect(use.sizeMismatch).toEqual(["token_embd.weight"]);
    expect(() => imatrixForTensors(im, [{ name: "blk.1.attn_q_a.weight", ne: [256, 128], requiresImatrix: false }]))
      .toThrow(/imatrix size 128 is different from tensor size 256 for blk\.1\.attn_q_a\.weight.*file x\.gguf, tensor blk\.1\.attn_q_a\.weight/);
    expect(() => imatrixForTensors(im, [{ name: "blk.1.ffn_gate_exps.weight", ne: [256, 256, 16], requiresImatrix: true }]))
      .toThrow(/missing importance matrix for tensor blk\.1\.ffn_gate_exps\.weight/);
  });
});

// ---------------------------------------------------------------------------------------------
// to-gguf --imatrix on the FP8 fixture vs llama-quantize --imatrix on llama.cpp's BF16 conversion
// ---------------------------------------------------------------------------------------------

const GOLD = "llama-cpp-tiny-dsv3-imatrix";

/** Mixes checked against llama-quantize, and the imatrix file each used. */
const RUNS: { mix: string; im: keyof ImatrixFiles; missing: string[] }[] = [
  { mix: "Q4_K_M", im: "gguf", missing: ["output.weight", "token_embd.weight", "blk.0.attn_q_b.weight"] },
  { mix: "Q2_K_S", im: "gguf", missing: ["output.weight", "token_embd.weight", "blk.0.attn_q_b.weight"] },
  { mix: "Q6_K", im: "gguf", missing: ["output.weight", "token_embd.weight", "blk.0.attn_q_b.weight"] },
  { mix: "Q4_0", im: "gguf", missing: ["output.weight", "token_embd.weight", "blk.0.attn_q_b.weight"] },
  { mix: "Q3_K_M", im: "dat", missing: ["output.weight", "blk.3.ffn_up_shexp.weight"] },
  { mix: "Q5_K_M", im: "dat", missing: ["output.weight", "blk.3.ffn_up_shexp.weight"] },
];

let built: Promise<{ dir: string; files: ImatrixFiles }> | undefined;
/** The fixture's imatrix files, built once per test file. */
const fixtureFiles = () => (built ??= (async () => {
  const dir = await tempDir();
  return { dir, files: await buildImatrixFiles(dir) };
})());
/** Parsed under the relative name llama-quantize was given (it lands in quantize.imatrix.file). */
const imatrix = async (which: keyof ImatrixFiles) => parseImatrix((await fixtureFiles()).files[which], `tiny-dsv3.imatrix.${which}`);

describe("to-gguf --imatrix on the FP8 fixture, against llama-quantize --imatrix", () => {
  it("the imatrix files are the ones the golden listings were made with", async () => {
    const { files } = await fixtureFiles();
    const used = await readJson<Record<string, string>>(GOLD, "imatrix-files.json");
    expect({ "tiny-dsv3.imatrix.gguf": sha256(files.gguf), "tiny-dsv3.imatrix.dat": sha256(files.dat) }).toEqual(used);
  });

  for (const run of RUNS) {
    it(`${run.mix} with the ${run.im} imatrix: same file as llama-quantize, byte for byte`, async () => {
      const gold = await readJson<Listing>(GOLD, `tiny-dsv3-${run.mix}-imatrix-${run.im}.listing.json`);
      const out = join((await fixtureFiles()).dir, `tiny-${run.mix}-${run.im}.gguf`);
      const plan = await planToGguf(new LocalSource(FIXTURE), out, { ftype: run.mix, imatrix: await imatrix(run.im) });
      expect(plan.imatrix!.missing).toEqual(run.missing);
      expect(plan.imatrix!.sizeMismatch).toEqual(run.im === "dat" ? ["token_embd.weight"] : []);
      expect(plan.imatrix!.missingRequired).toEqual([]);
      await runToGguf(plan, { kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true, chunkBytes: 96 * 1024 });
      const bytes = await readFile(out);
      const mismatched = gold.tensors
        .filter((t) => sha256(bytes.subarray(t.file_offset, t.file_offset + t.nbytes)) !== t.sha256)
        .map((t) => `${t.name} (${t.type})`);
      expect(mismatched).toEqual([]);
      expect(bytes.length).toBe(gold.file_size);
      expect(sha256(bytes)).toBe(gold.file_sha256);
    });
  }

  it("the imatrix changes the bytes (Q4_K_M without it differs in every tensor that has weights)", async () => {
    const gold = await readJson<Listing>(GOLD, "tiny-dsv3-Q4_K_M-imatrix-gguf.listing.json");
    const plain = await readJson<Listing>("llama-cpp-tiny-dsv3", "tiny-dsv3-Q4_K_M.listing.json");
    const im = await imatrix("gguf");
    const same = gold.tensors.filter((t) => plain.tensors.find((p) => p.name === t.name)!.sha256 === t.sha256).map((t) => t.name);
    // unchanged: F32 tensors copied as they are, and the quantized ones without an imatrix entry
    expect(same.filter((n) => !gold.tensors.find((t) => t.name === n)!.type.startsWith("F32"))).toEqual(["output.weight", "token_embd.weight", "blk.0.attn_q_b.weight"]);
    expect(gold.kv.slice(-4).map((e) => [e.key, e.value])).toEqual([
      ["quantize.imatrix.file", "tiny-dsv3.imatrix.gguf"],
      ["quantize.imatrix.dataset", "tiny-dsv3-imatrix-test.txt"],
      ["quantize.imatrix.entries_count", im.entries.size],
      ["quantize.imatrix.chunks_count", 7],
    ]);
  });

  it("Q2_K_S refuses to run without an imatrix, or when a Q2_K tensor has no entry; float outputs take none", async () => {
    const out = join((await fixtureFiles()).dir, "refused.gguf");
    await expect(planToGguf(new LocalSource(FIXTURE), out, { ftype: "Q2_K_S" })).rejects.toThrow(/requires an importance matrix/);
    const im = await imatrix("gguf");
    im.entries.delete("blk.1.ffn_gate_exps.weight");
    await expect(planToGguf(new LocalSource(FIXTURE), out, { ftype: "Q2_K_S", imatrix: im }))
      .rejects.toThrow(/missing importance matrix for tensor blk\.1\.ffn_gate_exps\.weight/);
    // --dry-run: reported, not thrown (llama-quantize --dry-run does not look at the entries)
    const dry = await planToGguf(new LocalSource(FIXTURE), out, { ftype: "Q2_K_S", imatrix: im, dryRun: true });
    expect(dry.imatrix!.missingRequired).toEqual(["blk.1.ffn_gate_exps.weight"]);
    await expect(planToGguf(new LocalSource(FIXTURE), out, { ftype: "BF16", imatrix: im })).rejects.toThrow(/--imatrix applies to quantized outputs/);
    const wrong = await imatrix("gguf");
    wrong.entries.set("blk.2.ffn_down_exps.weight", { values: new Float32Array(256), nMat: 1 });
    await expect(planToGguf(new LocalSource(FIXTURE), out, { ftype: "Q4_K_M", imatrix: wrong }))
      .rejects.toThrow(/imatrix size 256 is different from tensor size 4096 for blk\.2\.ffn_down_exps\.weight/);
  });
});
