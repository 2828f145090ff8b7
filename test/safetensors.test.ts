import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadCheckpoint } from "../src/io/checkpoint.js";
import { safetensorsOrder, type Dtype } from "../src/io/dtypes.js";
import { encodeHeader, MAX_HEADER_BYTES, parseHeader, parseHeaderLength, readHeader, SafetensorsFile, SafetensorsWriter } from "../src/io/safetensors.js";
import { LocalSource } from "../src/io/source.js";
import { FIXTURE, tempDir } from "./helpers.js";

const SHARDS = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"];

function headerJson(obj: unknown): Uint8Array {
  return Buffer.from(JSON.stringify(obj));
}

describe("safetensors header", () => {
  it("re-encodes the fixture's headers byte for byte (same rules as the safetensors library)", async () => {
    for (const s of SHARDS) {
      const bytes = await readFile(join(FIXTURE, s));
      const h = await readHeader(join(FIXTURE, s));
      const { bytes: encoded } = encodeHeader(h.tensors, h.metadata);
      expect(encoded.equals(bytes.subarray(0, h.dataStart)), s).toBe(true);
    }
  });

  it("checks the length prefix against the file size and the cap", () => {
    const p = Buffer.alloc(8);
    p.writeBigUInt64LE(BigInt(MAX_HEADER_BYTES + 1));
    expect(() => parseHeaderLength(p, 1e12, "f")).toThrow(/exceeds the .*cap.*file f/);
    p.writeBigUInt64LE(1000n);
    expect(() => parseHeaderLength(p, 500, "f")).toThrow(/truncated.*does not fit/);
    expect(() => parseHeaderLength(p.subarray(0, 4), 4, "f")).toThrow(/too short/);
  });

  it("F4 (torch float4_e2m1fn_x2): the logical shape at half a byte per element, laid out after the byte-wide dtypes (the crate's enum: BOOL, F4, U8, ...)", () => {
    const specs = [
      { name: "a", dtype: "I8" as Dtype, shape: [2, 2] },
      { name: "b", dtype: "F4" as Dtype, shape: [2, 4] },
      { name: "c", dtype: "F8_E8M0" as Dtype, shape: [2, 1] },
      { name: "d", dtype: "BOOL" as Dtype, shape: [1] },
    ].sort(safetensorsOrder);
    expect(specs.map((t) => t.name)).toEqual(["c", "a", "b", "d"]);
    const { bytes, offsets } = encodeHeader(specs, null);
    expect(offsets).toEqual([[0, 2], [2, 6], [6, 10], [10, 11]]);
    expect(JSON.parse(bytes.subarray(8).toString("utf8")).b).toEqual({ dtype: "F4", shape: [2, 4], data_offsets: [6, 10] });
    const h = parseHeader(bytes.subarray(8), bytes.length + 11, "x.safetensors");
    expect(h.tensors.map((t) => [t.name, t.dtype, t.shape, t.end - t.begin])).toEqual([["c", "F8_E8M0", [2, 1], 2], ["a", "I8", [2, 2], 4], ["b", "F4", [2, 4], 4], ["d", "BOOL", [1], 1]]);
    const odd = headerJson({ a: { dtype: "F4", shape: [3], data_offsets: [0, 2] } });
    expect(() => parseHeader(odd, 8 + odd.length + 2, "x.safetensors")).toThrow(/F4\[3\] is not a whole number of bytes.*tensor a/);
    expect(() => encodeHeader([{ name: "z", dtype: "F4", shape: [5] }], null)).toThrow(/not a whole number of bytes/);
  });

  const ok = { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] };
  it.each([
    ["not JSON", Buffer.from("{nope"), /malformed/],
    ["an array", headerJson([1]), /not a JSON object/],
    ["an unknown dtype", headerJson({ a: { ...ok, dtype: "F12" } }), /unknown dtype "F12".*tensor a/],
    ["a bad shape", headerJson({ a: { ...ok, shape: [2, -1] } }), /shape/],
    ["a span that does not match the shape", headerJson({ a: { ...ok, data_offsets: [0, 12] } }), /span 12 bytes, but F32\[2,2\] needs 16/],
    ["overlapping tensors", headerJson({ a: ok, b: { ...ok, data_offsets: [8, 24] } }), /overlaps/],
    ["data past the end of the file", headerJson({ a: ok, b: { ...ok, data_offsets: [16, 32] } }), /truncated.*needs 32 bytes.*has 16.*tensor b/],
    ["bad metadata", headerJson({ __metadata__: { a: 1 }, a: ok }), /__metadata__/],
  ])("rejects %s", (_what, json, pattern) => {
    expect(() => parseHeader(json, 8 + json.length + 16, "x.safetensors")).toThrow(pattern);
  });
});

