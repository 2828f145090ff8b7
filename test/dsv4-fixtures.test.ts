/**
 * fixtures/tiny-dsv32 and fixtures/tiny-dsv4: the committed generator makes them byte for byte, they
 * load with every tensor kind of the real layouts, and the V4 formats (E8M0 `.scale`, packed FP4 I8
 * experts, I64 tid2eid) are validated like V3's FP8 scales, with the file and tensor named.
 */
import { execFile } from "node:child_process";
import { copyFile, mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

import { DeepcastError } from "../src/errors.js";
import { blockScaleOf, loadCheckpoint, locate } from "../src/io/checkpoint.js";
import { LocalSource } from "../src/io/source.js";
import { ROOT, sha256, tempDir } from "./helpers.js";

const V32 = join(ROOT, "fixtures", "tiny-dsv32");
const V4 = join(ROOT, "fixtures", "tiny-dsv4");

async function filesOf(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).sort()) if (f !== "README.md") out[f] = sha256(await readFile(join(dir, f)));
  return out;
}

describe("the generator", () => {
  it("reproduces both fixtures byte for byte", async () => {
    const d = await tempDir();
    await promisify(execFile)(process.execPath, ["--import", "tsx", join(ROOT, "fixtures", "make-tiny-dsv32-dsv4.ts"), d], { cwd: ROOT });
    expect(await filesOf(join(d, "tiny-dsv32"))).toEqual(await filesOf(V32));
    expect(await filesOf(join(d, "tiny-dsv4"))).toEqual(await filesOf(V4));
  }, 120_000);
});

describe("tiny-dsv4 has every tensor kind of the V4 layout", () => {
  it("loads; FP8 weights carry E8M0 scales on the 128-tile grid, experts are packed FP4 with per-32 scales", async () => {
    const ck = await loadCheckpoint(new LocalSource(V4));
    const names = [...ck.weightMap.keys()];
    expect(names.some((n) => n.startsWith("model."))).toBe(false);
    const kind = (n: string) => blockScaleOf(ck, n)?.rule.kind;
    expect(kind("layers.0.attn.wq_a.weight")).toBe("fp8-e8m0");
    expect(kind("layers.1.attn.wq_b.weight")).toBe("fp8-e8m0"); // its scale is in another shard
    expect(kind("layers.3.ffn.experts.5.w2.weight")).toBe("fp4-e8m0");
    expect(locate(ck, "layers.3.ffn.experts.5.w2.scale")!.entry.shape).toEqual([256, 4]);
    expect(locate(ck, "layers.0.ffn.gate.tid2eid")!.entry).toMatchObject({ dtype: "I64", shape: [2048, 2] });
    expect(locate(ck, "layers.2.ffn.gate.tid2eid")).toBeUndefined();
    const cfg = ck.config as { compress_ratios: number[] };
    expect(new Set(cfg.compress_ratios)).toEqual(new Set([0, 4, 128]));
    for (const [l, r] of cfg.compress_ratios.entries()) {
      const p = l < 4 ? `layers.${l}.` : "mtp.0.";
      expect(names.includes(`${p}attn.compressor.ape`), `${p} compressor`).toBe(r !== 0);
      expect(names.includes(`${p}attn.indexer.wq_b.weight`), `${p} indexer`).toBe(r === 4);
    }
    for (const n of ["hc_head_fn", "mtp.0.e_proj.weight", "mtp.0.h_proj.scale", "mtp.0.hc_head_base", "mtp.0.ffn.experts.7.w3.weight", "layers.0.attn.attn_sink"]) {
      expect(names, n).toContain(n);
    }
  });

  it("tiny-dsv32 loads with the indexer in every layer, MTP included", async () => {
    const ck = await loadCheckpoint(new LocalSource(V32));
    for (let l = 0; l <= 4; l++) {
      expect(blockScaleOf(ck, `model.layers.${l}.self_attn.indexer.wq_b.weight`)?.rule.kind).toBe("fp8-f32");
      expect(locate(ck, `model.layers.${l}.self_attn.indexer.k_norm.bias`)).toBeDefined();
    }
  });
});

/** A copy of tiny-dsv4 whose shard `file` has its header edited by `edit` (data unchanged). */
async function editedCopy(file: string, edit: (h: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>) => void): Promise<string> {
  const d = join(await tempDir(), "in");
  await mkdir(d);
  for (const f of await readdir(V4)) await copyFile(join(V4, f), join(d, f));
  const buf = await readFile(join(d, file));
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  edit(header);
  let json = Buffer.from(JSON.stringify(header));
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  await writeFile(join(d, file), Buffer.concat([len, json, buf.subarray(8 + n)]));
  return d;
}

