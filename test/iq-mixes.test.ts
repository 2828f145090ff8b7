/**
 * llama-quantize's IQ/TQ mixes on the FP8 fixture with llama-imatrix's own importance matrix of it
 * (fixtures/llama-cpp-tiny-dsv3/: tiny-dsv3.imatrix.gguf/.dat and the listings of
 * `llama-quantize --imatrix tiny-dsv3.imatrix.gguf tiny-dsv3-BF16.gguf OUT FTYPE 2`).
 * The per-type choices of every mix at full scale are checked in dsv3-replica.test.ts against
 * llama.cpp's own snapshot; here the whole files.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { DeepcastError } from "../src/errors.js";
import { parseImatrix, type Imatrix } from "../src/io/imatrix.js";
import { LocalSource } from "../src/io/source.js";
import { kernels } from "../src/quant/kernels.js";
import { FIXTURE, ROOT, sha256, tempDir } from "./helpers.js";

const GOLD = join(ROOT, "fixtures", "llama-cpp-tiny-dsv3");
const RUNS = ["IQ2_XXS", "IQ4_XS", "IQ1_M", "TQ2_0"] as const;

interface Listing {
  file_size: number; file_sha256: string; header_bytes: number; data_start: number;
  kv: { key: string; type: string; value?: unknown }[];
  tensors: { name: string; type: string; ne: number[]; offset: number; file_offset: number; nbytes: number; sha256: string }[];
}
const listing = async (ftype: string) =>
  JSON.parse(await readFile(join(GOLD, `tiny-dsv3-${ftype}-imatrix.listing.json`), "utf8")) as Listing;
/** Parsed under the relative name llama-quantize was given (it lands in quantize.imatrix.file). */
const imatrix = async (ext: "gguf" | "dat"): Promise<Imatrix> =>
  parseImatrix(await readFile(join(GOLD, `tiny-dsv3.imatrix.${ext}`)), `tiny-dsv3.imatrix.${ext}`);
const upper = (ggmlName: string) => ggmlName.toUpperCase();