describe("safetensors reader and writer", () => {
  it("reads tensors by position and round-trips through the writer", async () => {
    const d = await tempDir();
    const f = await SafetensorsFile.open(join(FIXTURE, SHARDS[0]!));
    const specs = f.tensors.slice(0, 5);
    const path = join(d, "out.safetensors");
    const w = await SafetensorsWriter.create(path, specs, { format: "pt" });
    const datas: Uint8Array[] = [];
    for (const t of specs) {
      const b = new Uint8Array(t.end - t.begin);
      await f.read(t.name, b);
      datas.push(b);
      // Append in two pieces to exercise chunked writes.
      const half = Math.floor(b.length / 2);
      await w.append(t.name, b.subarray(0, half));
      await w.append(t.name, b.subarray(half));
    }
    await w.commit();
    await f.close();
    const g = await SafetensorsFile.open(path);
    for (const [i, t] of specs.entries()) {
      const b = new Uint8Array(t.end - t.begin);
      await g.read(t.name, b);
      expect(Buffer.from(b).equals(Buffer.from(datas[i]!))).toBe(true);
    }
    await g.close();
  });

  it("refuses a tensor out of order and an incomplete commit, leaving no final file", async () => {
    const d = await tempDir();
    const path = join(d, "x.safetensors");
    const specs = [{ name: "a", dtype: "F32" as const, shape: [4] }, { name: "b", dtype: "F32" as const, shape: [4] }];
    const w = await SafetensorsWriter.create(path, specs, null);
    await expect(w.append("b", new Uint8Array(16))).rejects.toThrow(/expects a/);
    await w.append("a", new Uint8Array(16));
    await expect(w.commit()).rejects.toThrow(/incomplete/);
    await w.abort();
    await expect(readFile(path)).rejects.toThrow();
  });

  it("loads the fixture index: scales in other shards are found where the index says", async () => {
    const ckpt = await loadCheckpoint(new LocalSource(FIXTURE));
    expect(ckpt.shards).toEqual(SHARDS);
    expect(ckpt.weightMap.size).toBe(501);
    expect(ckpt.weightMap.get("model.layers.2.self_attn.q_b_proj.weight")).toBe(SHARDS[1]);
    expect(ckpt.weightMap.get("model.layers.2.self_attn.q_b_proj.weight_scale_inv")).toBe(SHARDS[0]);
  });

  it("reports an index entry whose shard does not hold the tensor", async () => {
    const d = await tempDir();
    const { cp } = await import("node:fs/promises");
    await cp(FIXTURE, d, { recursive: true });
    const p = join(d, "model.safetensors.index.json");
    const idx = JSON.parse(await readFile(p, "utf8"));
    idx.weight_map["model.norm.weight"] = SHARDS[0] === idx.weight_map["model.norm.weight"] ? SHARDS[1] : SHARDS[0];
    await writeFile(p, JSON.stringify(idx));
    await expect(loadCheckpoint(new LocalSource(d))).rejects.toThrow(/does not contain it.*tensor model\.norm\.weight/);
  });
});
