import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { gguf } from "@huggingface/gguf";
import { describe, expect, it } from "vitest";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { LocalSource } from "../src/io/source.js";
import { kernels } from "../src/quant/kernels.js";
import { FIXTURE, ROOT, sha256, tempDir } from "./helpers.js";

interface Listing {
  file_size: number;
  file_sha256: string;
  tensors: { name: string; type: string; ne: number[]; file_offset: number; nbytes: number; sha256: string }[];
}

const MIXES = ["BF16", "Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M", "Q2_K"];

async function listing(mix: string): Promise<Listing> {
  return JSON.parse(await readFile(join(ROOT, "fixtures", "llama-cpp-tiny-dsv3", `tiny-dsv3-${mix}.listing.json`), "utf8")) as Listing;
}

describe("to-gguf on the FP8 fixture, against llama.cpp's own convert + llama-quantize", () => {
  for (const mix of MIXES) {
    it(`${mix}: same file, byte for byte, in one pass from FP8`, async () => {
      const gold = await listing(mix);
      const out = join(await tempDir(), `tiny-${mix}.gguf`);
      const plan = await planToGguf(new LocalSource(FIXTURE), out, { ftype: mix });
      await runToGguf(plan, { kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true, chunkBytes: 256 * 1024 });
      const bytes = await readFile(out);
      const mismatched = gold.tensors
        .filter((t) => sha256(bytes.subarray(t.file_offset, t.file_offset + t.nbytes)) !== t.sha256)
        .map((t) => `${t.name} (${t.type})`);
      expect(mismatched).toEqual([]);
      expect(bytes.length).toBe(gold.file_size);
      expect(sha256(bytes)).toBe(gold.file_sha256);
      // And an independent reader (@huggingface/gguf) sees the planned tensors where we put them.
      const parsed = await gguf(out, { allowLocalFile: true });
      expect(parsed.metadata["general.architecture"]).toBe("deepseek2");
      expect(parsed.tensorInfos.map((t) => [t.name, t.shape.map(Number), Number(t.offset) + Number(parsed.tensorDataOffset)])).toEqual(
        gold.tensors.map((t) => [t.name, t.ne, t.file_offset]));
    });
  }
});

describe("to-gguf interruption and resume", () => {
  it("keeps finished split files, resumes after them, and ends byte-identical", async () => {
    const dir = await tempDir();
    const run = async (name: string, failAt?: number) => {
      const plan = await planToGguf(new LocalSource(FIXTURE), join(dir, name), { ftype: "Q4_K_M", split: { maxTensors: 25 } });
      return runToGguf(plan, {
        kernels: kernels(), threads: 1, force: false, skipSpaceCheck: true,
        onEvent: (e) => { if (e.kind === "tensor" && e.index === failAt) throw new Error("simulated crash"); },
      });
    };
    await run("ref.gguf");
    await expect(run("x.gguf", 40)).rejects.toThrow("simulated crash");
    const { readdir: ls } = await import("node:fs/promises");
    const after = (await ls(dir)).filter((f) => f.startsWith("x") || f.startsWith(".x"));
    expect(after.sort()).toEqual([".x-00001-of-00003.gguf.deepcast-run.json", "x-00001-of-00003.gguf"]);
    const resumed = await run("x.gguf");
    expect(resumed.resumedFiles).toBe(1);
    for (let i = 1; i <= 3; i++) {
      const a = await readFile(join(dir, `ref-0000${i}-of-00003.gguf`));
      const b = await readFile(join(dir, `x-0000${i}-of-00003.gguf`));
      expect(sha256(b)).toBe(sha256(a));
    }
    expect((await run("x.gguf")).resumedFiles).toBe(3);
  });
});

describe("to-gguf resume inside a file", () => {
  it("continues a single-file output from its last checkpoint and ends byte-identical", async () => {
    const dir = await tempDir();
    const out = join(dir, "one.gguf");
    const run = (failAt?: number, seen: string[] = []) =>
      planToGguf(new LocalSource(FIXTURE), out, { ftype: "Q4_K_M" }).then((plan) =>
        runToGguf(plan, {
          kernels: kernels(), threads: 1, force: false, skipSpaceCheck: true, checkpointBytes: 1,
          onEvent: (e) => { if (e.kind !== "tensor") return; seen.push(e.tensor); if (e.index === failAt) throw new Error("simulated crash"); },
        }));
    await expect(run(40)).rejects.toThrow("simulated crash");
    const { readdir: ls } = await import("node:fs/promises");
    expect(await ls(dir)).toContain(".one.gguf.partial");
    const seen: string[] = [];
    const resumed = await run(undefined, seen);
    // Tensors 0..39 were checkpointed; tensor 40 was written but not recorded, so it is redone.
    expect(resumed.resumedTensors).toBe(40);
    expect(seen.length).toBe(70 - 40);
    const gold = await listing("Q4_K_M");
    expect(sha256(await readFile(out))).toBe(gold.file_sha256);
  });
});
