/**
 * `deepcast inspect`: a safetensors checkpoint, a GGUF (single and split, against llama.cpp's own
 * listing of the same conversion), GGUF and legacy imatrix files, and the 671B replica in seconds,
 * all from headers. A repo id through the Hub is tested in hub.test.ts (its fake Hub lives there).
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { DSV3_REAL, writeDsv3Replica } from "../fixtures/dsv3-replica.js";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { DeepcastError } from "../src/errors.js";
import { kv } from "../src/io/gguf-kv.js";
import { planGgufLayout } from "../src/io/gguf-layout.js";
import { GgufWriter } from "../src/io/gguf-writer.js";
import { inspect } from "../src/io/inspect.js";
import { readHeader } from "../src/io/safetensors.js";
import { LocalSource } from "../src/io/source.js";
import { kernels } from "../src/quant/kernels.js";
import { FIXTURE, ROOT, tempDir } from "./helpers.js";

const BIN = join(ROOT, "bin", "deepcast.js");
const deepcast = (...args: string[]) => {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", env: { ...process.env, HF_HUB_OFFLINE: "1" } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};
interface Listing { file_size: number; kv: { key: string; value?: unknown }[]; tensors: { name: string; type: string; ne: number[]; nbytes: number }[] }
const bf16Listing = JSON.parse(readFileSync(join(ROOT, "fixtures", "llama-cpp-tiny-dsv3", "tiny-dsv3-BF16.listing.json"), "utf8")) as Listing;

let dir: string;
let single: string;
let split: string;
beforeAll(async () => {
  dir = await tempDir();
  single = join(dir, "tiny-BF16.gguf");
  split = join(dir, "split-BF16.gguf");
  const run = async (out: string, splitOpts?: { maxTensors: number }) => {
    const plan = await planToGguf(new LocalSource(FIXTURE), out, { ftype: "BF16", ...(splitOpts ? { split: splitOpts } : {}) });
    await runToGguf(plan, { kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true });
  };
  await run(single);
  await run(split, { maxTensors: 25 });
}, 120_000);

describe("inspect", () => {
  it("a checkpoint folder: every shard's tensors with dtype, shape, bytes and shard; totals per dtype; config", async () => {
    const r = await inspect(FIXTURE);
    expect(r).toMatchObject({ format: "safetensors", path: FIXTURE, shapeOrder: "row-major", tensorCount: 501 });
    const index = JSON.parse(readFileSync(join(FIXTURE, "model.safetensors.index.json"), "utf8")) as { metadata: { total_size: number }; weight_map: Record<string, string> };
    expect(r.totalBytes).toBe(index.metadata.total_size);
    expect(r.files.map((f) => f.file)).toEqual(["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]);
    for (const t of r.tensors) {
      expect(t.file).toBe(index.weight_map[t.name]);
      const e = (await readHeader(join(FIXTURE, t.file))).byName.get(t.name)!;
      expect([t.type, t.shape, t.bytes]).toEqual([e.dtype, e.shape, e.end - e.begin]);
    }
    expect(Object.keys(r.types).sort()).toEqual(["BF16", "F32", "F8_E4M3"]);
    expect(Object.values(r.types).reduce((n, e) => n + e.tensors, 0)).toBe(501);
    expect(Object.values(r.types).reduce((n, e) => n + e.bytes, 0)).toBe(r.totalBytes);
    expect((r.metadata.config as { model_type: string }).model_type).toBe("deepseek_v3");
    // One shard alone.
    const one = await inspect(join(FIXTURE, "model-00001-of-00003.safetensors"));
    expect(one.tensorCount).toBe(r.files[0]!.tensors);
  });

  it("a GGUF: the tensor table and metadata of llama.cpp's own listing; a split reads as the same model", async () => {
    const r = await inspect(single);
    expect(r).toMatchObject({ format: "gguf", container: "GGUF v3", shapeOrder: "ggml", tensorCount: bf16Listing.tensors.length });
    expect(r.files).toEqual([{ file: single, bytes: bf16Listing.file_size, tensors: bf16Listing.tensors.length }]);
    expect(r.tensors.map((t) => [t.name, t.type, t.shape, t.bytes])).toEqual(bf16Listing.tensors.map((t) => [t.name, t.type, t.ne, t.nbytes]));
    expect(Object.keys(r.metadata)).toEqual(bf16Listing.kv.map((k) => k.key));
    expect(r.metadata["general.architecture"]).toBe("deepseek2");
    expect(r.metadata["general.sampling.top_p"]).toBe(0.95);
    expect(r.metadata["tokenizer.ggml.tokens"]).toMatchObject({ array: "STRING", length: 2048, head: expect.arrayContaining(["<｜begin▁of▁sentence｜>"]) });

    const s = await inspect(join(dir, "split-BF16-00002-of-00003.gguf"));
    expect(s.files).toHaveLength(3);
    expect(s.path).toBe(join(dir, "split-BF16-00001-of-00003.gguf"));
    expect(s.tensors.map((t) => [t.name, t.type, t.shape, t.bytes])).toEqual(r.tensors.map((t) => [t.name, t.type, t.shape, t.bytes]));
    expect(new Set(s.tensors.map((t) => t.file))).toEqual(new Set(["split-BF16-00001-of-00003.gguf", "split-BF16-00002-of-00003.gguf", "split-BF16-00003-of-00003.gguf"]));
    expect(s.types).toEqual(r.types);
  });

  it("imatrix files: GGUF (in_sum2/counts tensors, imatrix.* keys) and legacy .dat (entries, ncall trailer)", async () => {
    const path = join(dir, "m.imatrix.gguf");
    const layout = planGgufLayout(path, [kv.str("general.type", "imatrix"), kv.arr("imatrix.datasets", "STRING", ["wiki.txt"]), kv.u32("imatrix.chunk_count", 7), kv.u32("imatrix.chunk_size", 512)], [
      { name: "blk.0.ffn_down_exps.weight.in_sum2", ne: [4, 2], type: "F32" },
      { name: "blk.0.ffn_down_exps.weight.counts", ne: [1, 2], type: "F32" },
    ]);
    const w = await GgufWriter.create(layout);
    await w.append("blk.0.ffn_down_exps.weight.in_sum2", new Uint8Array(32));
    await w.append("blk.0.ffn_down_exps.weight.counts", new Uint8Array(8));
    await w.commit();
    const g = await inspect(path);
    expect(g).toMatchObject({ format: "imatrix", container: "imatrix GGUF v3", tensorCount: 2, totalBytes: 40 });
    expect(g.metadata).toEqual({ "general.type": "imatrix", "imatrix.datasets": ["wiki.txt"], "imatrix.chunk_count": 7, "imatrix.chunk_size": 512 });

    // legacy: n_entries, then per entry name, ncall, n_values, values; then chunk count and dataset name.
    const i32 = (v: number) => { const b = Buffer.alloc(4); b.writeInt32LE(v); return b; };
    const name = Buffer.from("blk.1.attn_q_a.weight");
    const dat = Buffer.concat([i32(1), i32(name.length), name, i32(3), i32(6), Buffer.from(new Float32Array([1, 2, 3, 4, 5, 6]).buffer), i32(9), i32(8), Buffer.from("wiki.txt")]);
    const datPath = join(dir, "m.imatrix.dat");
    await writeFile(datPath, dat);
    const d = await inspect(datPath);
    expect(d).toMatchObject({ format: "imatrix", container: "imatrix (legacy .dat)", tensorCount: 1, totalBytes: 24 });
    expect(d.tensors).toEqual([{ name: "blk.1.attn_q_a.weight", type: "F32", shape: [6, 1], bytes: 24, file: "m.imatrix.dat" }]);
    expect(d.metadata).toMatchObject({ datasets: ["wiki.txt"], chunkCount: 9, entries: 1 });
  });

  it("the 671B replica (163 shards, 91,991 tensors) from headers, in seconds", async () => {
    const replica = join(await tempDir("deepcast-replica-"), "DeepSeek-V3");
    await writeDsv3Replica(replica);
    const t0 = performance.now();
    const r = await inspect(replica);
    const seconds = (performance.now() - t0) / 1000;
    expect(r.tensorCount).toBe(DSV3_REAL.tensors);
    expect(r.totalBytes).toBe(DSV3_REAL.totalBytes);
    expect(r.files).toHaveLength(DSV3_REAL.shards);
    expect(r.types["F8_E4M3"]!.tensors).toBe(DSV3_REAL.fp8Tensors);
    expect(seconds).toBeLessThan(60); // ~1 s on an idle machine; the bound only catches reading tensor data
  }, 120_000);

  it("the CLI: a table with totals per type, --json with the version, clear errors", async () => {
    const text = deepcast("inspect", single);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/GGUF v3, 1 file\(s\), 70 tensors/);
    expect(text.stdout).toMatch(/^ {2}token_embd\.weight +BF16 +\[256,2048\] +1048576 +tiny-BF16\.gguf$/m);
    expect(text.stdout).toMatch(/^totals per type:\n {2}BF16 +47 tensors/m);
    const json = deepcast("inspect", FIXTURE, "--json");
    expect(json.code, json.stderr).toBe(0);
    const j = JSON.parse(json.stdout);
    expect(j).toMatchObject({ command: "inspect", format: "safetensors", tensorCount: 501 });
    expect(typeof j.version).toBe("string");

    const junk = join(dir, "notes.txt");
    await writeFile(junk, "hello");
    const bad = deepcast("inspect", junk);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/cannot tell what this file is.*notes\.txt.*\[UNSUPPORTED\]/);
    const truncated = join(dir, "cut.gguf");
    await writeFile(truncated, readFileSync(single).subarray(0, 5000));
    const cut = deepcast("inspect", truncated);
    expect(cut.code).toBe(1);
    expect(cut.stderr).toMatch(/cut\.gguf/);
    expect(cut.stderr).not.toMatch(/\n\s+at /);
    await expect(inspect("/nonexistent/model")).rejects.toBeInstanceOf(DeepcastError);
  });
});
