import { copyFile, cp, mkdir, readdir, readFile, stat, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { planFp8ToBf16, runFp8ToBf16, type RunOptions } from "../src/convert/fp8-to-bf16.js";
import { MANIFEST } from "../src/convert/run-state.js";
import { loadCheckpoint } from "../src/io/checkpoint.js";
import type { Dtype } from "../src/io/dtypes.js";
import { SafetensorsFile, safetensorsFileSize } from "../src/io/safetensors.js";
import { LocalSource } from "../src/io/source.js";
import { kernels } from "../src/quant/kernels.js";
import { FIXTURE, GOLDEN, sha256, tempDir } from "./helpers.js";

interface GoldenTensor { name: string; dtype: string; shape: number[]; data_offsets: [number, number]; sha256: string }
interface GoldenFile { file: string; bytes: number; tensors: GoldenTensor[] }

const golden = JSON.parse(await readFile(join(GOLDEN, "bf16.tensors.json"), "utf8")) as { files: GoldenFile[] };

async function convert(input: string, out: string, extra: Partial<RunOptions> = {}) {
  const ckpt = await loadCheckpoint(new LocalSource(input));
  const plan = planFp8ToBf16(ckpt);
  return runFp8ToBf16(ckpt, plan, { out, kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true, ...extra });
}

async function hashTree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).sort()) out[f] = sha256(await readFile(join(dir, f)));
  return out;
}

