/**
 * `to-gguf IN.gguf`: requantizing llama.cpp's own GGUFs of the fixture must give llama-quantize's files byte
 * for byte (fixtures/llama-cpp-tiny-dsv3/ and fixtures/llama-cpp-requant/: listings of llama-quantize's outputs).
 * The input is llama.cpp's BF16 conversion (shared/golden, or our byte-identical one where that is absent);
 * the F16/F32/Q8_0/Q4_K_M inputs are made from it here and checked against llama-quantize's listings first.
 */
import { spawnSync } from "node:child_process";
import { copyFile, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { planGgufSource, type GgufSourceOptions } from "../src/convert/gguf-source-plan.js";
import { runGgufSource } from "../src/convert/gguf-source-run.js";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { DeepcastError } from "../src/errors.js";
import { GgufReader } from "../src/io/gguf-reader.js";
import { parseImatrix } from "../src/io/imatrix.js";
import { LocalSource } from "../src/io/source.js";
import { kernels } from "../src/quant/kernels.js";
import { ggufListing, type GgufListing } from "../fixtures/gguf-listing.js";
import { FIXTURE, ROOT, sha256, tempDir } from "./helpers.js";

const BIN = join(ROOT, "bin", "deepcast.js");
const GOLD = join(ROOT, "fixtures", "llama-cpp-tiny-dsv3");
const REQ = join(ROOT, "fixtures", "llama-cpp-requant");
const SHARED_BF16 = resolve(ROOT, "..", "shared", "golden", "llama-cpp-tiny-dsv3", "tiny-dsv3-BF16.gguf");
const IMATRIX = "tiny-dsv3.imatrix.gguf";

const gold = async (name: string): Promise<GgufListing> => JSON.parse(await readFile(name.startsWith("tiny-dsv3-") && existsSync(join(REQ, `${name}.listing.json`)) ? join(REQ, `${name}.listing.json`) : join(GOLD, `${name}.listing.json`), "utf8")) as GgufListing;

function deepcast(cwd: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: "utf8", env: { ...process.env, HF_HUB_OFFLINE: "1" } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The file is llama-quantize's: the same KVs, tensor infos and tensor bytes (which differ, if any), and the same whole file. */
async function expectListing(path: string, listing: string): Promise<void> {
  const want = await gold(listing);
  const got = await ggufListing(path);
  expect(got.kv, listing).toEqual(want.kv);
  const info = (l: GgufListing) => l.tensors.map((t) => [t.name, t.type, t.ne, t.offset, t.nbytes]);
  expect(info(got), listing).toEqual(info(want));
  const shas = new Map(want.tensors.map((t) => [t.name, t.sha256]));
  expect(got.tensors.filter((t) => shas.get(t.name) !== t.sha256).map((t) => `${t.name} (${t.type})`), listing).toEqual([]);
  expect([got.file_size, got.file_sha256], listing).toEqual([want.file_size, want.file_sha256]);
}

async function requant(input: string, out: string, opts: GgufSourceOptions, run: { checkpointBytes?: number; onEvent?: Parameters<typeof runGgufSource>[1]["onEvent"] } = {}) {
  const plan = await planGgufSource(input, out, opts);
  return runGgufSource(plan, { threads: 2, force: false, skipSpaceCheck: true, chunkBytes: 64 * 1024, ...run });
}

const imatrix = async () => parseImatrix(await readFile(join(GOLD, IMATRIX)), IMATRIX);

let dir: string;
let bf16: string;

beforeAll(async () => {
  dir = await tempDir("deepcast-gguf-source-");
  if (existsSync(SHARED_BF16)) {
    bf16 = SHARED_BF16;
  } else {
    // our BF16 conversion is llama.cpp's file byte for byte (test/gguf-plan.test.ts); checked again below
    bf16 = join(dir, "tiny-dsv3-BF16.gguf");
    const plan = await planToGguf(new LocalSource(FIXTURE), bf16, { ftype: "BF16" });
    await runToGguf(plan, { kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true });
  }
  expect(sha256(await readFile(bf16))).toBe((await gold("tiny-dsv3-BF16")).file_sha256);
}, 120_000);

describe("to-gguf IN.gguf: llama-quantize's output from llama.cpp's GGUFs of the fixture", () => {
  it("BF16 -> Q4_K_M through the CLI", async () => {
    const out = join(dir, "cli-Q4_K_M.gguf");
    const r = deepcast(dir, "to-gguf", bf16, "-q", "Q4_K_M", "-o", out, "--json", "--threads", "2");
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ command: "to-gguf", quant: "Q4_K_M", requantized: 0, tensors: 70, files: [out] });
    await expectListing(out, "tiny-dsv3-Q4_K_M");
  });

  it("BF16 -> IQ2_XXS with llama-imatrix's imatrix through the CLI (its name as given lands in quantize.imatrix.file)", async () => {
    const work = await tempDir("deepcast-gguf-source-cli-");
    await copyFile(join(GOLD, IMATRIX), join(work, IMATRIX));
    const r = deepcast(work, "to-gguf", bf16, "--quant", "iq2_xxs", "--imatrix", IMATRIX, "--outfile", "out.gguf", "--json", "--threads", "2");
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).imatrix).toMatchObject({ file: IMATRIX, entries: 48 });
    await expectListing(join(work, "out.gguf"), "tiny-dsv3-IQ2_XXS-imatrix");
  });

  it("F16 and F32 outputs, and quantized from F16 and F32 inputs", async () => {
    const f16 = join(dir, "F16.gguf");
    const f32 = join(dir, "F32.gguf");
    await requant(bf16, f16, { ftype: "F16" });
    await expectListing(f16, "tiny-dsv3-BF16-to-F16");
    await requant(bf16, f32, { ftype: "F32" });
    await expectListing(f32, "tiny-dsv3-BF16-to-F32");
    await requant(f16, join(dir, "F16-Q4_K_M.gguf"), { ftype: "Q4_K_M" });
    await expectListing(join(dir, "F16-Q4_K_M.gguf"), "tiny-dsv3-F16-to-Q4_K_M");
    await requant(f32, join(dir, "F32-Q5_K_M.gguf"), { ftype: "Q5_K_M" });
    await expectListing(join(dir, "F32-Q5_K_M.gguf"), "tiny-dsv3-F32-to-Q5_K_M");
  });

  it("a quantized input: refused before anything is written without --allow-requantize, naming file and tensor; with it llama-quantize's bytes", async () => {
    const q8 = join(dir, "Q8_0.gguf");
    await requant(bf16, q8, { ftype: "Q8_0" });
    await expectListing(q8, "tiny-dsv3-Q8_0");
    const refusedDir = await tempDir("deepcast-gguf-source-refused-");
    const err = await requant(q8, join(refusedDir, "x.gguf"), { ftype: "Q4_K_M" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeepcastError);
    expect(err).toMatchObject({ code: "UNSUPPORTED", file: q8, tensor: "output.weight" });
    expect((err as Error).message).toMatch(/requantizing from type Q8_0 is disabled: 47 tensor\(s\).*--allow-requantize/);
    expect(await readdir(refusedDir)).toEqual([]);
    // through the CLI: exit 1, the message, no stack trace
    const r = deepcast(dir, "to-gguf", q8, "-q", "Q4_K_M", "-o", join(refusedDir, "y.gguf"));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/requantizing from type Q8_0 is disabled.*tensor output\.weight/);
    expect(r.stderr).not.toMatch(/\n\s+at /);

    const out = join(dir, "Q8_0-Q4_K_M.gguf");
    await requant(q8, out, { ftype: "Q4_K_M", allowRequantize: true });
    await expectListing(out, "tiny-dsv3-Q8_0-to-Q4_K_M-allow-requantize");
  });

  it("Q4_K_M -> Q4_K_M copies every tensor (no flag needed); Q4_K_M -> IQ4_XS with an imatrix and --allow-requantize", async () => {
    const q4 = join(dir, "Q4_K_M.gguf");
    await requant(bf16, q4, { ftype: "Q4_K_M" });
    await expectListing(q4, "tiny-dsv3-Q4_K_M");
    const again = join(dir, "Q4_K_M-again.gguf");
    await requant(q4, again, { ftype: "Q4_K_M" });
    expect(sha256(await readFile(again))).toBe(sha256(await readFile(q4)));
    const iq = join(dir, "Q4_K_M-IQ4_XS.gguf");
    await requant(q4, iq, { ftype: "IQ4_XS", imatrix: await imatrix(), allowRequantize: true });
    await expectListing(iq, "tiny-dsv3-Q4_K_M-to-IQ4_XS-imatrix-allow-requantize");
  });

  it("a split input (opened from any part) gives the single file's output, or with --keep-split llama-quantize's parts; a missing part is named", async () => {
    const parts = await tempDir("deepcast-gguf-source-split-");
    const plan = await planToGguf(new LocalSource(FIXTURE), join(parts, "tiny-BF16.gguf"), { ftype: "BF16", split: { maxBytes: 10e6 } });
    await runToGguf(plan, { kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true });
    const names = plan.layout.files.map((f) => f.path);
    expect(names).toHaveLength(3);
    const out = join(dir, "split-Q4_K_M.gguf");
    await requant(names[1]!, out, { ftype: "Q4_K_M" });
    await expectListing(out, "tiny-dsv3-Q4_K_M");

    // --keep-split: one output per input part, tensors in input order, llama-quantize's split keys
    const kept = await tempDir("deepcast-gguf-source-keep-");
    const r = deepcast(kept, "to-gguf", names[0]!, "-q", "Q4_K_M", "--keep-split", "-o", "kept.gguf", "--json", "--threads", "2");
    expect(r.code, r.stderr).toBe(0);
    const keptFiles = [1, 2, 3].map((i) => `kept-0000${i}-of-00003.gguf`);
    expect(JSON.parse(r.stdout).files).toEqual(keptFiles.map((f) => join(kept, f)));
    for (const [i, f] of keptFiles.entries()) await expectListing(join(kept, f), `tiny-dsv3-split-to-Q4_K_M-keep-split-0000${i + 1}-of-00003`);
    expect(deepcast(kept, "to-gguf", names[0]!, "-q", "Q4_K_M", "--keep-split", "--split-max-size", "1G", "-o", "k2.gguf").code).toBe(2);

    await rm(names[2]!);
    const err = await planGgufSource(names[0]!, join(dir, "never.gguf"), { ftype: "Q4_K_M" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeepcastError);
    expect(err).toMatchObject({ file: names[2] });
    expect(err).toMatchObject({ code: "NOT_FOUND", message: expect.stringMatching(/part 3 of the 3 files of this split model is missing/) });
  });

  it("--split-max-size splits the output as gguf-split does; the tensors are the single file's", async () => {
    const out = join(dir, "splitout", "Q4_K_M.gguf");
    const plan = await planGgufSource(bf16, out, { ftype: "Q4_K_M", split: { maxBytes: 3e6 } });
    await runGgufSource(plan, { threads: 2, force: false, skipSpaceCheck: true });
    const files = plan.layout.files.map((f) => f.path);
    expect(files.length).toBeGreaterThan(1);
    const want = await gold("tiny-dsv3-Q4_K_M");
    const r = await GgufReader.open(files[0]!);
    try {
      expect(r.files.map((f) => f.path)).toEqual(files);
      expect(r.kvs.map((k) => k.key)).toEqual([...want.kv.map((k) => k.key), "split.no", "split.tensors.count", "split.count"]);
      const got: string[] = [];
      for (const t of r.tensors) {
        const b = new Uint8Array(t.nbytes);
        await r.read(t, 0, b);
        got.push(`${t.name} ${sha256(b)}`);
      }
      expect(got).toEqual(want.tensors.map((t) => `${t.name} ${t.sha256}`));
    } finally {
      await r.close();
    }
  });

  it("an interrupted run resumes from its last synced tensor and ends byte-identical; a rerun of a complete one is a no-op", async () => {
    const out = join(dir, "resume", "Q6_K.gguf");
    let seen = 0;
    const err = await requant(bf16, out, { ftype: "Q6_K" }, {
      checkpointBytes: 1,
      onEvent: (e) => {
        if (e.kind === "tensor" && ++seen === 40) throw new Error("interrupted");
      },
    }).catch((e: unknown) => e);
    expect((err as Error).message).toBe("interrupted");
    expect(existsSync(out)).toBe(false);
    const resumed = await requant(bf16, out, { ftype: "Q6_K" });
    expect(resumed.resumedTensors).toBe(39);
    await expectListing(out, "tiny-dsv3-Q6_K");
    const again = await requant(bf16, out, { ftype: "Q6_K" });
    expect(again).toMatchObject({ resumedFiles: 1, bytesWritten: 0 });
  });

  it("--dry-run shows the plan (types, sizes, what is requantized) and writes nothing", async () => {
    const q8 = join(dir, "Q8_0.gguf");
    expect(existsSync(q8)).toBe(true);
    const out = join(await tempDir("deepcast-gguf-source-dry-"), "never", "x.gguf");
    const r = deepcast(dir, "to-gguf", q8, "-q", "Q4_K_M", "-o", out, "--dry-run", "--json");
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    const want = await gold("tiny-dsv3-Q8_0-to-Q4_K_M-allow-requantize");
    expect(j).toMatchObject({ command: "to-gguf", quant: "Q4_K_M", tensorCount: 70, totalBytes: want.file_size, outputBytes: want.file_size });
    expect(j.source).toMatchObject({ format: "gguf", hparams: { nLayer: 4, nExpert: 16, nHead: 4, nHeadKv: 1 }, types: { Q8_0: 47, F32: 23 } });
    expect(j.requantized).toHaveLength(47);
    expect(j.tensors.map((t: { name: string; type: string }) => `${t.name} ${t.type}`)).toEqual(want.tensors.map((t) => `${t.name} ${t.type}`));
    expect(existsSync(join(out, ".."))).toBe(false);
  });
});