async function loadError(dir: string): Promise<DeepcastError> {
  const e = await loadCheckpoint(new LocalSource(dir)).then(() => null, (x: unknown) => x);
  expect(e).toBeInstanceOf(DeepcastError);
  return e as DeepcastError;
}

describe("V4 formats are validated like V3's, naming the file and tensor", () => {
  const SHARD1 = "model-00001-of-00003.safetensors";

  it("an FP4 scale off the 32-group grid", async () => {
    const e = await loadError(await editedCopy(SHARD1, (h) => { h["layers.0.ffn.experts.2.w1.scale"]!.shape = [256, 4]; }));
    expect(e.code).toBe("BAD_SCALE");
    expect(e.message).toMatch(/scale shape \[256,4\] does not match weight \[128,128\] \(I8\): expected \[128,8\]/);
    expect(e.message).toContain(`${SHARD1}`);
    expect(e.message).toContain("layers.0.ffn.experts.2.w1.scale");
  });

  it("an FP8 weight's E8M0 scale off the 128-tile grid", async () => {
    const e = await loadError(await editedCopy(SHARD1, (h) => { h["layers.0.attn.wo_a.scale"]!.shape = [1, 4]; }));
    expect(e.message).toMatch(/scale shape \[1,4\] does not match weight \[256,256\] \(F8_E4M3\): expected \[2,2\].*layers\.0\.attn\.wo_a\.scale/s);
  });

  it("a .scale of the wrong dtype", async () => {
    const e = await loadError(await editedCopy(SHARD1, (h) => { h["layers.0.attn.wq_a.scale"]!.dtype = "U8"; }));
    expect(e.code).toBe("BAD_SCALE");
    expect(e.message).toMatch(/scale must be F8_E8M0, found U8.*layers\.0\.attn\.wq_a\.scale/s);
  });

  it("a scale on a weight that is neither FP8 nor packed FP4", async () => {
    const e = await loadError(await editedCopy(SHARD1, (h) => { h["layers.0.ffn.experts.0.w1.weight"]!.dtype = "U8"; }));
    expect(e.code).toBe("BAD_SCALE");
    expect(e.message).toMatch(/U8 weight carries a block scale layers\.0\.ffn\.experts\.0\.w1\.scale/);
  });

  it("a packed FP4 weight without its scale", async () => {
    const d = await editedCopy(SHARD1, (h) => {
      // Turn the scale into an unrelated tensor name (same bytes), so the weight has none.
      h["layers.0.ffn.experts.1.w3.scale_moved"] = h["layers.0.ffn.experts.1.w3.scale"]!;
      delete h["layers.0.ffn.experts.1.w3.scale"];
      h["layers.0.ffn.experts.1.w3.scale_moved"]!.dtype = "U8";
    });
    const idx = JSON.parse(await readFile(join(d, "model.safetensors.index.json"), "utf8"));
    delete idx.weight_map["layers.0.ffn.experts.1.w3.scale"];
    await writeFile(join(d, "model.safetensors.index.json"), JSON.stringify(idx));
    const e = await loadError(d);
    expect(e.code).toBe("BAD_SCALE");
    expect(e.message).toMatch(/packed FP4 \(I8\) weight has no layers\.0\.ffn\.experts\.1\.w3\.scale.*tensor layers\.0\.ffn\.experts\.1\.w3\.weight/s);
  });

  it("an E8M0 tensor that scales nothing", async () => {
    const d = await editedCopy(SHARD1, (h) => {
      h["layers.0.attn.stray"] = h["layers.0.attn.wq_a.scale"]!;
      delete h["layers.0.attn.wq_a.scale"];
      h["layers.0.attn.wq_a.weight"]!.dtype = "U8";
    });
    const idx = JSON.parse(await readFile(join(d, "model.safetensors.index.json"), "utf8"));
    delete idx.weight_map["layers.0.attn.wq_a.scale"];
    await writeFile(join(d, "model.safetensors.index.json"), JSON.stringify(idx));
    const e = await loadError(d);
    expect(e.code).toBe("BAD_SCALE");
    expect(e.message).toMatch(/F8_E8M0 scale tensor belongs to no weight.*layers\.0\.attn\.stray/s);
  });
});