describe("fp8-to-bf16 on the tiny DeepSeek-V3 fixture", () => {
  let out: string;
  let inputBefore: Record<string, string>;
  beforeAll(async () => {
    inputBefore = await hashTree(FIXTURE);
    out = join(await tempDir(), "bf16");
    await convert(FIXTURE, out);
  });

  it("every output tensor hashes to the golden output of DeepSeek's fp8_cast_bf16.py", async () => {
    let n = 0;
    for (const g of golden.files) {
      const f = await SafetensorsFile.open(join(out, g.file));
      try {
        expect(f.tensors.map((t) => t.name).sort()).toEqual(g.tensors.map((t) => t.name).sort());
        for (const gt of g.tensors) {
          const t = f.entry(gt.name);
          expect([t.dtype, t.shape, [t.begin, t.end]]).toEqual([gt.dtype, gt.shape, gt.data_offsets]);
          const buf = new Uint8Array(t.end - t.begin);
          await f.read(gt.name, buf);
          expect(sha256(buf), gt.name).toBe(gt.sha256);
          n++;
        }
        // Same layout as the safetensors library wrote for the golden files: no bytes after the last
        // tensor, and (golden files carry no __metadata__) the same file size with the same header rules.
        const dataEnd = Math.max(...g.tensors.map((t) => t.data_offsets[1]));
        expect(f.size - f.header.dataStart).toBe(dataEnd);
        const inOrder = [...g.tensors].sort((a, b) => a.data_offsets[0] - b.data_offsets[0]);
        expect(safetensorsFileSize(inOrder.map((t) => ({ ...t, dtype: t.dtype as Dtype })), null)).toBe(g.bytes);
      } finally {
        await f.close();
      }
    }
    expect(n).toBe(269);
  });

  it("rewrites the index without the scales and keeps the shard names", async () => {
    const idx = JSON.parse(await readFile(join(out, "model.safetensors.index.json"), "utf8"));
    const gold = JSON.parse(await readFile(join(GOLDEN, "bf16", "model.safetensors.index.json"), "utf8"));
    expect(idx.weight_map).toEqual(gold.weight_map);
    expect(Object.keys(idx.weight_map)).toEqual(Object.keys(gold.weight_map));
    const sizes = golden.files.flatMap((f) => f.tensors.map((t) => t.data_offsets[1] - t.data_offsets[0]));
    expect(idx.metadata.total_size).toBe(sizes.reduce((a, b) => a + b, 0));
  });

  it("writes config.json without quantization_config, copies the small files, leaves the input untouched", async () => {
    const cfg = JSON.parse(await readFile(join(out, "config.json"), "utf8"));
    const orig = JSON.parse(await readFile(join(FIXTURE, "config.json"), "utf8"));
    expect(cfg.quantization_config).toBeUndefined();
    expect(cfg.torch_dtype).toBe("bfloat16");
    delete orig.quantization_config;
    expect({ ...cfg, torch_dtype: orig.torch_dtype }).toEqual(orig);
    for (const f of ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"]) {
      expect((await readFile(join(out, f))).equals(await readFile(join(FIXTURE, f)))).toBe(true);
    }
    const files = (await readdir(out)).filter((f) => f !== MANIFEST);
    expect(files.some((f) => f.endsWith(".partial"))).toBe(false);
    expect(await hashTree(FIXTURE)).toEqual(inputBefore);
  });

  it("resumes after an interruption and ends byte-identical to an uninterrupted run", async () => {
    const out2 = join(await tempDir(), "bf16");
    // Interrupt in the middle of the second shard.
    let shardsDone = 0;
    let chunksInShard = 0;
    await expect(
      convert(FIXTURE, out2, {
        chunkBytes: 64 * 1024,
        onEvent: (e) => {
          if (e.kind === "shard") { shardsDone++; chunksInShard = 0; }
          if (e.kind === "bytes" && shardsDone === 1 && ++chunksInShard === 5) throw new Error("simulated crash");
        },
      }),
    ).rejects.toThrow("simulated crash");
    const partial = await readdir(out2);
    expect(partial).toContain("model-00001-of-00003.safetensors");
    expect(partial).not.toContain("model-00002-of-00003.safetensors");
    expect(partial.some((f) => f.endsWith(".partial") && f !== `${MANIFEST}.partial`)).toBe(false);
    const firstShard = await stat(join(out2, "model-00001-of-00003.safetensors"));

    const resumed = await convert(FIXTURE, out2, { threads: 1 });
    expect(resumed.resumedShards).toBe(1);
    expect((await stat(join(out2, "model-00001-of-00003.safetensors"))).mtimeMs).toBe(firstShard.mtimeMs);
    const a = await hashTree(out);
    const b = await hashTree(out2);
    delete a[MANIFEST];
    delete b[MANIFEST];
    expect(b).toEqual(a);

    // A finished run reruns as a no-op.
    expect((await convert(FIXTURE, out2)).resumedShards).toBe(3);
  });

  it("a run interrupted before its first shard completes is resumed, not refused", async () => {
    const out5 = join(await tempDir(), "fresh");
    let chunks = 0;
    await expect(convert(FIXTURE, out5, { chunkBytes: 64 * 1024, onEvent: (e) => { if (e.kind === "bytes" && ++chunks === 3) throw new Error("early crash"); } }))
      .rejects.toThrow("early crash");
    expect((await readdir(out5)).filter((f) => !f.startsWith("."))).toEqual([]);
    const again = await convert(FIXTURE, out5);
    expect(again.resumedShards).toBe(0);
    expect(sha256(await readFile(join(out5, "model-00001-of-00003.safetensors")))).toBe(
      sha256(await readFile(join(out, "model-00001-of-00003.safetensors"))));
  });

  it("redoes a completed shard that was damaged afterwards", async () => {
    const out3 = join(await tempDir(), "bf16");
    await convert(FIXTURE, out3);
    await truncate(join(out3, "model-00002-of-00003.safetensors"), 1000);
    const again = await convert(FIXTURE, out3);
    expect(again.resumedShards).toBe(2);
    expect(sha256(await readFile(join(out3, "model-00002-of-00003.safetensors")))).toBe(
      sha256(await readFile(join(out, "model-00002-of-00003.safetensors"))));
  });

  it("refuses to clobber an unrelated output folder, and a resume with different inputs", async () => {
    const d = await tempDir();
    await writeFile(join(d, "keep.txt"), "mine");
    await expect(convert(FIXTURE, d)).rejects.toThrow(/not empty; pass --force/);
    expect(await readFile(join(d, "keep.txt"), "utf8")).toBe("mine");
    await expect(convert(FIXTURE, FIXTURE, { force: true })).rejects.toThrow(/input folder/);

    const changed = join(await tempDir(), "in");
    await cp(FIXTURE, changed, { recursive: true });
    const out4 = join(await tempDir(), "bf16");
    await convert(FIXTURE, out4);
    await expect(convert(changed, out4)).rejects.toThrow(/different inputs or options/);
    await expect(convert(changed, out4, { force: true })).resolves.toBeTruthy();
  });
});