describe("to-gguf IN.gguf: bad inputs get clear errors", () => {
  const errorOf = (p: Promise<unknown>) => p.then(() => null, (e: unknown) => e as DeepcastError);

  it("not deepseek2, not a GGUF, truncated, output onto the input", async () => {
    const bytes = await readFile(bf16);
    const other = join(dir, "llama.gguf");
    const at = bytes.indexOf(Buffer.from("deepseek2"));
    const patched = Buffer.from(bytes);
    patched.write("deepseek3", at);
    await writeFile(other, patched);
    expect(await errorOf(planGgufSource(other, join(dir, "x.gguf"), { ftype: "Q4_K_M" }))).toMatchObject({ code: "UNSUPPORTED", file: other, message: expect.stringMatching(/architecture is "deepseek3".*"deepseek2"/) });

    // metadata that contradicts the tensors, and a mix that needs an imatrix: named with the input file
    const fewer = Buffer.from(bytes);
    const key = Buffer.from("deepseek2.block_count");
    fewer.writeUInt32LE(3, fewer.indexOf(key) + key.length + 4);
    const fewerPath = join(dir, "fewer-layers.gguf");
    await writeFile(fewerPath, fewer);
    expect(await errorOf(planGgufSource(fewerPath, join(dir, "x.gguf"), { ftype: "Q4_K_M" })))
      .toMatchObject({ file: fewerPath, tensor: "blk.3.ffn_down_exps.weight", message: expect.stringMatching(/^bad layer 3, must be in \[0, 3\) \(file /) });
    expect(await errorOf(planGgufSource(bf16, join(dir, "x.gguf"), { ftype: "IQ2_XXS" }))).toMatchObject({ code: "IMATRIX_MISSING", file: bf16 });

    const notGguf = join(dir, "notes.gguf");
    await writeFile(notGguf, "hello, this is not a model at all");
    expect(await errorOf(planGgufSource(notGguf, join(dir, "x.gguf"), { ftype: "Q4_K_M" }))).toMatchObject({ file: notGguf, message: expect.stringMatching(/not a GGUF/) });

    const cut = join(dir, "cut.gguf");
    await writeFile(cut, bytes.subarray(0, bytes.length - 100_000));
    const e = await errorOf(planGgufSource(cut, join(dir, "x.gguf"), { ftype: "Q4_K_M" }));
    expect(e).toMatchObject({ code: "TRUNCATED", file: cut, tensor: expect.stringMatching(/^blk\.3\./) });

    const copy = join(dir, "copy-BF16.gguf");
    await copyFile(bf16, copy);
    expect(await errorOf(planGgufSource(copy, copy, { ftype: "Q4_K_M" }))).toMatchObject({ code: "OUTPUT_IN_INPUT" });
    const r = deepcast(dir, "to-gguf", cut, "-q", "Q4_K_M", "-o", join(dir, "x.gguf"));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/truncated file\?.*file .*cut\.gguf, tensor blk\.3\./);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(deepcast(dir, "to-gguf", bf16, "-q", "Q4_K_M", "-o", join(dir, "x.gguf"), "--target-size", "5M").code).toBe(2);
  });

  it("a NaN in a tensor that is quantized or copied is refused, as llama-quantize refuses it; --allow-non-finite keeps it", async () => {
    const src = await GgufReader.open(bf16);
    const q = src.tensor("blk.1.attn_q_a.weight")!;
    const router = src.tensor("blk.2.ffn_gate_inp.weight")!;
    await src.close();
    for (const [t, value] of [[q, Buffer.from([0xc0, 0x7f])], [router, Buffer.from([0, 0, 0x80, 0x7f])]] as const) {
      const bad = join(dir, `nan-${t.name}.gguf`);
      const bytes = Buffer.from(await readFile(bf16)); // (a copy: the shared input may be read-only)
      value.copy(bytes, t.fileOffset + 7 * t.ne[0]! * (t.type.name === "F32" ? 4 : 2) + 8 * value.length);
      await writeFile(bad, bytes);
      const out = join(dir, `nan-out-${t.name}.gguf`);
      const e = await errorOf(requant(bad, out, { ftype: "Q4_K_M" }));
      expect(e, t.name).toMatchObject({ code: "NON_FINITE", file: bad, tensor: t.name, message: expect.stringMatching(/row 7/) });
      expect(existsSync(out)).toBe(false);
      const plan = await planGgufSource(bad, out, { ftype: "Q4_K_M" });
      await runGgufSource(plan, { threads: 2, force: true, skipSpaceCheck: true, allowNonFinite: true });
      expect((await stat(out)).size).toBe((await gold("tiny-dsv3-Q4_K_M")).file_size);
    }
  });
});