describe("IQ/TQ mixes on the fixture with llama-imatrix's imatrix", () => {
  for (const ftype of RUNS) {
    it(`${ftype}: the plan is llama-quantize's (types, dims, KVs, offsets)`, async () => {
      const gold = await listing(ftype);
      const plan = await planToGguf(new LocalSource(FIXTURE), "/nowhere/x.gguf", { ftype, imatrix: await imatrix("gguf"), dryRun: true });
      expect(plan.output.tensors.map((t) => [t.name, t.type.name, t.ne])).toEqual(gold.tensors.map((t) => [t.name, upper(t.type), t.ne]));
      expect(plan.output.kvs.map((e) => e.key)).toEqual(gold.kv.map((e) => e.key));
      const f = plan.layout.files[0]!;
      expect(f.tensors.map((t) => [t.offset, t.fileOffset, t.nbytes])).toEqual(gold.tensors.map((t) => [t.offset, t.file_offset, t.nbytes]));
      expect([f.headerBytes, f.dataStart, f.fileSize]).toEqual([gold.header_bytes, gold.data_start, gold.file_size]);
    });

    it(`${ftype}: the whole file is llama-quantize's, byte for byte`, async () => {
      const gold = await listing(ftype);
      const out = join(await tempDir("deepcast-iq-mix-"), `tiny-${ftype}.gguf`);
      const plan = await planToGguf(new LocalSource(FIXTURE), out, { ftype, imatrix: await imatrix("gguf") });
      await runToGguf(plan, { kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true, chunkBytes: 96 * 1024 });
      const bytes = await readFile(out);
      const mismatched = gold.tensors
        .filter((t) => sha256(bytes.subarray(t.file_offset, t.file_offset + t.nbytes)) !== t.sha256)
        .map((t) => `${t.name} (${t.type})`);
      expect(mismatched).toEqual([]);
      expect(sha256(bytes)).toBe(gold.file_sha256);
    });
  }

  it("the legacy .dat imatrix of the same run gives llama-quantize's tensor bytes with that file (IQ2_XXS)", async () => {
    // .dat stores (sum/count)*ncall, read back as value/ncall: one tensor's weights round differently than
    // from the GGUF imatrix, in llama-quantize as here (blk.2.ffn_up_exps)
    const gold = JSON.parse(await readFile(join(GOLD, "tiny-dsv3-IQ2_XXS-imatrix-dat.tensors.json"), "utf8")) as Listing;
    const fromGguf = await listing("IQ2_XXS");
    expect(gold.tensors.filter((t, i) => t.sha256 !== fromGguf.tensors[i]!.sha256).map((t) => t.name)).toEqual(["blk.2.ffn_up_exps.weight"]);
    const out = join(await tempDir("deepcast-iq-mix-"), "tiny-IQ2_XXS-dat.gguf");
    const plan = await planToGguf(new LocalSource(FIXTURE), out, { ftype: "IQ2_XXS", imatrix: await imatrix("dat") });
    await runToGguf(plan, { kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true, chunkBytes: 96 * 1024 });
    const bytes = await readFile(out);
    const offsets = new Map(plan.layout.files[0]!.tensors.map((t) => [t.name, t]));
    const mismatched = gold.tensors.filter((t) => {
      const o = offsets.get(t.name)!;
      return sha256(bytes.subarray(o.fileOffset, o.fileOffset + o.nbytes)) !== t.sha256;
    }).map((t) => t.name);
    expect(mismatched).toEqual([]);
  });

  it("the mixes that need an imatrix refuse to start without one, naming the tensors (token_embd and output exempt)", async () => {
    for (const ftype of ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS"]) {
      const err = await planToGguf(new LocalSource(FIXTURE), "/nowhere/x.gguf", { ftype }).catch((e: unknown) => e);
      expect(err, ftype).toBeInstanceOf(DeepcastError);
      expect((err as DeepcastError).code, ftype).toBe("IMATRIX_MISSING");
      expect((err as DeepcastError).message).not.toMatch(/token_embd|output\.weight/);
    }
    const iq1 = (await planToGguf(new LocalSource(FIXTURE), "/nowhere/x.gguf", { ftype: "IQ1_M" }).catch((e: unknown) => e)) as DeepcastError;
    expect(iq1.message).toMatch(/IQ1_M requires an importance matrix .*: \d+ tensor\(s\) need one: blk\.0\.attn_kv_a_mqa\.weight, /);
    // with --dry-run the plan is shown and the need reported
    const dry = await planToGguf(new LocalSource(FIXTURE), "/nowhere/x.gguf", { ftype: "IQ2_XXS", dryRun: true });
    const lowBit = new Set(["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS"]);
    const gold = await listing("IQ2_XXS");
    expect(dry.output.mix!.requiresImatrix).toEqual(gold.tensors.filter((t) => lowBit.has(upper(t.type))).map((t) => t.name));
    // the others run without one
    for (const ftype of ["IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0"]) {
      await expect(planToGguf(new LocalSource(FIXTURE), "/nowhere/x.gguf", { ftype, dryRun: true }), ftype).resolves.toBeDefined();
    }
  });

  it("an imatrix that lacks a required tensor is refused before writing, naming it", async () => {
    const im = await imatrix("gguf");
    im.entries.delete("blk.2.ffn_up_exps.weight");
    im.entries.delete("blk.3.attn_q_a.weight");
    const err = (await planToGguf(new LocalSource(FIXTURE), "/nowhere/x.gguf", { ftype: "IQ2_XXS", imatrix: im }).catch((e: unknown) => e)) as DeepcastError;
    expect(err.code).toBe("IMATRIX_MISSING");
    expect(err.message).toContain("blk.2.ffn_up_exps.weight, blk.3.attn_q_a.weight");
  });
});