describe("fp8-to-bf16 rejects bad input with the file and tensor named", () => {
  async function brokenCopy(): Promise<string> {
    const d = join(await tempDir(), "in");
    await mkdir(d);
    for (const f of await readdir(FIXTURE)) await copyFile(join(FIXTURE, f), join(d, f));
    return d;
  }

  async function expectFailure(input: string, pattern: RegExp) {
    const out = join(await tempDir(), "out");
    await expect(convert(input, out)).rejects.toThrow(pattern);
    const left = await readdir(out).catch(() => []);
    for (const f of left) {
      expect(f.startsWith(".") || f === MANIFEST, `unexpected ${f}`).toBe(true);
      expect(f.endsWith(".partial") && f !== `${MANIFEST}.partial`, `half-written ${f} left behind`).toBe(false);
    }
  }

  it("an FP8 weight whose scale is missing", async () => {
    const d = await brokenCopy();
    const idx = JSON.parse(await readFile(join(d, "model.safetensors.index.json"), "utf8"));
    // Drop the scale from the index and rewrite its shard without it.
    const name = "model.layers.2.self_attn.q_b_proj.weight";
    const shard = idx.weight_map[`${name}_scale_inv`];
    delete idx.weight_map[`${name}_scale_inv`];
    await writeFile(join(d, "model.safetensors.index.json"), JSON.stringify(idx));
    await rewriteWithout(join(d, shard), `${name}_scale_inv`);
    await expectFailure(d, new RegExp(`no ${name}_scale_inv.*tensor ${name.replace(/\./g, "\\.")}`));
  });

  it("a scale of the wrong shape", async () => {
    const d = await brokenCopy();
    const file = join(d, "model-00001-of-00003.safetensors");
    const buf = await readFile(file);
    const n = Number(buf.readBigUInt64LE(0));
    const header = buf.subarray(8, 8 + n).toString("utf8");
    // [2,4] -> [4,2]: same byte count, wrong grid.
    const name = "model.layers.0.mlp.down_proj.weight_scale_inv";
    const patched = header.replace(new RegExp(`("${name.replace(/\./g, "\\.")}":\\{"dtype":"F32","shape":)\\[2,4\\]`), "$1[4,2]");
    expect(patched).not.toBe(header);
    buf.write(patched, 8, "utf8");
    await writeFile(file, buf);
    await expectFailure(d, /scale shape \[4,2\] does not match weight \[256,512\].*model-00001-of-00003.*down_proj\.weight_scale_inv/);
  });

  it("a truncated shard", async () => {
    const d = await brokenCopy();
    const file = join(d, "model-00003-of-00003.safetensors");
    await truncate(file, (await stat(file)).size - 100);
    await expectFailure(d, /truncated safetensors file.*model-00003-of-00003\.safetensors.*tensor /);
  });

  it("a malformed header", async () => {
    const d = await brokenCopy();
    const file = join(d, "model-00002-of-00003.safetensors");
    const buf = await readFile(file);
    buf[20] = 0x7b; // corrupt the JSON
    buf[21] = 0x7b;
    await writeFile(file, buf);
    await expectFailure(d, /malformed safetensors header.*model-00002-of-00003/);
  });

  it("an index that names a missing shard, or a path instead of a file name", async () => {
    const d = await brokenCopy();
    await expectFailure(await withIndexEntry(d, "model-00004-of-00003.safetensors"), /index names shard model-00004-of-00003\.safetensors, which does not exist/);
    const d2 = await brokenCopy();
    await expectFailure(await withIndexEntry(d2, "../model-00001-of-00003.safetensors"), /invalid shard file.*plain file names/);
  });
});

async function withIndexEntry(d: string, shard: string): Promise<string> {
  const p = join(d, "model.safetensors.index.json");
  const idx = JSON.parse(await readFile(p, "utf8"));
  idx.weight_map["model.norm.weight"] = shard;
  await writeFile(p, JSON.stringify(idx));
  return d;
}

/** Rewrites a shard without one tensor (header and data), keeping everything else. */
async function rewriteWithout(file: string, drop: string) {
  const f = await SafetensorsFile.open(file);
  const { SafetensorsWriter } = await import("../src/io/safetensors.js");
  const keep = f.tensors.filter((t) => t.name !== drop);
  const datas = [];
  for (const t of keep) {
    const b = new Uint8Array(t.end - t.begin);
    await f.read(t.name, b);
    datas.push(b);
  }
  await f.close();
  const w = await SafetensorsWriter.create(file, keep, f.header.metadata);
  for (const [i, t] of keep.entries()) await w.append(t.name, datas[i]!);
  await w.commit();
}
