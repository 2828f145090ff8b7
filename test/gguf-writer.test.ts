import { randomBytes } from "node:crypto";
import { open, readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { gguf, ggufAllShards } from "@huggingface/gguf";
import { describe, expect, it } from "vitest";
import { encodeKv, encodeValueData, GgufType, kv, setKvInPlace, setKvLast, type GgufKV } from "../src/io/gguf-kv.js";
import { GGUF_DEFAULT_ALIGNMENT, padTo, parseSplitSize, planGgufLayout, splitPath, type GgufLayout, type GgufTensorSpec } from "../src/io/gguf-layout.js";
import { GgufWriter } from "../src/io/gguf-writer.js";
import { partialPath } from "../src/io/write.js";
import { ggmlNbytes, ggmlNDims, ggmlType } from "../src/formats/ggml-types.js";
import { DeepcastError } from "../src/errors.js";
import { sha256 as sha, tempDir } from "./helpers.js";



const KVS: GgufKV[] = [
  kv.str("general.architecture", "deepseek2"),
  kv.u8("test.u8", 250),
  kv.i8("test.i8", -7),
  kv.u16("test.u16", 65000),
  kv.i16("test.i16", -30000),
  kv.u32("test.u32", 4000000000),
  kv.i32("test.i32", -2000000000),
  kv.f32("test.f32", 0.1),
  kv.f64("test.f64", 0.1),
  kv.bool("test.bool", true),
  kv.u64("test.u64", 2n ** 63n + 5n),
  kv.i64("test.i64", -(2n ** 62n)),
  kv.str("test.str", "héllo <｜begin▁of▁sentence｜>"),
  kv.arr("test.arr_str", "STRING", ["a", "", "Ġthe", "<｜User｜>"]),
  kv.arr("test.arr_i32", "INT32", [1, -2, 3]),
  kv.arr("test.arr_f32", "FLOAT32", [0.5, -1.25]),
  kv.arr("test.arr_bool", "BOOL", [true, false]),
  kv.arr("test.arr_u64", "UINT64", [1n, 2n ** 40n]),
];

const TENSORS: GgufTensorSpec[] = [
  { name: "token_embd.weight", ne: [64, 10], type: "BF16" },
  { name: "blk.0.attn_norm.weight", ne: [64], type: "F32" },
  { name: "blk.0.ffn_down_exps.weight", ne: [64, 32, 4], type: "Q8_0" },
  { name: "blk.0.attn_k_b.weight", ne: [32, 16, 2], type: "Q4_0" },
  { name: "blk.0.exp_probs_b.bias", ne: [3], type: "F32" },
  { name: "output.weight", ne: [256, 3], type: "Q6_K" },
];

/** Writes `tensors` with random data, each appended in up to 3 chunks; returns the data by name. */
async function writeAll(layout: GgufLayout): Promise<Map<string, Buffer>> {
  const data = new Map<string, Buffer>();
  const w = await GgufWriter.create(layout);
  for (const f of layout.files) {
    for (const t of f.tensors) {
      expect(w.current?.name).toBe(t.name);
      const bytes = randomBytes(t.nbytes);
      data.set(t.name, bytes);
      const cut1 = Math.floor(t.nbytes / 3);
      const cut2 = Math.floor((2 * t.nbytes) / 3);
      await w.append(t.name, bytes.subarray(0, cut1));
      await w.append(t.name, bytes.subarray(cut1, cut2));
      await w.append(t.name, bytes.subarray(cut2));
    }
  }
  expect(w.current).toBeUndefined();
  await w.commit();
  return data;
}

function expectKv(meta: Record<string, { value: unknown; type: number; subType?: number }>, e: GgufKV): void {
  const got = meta[e.key];
  expect(got, e.key).toBeDefined();
  expect(got!.type, e.key).toBe(GgufType[e.type]);
  if (e.type === "ARRAY") {
    expect(got!.subType, e.key).toBe(GgufType[e.elementType]);
    const want = e.elementType === "FLOAT32" ? e.value.map((v) => Math.fround(v as number)) : e.value;
    expect(got!.value, e.key).toEqual(want);
  } else if (e.type === "FLOAT32") {
    expect(got!.value, e.key).toBe(Math.fround(e.value as number));
  } else {
    expect(got!.value, e.key).toEqual(e.value);
  }
}

async function readRange(path: string, offset: number, n: number): Promise<Buffer> {
  const fh = await open(path, "r");
  try {
    const b = Buffer.alloc(n);
    await fh.read(b, 0, n, offset);
    return b;
  } finally {
    await fh.close();
  }
}

describe("ggml types", () => {
  it("knows sizes and parses names case-insensitively", () => {
    expect(ggmlType("q4_k")).toMatchObject({ id: 12, blockSize: 256, typeSize: 144, quantized: true });
    expect(ggmlType("bf16")).toMatchObject({ id: 30, blockSize: 1, typeSize: 2, quantized: false });
    expect(ggmlType(8).name).toBe("Q8_0");
    expect(() => ggmlType("q4_2")).toThrow(DeepcastError);
    expect(ggmlNbytes("Q6_K", [7168, 2048, 256])).toBe(28 * 210 * 2048 * 256);
    expect(() => ggmlNbytes("Q4_K", [128, 4], "blk.0.attn_k_b.weight")).toThrow(/block size/);
    expect(ggmlNDims([32, 128, 1])).toBe(2);
    expect(ggmlNDims([5, 1, 1, 1])).toBe(1);
    expect(ggmlNDims([1, 3])).toBe(2);
  });
});

describe("KV encoding", () => {
  it("encodes strings, arrays and checks ranges", () => {
    const b = encodeKv(kv.str("a", "xy"));
    // u64 len(1) "a" | u32 type 8 | u64 len(2) "xy"
    expect([...b]).toEqual([1, 0, 0, 0, 0, 0, 0, 0, 97, 8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 120, 121]);
    expect([...encodeValueData(kv.arr("x", "INT32", [1, -1]))]).toEqual([1, 0, 0, 0, 255, 255, 255, 255]);
    expect(() => encodeKv(kv.u16("x", 70000))).toThrow(DeepcastError);
    expect(() => encodeKv(kv.u32("x", 1.5))).toThrow(DeepcastError);
    expect(() => encodeKv({ key: "x", type: "BOOL", value: 1 })).toThrow(DeepcastError);
  });

  it("sets keys like ggml (move to end) or like gguf-py (keep position)", () => {
    const a = [kv.u32("x", 1), kv.u32("y", 2), kv.u32("z", 3)];
    const b = [...a];
    setKvLast(a, kv.u32("x", 9));
    setKvInPlace(b, kv.u32("x", 9));
    expect(a.map((e) => e.key)).toEqual(["y", "z", "x"]);
    expect(b.map((e) => e.key)).toEqual(["x", "y", "z"]);
    expect(b[0]!.value).toBe(9);
  });
});

describe("split helpers", () => {
  it("parses sizes like llama.cpp", () => {
    expect(parseSplitSize("50G")).toBe(50e9);
    expect(parseSplitSize("500M")).toBe(500e6);
    expect(parseSplitSize("10K")).toBe(10e3);
    expect(parseSplitSize("12345")).toBe(12345);
    for (const bad of ["1.5G", "G", "-1M", "5T", "0", ""]) expect(() => parseSplitSize(bad), bad).toThrow(DeepcastError);
  });

  it("names shards like gguf-split", () => {
    expect(splitPath("/o/model.gguf", 0, 3)).toBe("/o/model-00001-of-00003.gguf");
    expect(splitPath("/o/model", 2, 3)).toBe("/o/model-00003-of-00003.gguf");
  });
});

describe("GGUF writer", () => {
  it("writes a file that @huggingface/gguf reads back: KVs, tensor infos, offsets, alignment, data", async () => {
    const dir = await tempDir("deepcast-gguf-");
    const path = join(dir, "small.gguf");
    const layout = planGgufLayout(path, KVS, TENSORS);
    expect(layout.files).toHaveLength(1);
    const data = await writeAll(layout);
    const file = layout.files[0]!;
    expect((await stat(path)).size).toBe(file.fileSize);
    expect(layout.totalBytes).toBe(file.fileSize);
    expect(await readdir(dir)).toEqual(["small.gguf"]);

    const parsed = await gguf(path, { allowLocalFile: true, typedMetadata: true });
    const meta = parsed.typedMetadata as unknown as Record<string, { value: unknown; type: number; subType?: number }>;
    expect(meta.version!.value).toBe(3);
    expect(meta.tensor_count!.value).toBe(BigInt(TENSORS.length));
    expect(meta.kv_count!.value).toBe(BigInt(KVS.length));
    // KV order as given
    expect(Object.keys(meta).filter((k) => !["version", "tensor_count", "kv_count"].includes(k))).toEqual(KVS.map((e) => e.key));
    for (const e of KVS) expectKv(meta, e);

    expect(Number(parsed.tensorDataOffset)).toBe(file.dataStart);
    expect(file.dataStart % GGUF_DEFAULT_ALIGNMENT).toBe(0);
    expect(parsed.tensorInfos.map((t) => t.name)).toEqual(TENSORS.map((t) => t.name));
    let expectOffset = 0;
    for (const [i, info] of parsed.tensorInfos.entries()) {
      const spec = TENSORS[i]!;
      expect(info.shape.map(Number)).toEqual(spec.ne);
      expect(info.n_dims).toBe(spec.ne.length);
      expect(info.dtype).toBe(ggmlType(spec.type).id);
      expect(Number(info.offset)).toBe(expectOffset);
      expect(Number(info.offset) % GGUF_DEFAULT_ALIGNMENT).toBe(0);
      const nbytes = ggmlNbytes(spec.type, spec.ne);
      expectOffset += padTo(nbytes, GGUF_DEFAULT_ALIGNMENT);
      const at = Number(parsed.tensorDataOffset + info.offset);
      expect(at).toBe(file.tensors[i]!.fileOffset);
      const bytes = await readRange(path, at, nbytes);
      expect(sha(bytes)).toBe(sha(data.get(spec.name)!));
      // padding after each tensor is zeros
      const pad = padTo(nbytes, 32) - nbytes;
      if (pad) expect([...(await readRange(path, at + nbytes, pad))].every((x) => x === 0)).toBe(true);
    }
    expect(file.dataStart + expectOffset).toBe(file.fileSize);
  });

  it("writes a 3-way split (max tensors) readable with ggufAllShards, gguf-split key order", async () => {
    const dir = await tempDir("deepcast-gguf-");
    const path = join(dir, "split.gguf");
    const layout = planGgufLayout(path, KVS, TENSORS, { maxTensors: 2 });
    expect(layout.files.map((f) => f.path)).toEqual([1, 2, 3].map((i) => join(dir, `split-0000${i}-of-00003.gguf`)));
    const data = await writeAll(layout);
    for (const f of layout.files) expect((await stat(f.path)).size).toBe(f.fileSize);
    expect((await readdir(dir)).sort()).toEqual(layout.files.map((f) => f.path.slice(dir.length + 1)));

    const { shards } = await ggufAllShards(layout.files[0]!.path, { allowLocalFile: true });
    expect(shards).toHaveLength(3);
    expect(shards.flatMap((s) => s.tensorInfos.map((t) => t.name))).toEqual(TENSORS.map((t) => t.name));
    for (const [i, shard] of shards.entries()) {
      const typed = await gguf(layout.files[i]!.path, { allowLocalFile: true, typedMetadata: true });
      const meta = typed.typedMetadata as unknown as Record<string, { value: unknown; type: number }>;
      const keys = Object.keys(meta).filter((k) => !["version", "tensor_count", "kv_count"].includes(k));
      const splitKeys = ["split.no", "split.tensors.count", "split.count"];
      expect(keys).toEqual(i === 0 ? [...KVS.map((e) => e.key), ...splitKeys] : splitKeys);
      expect(meta["split.no"]).toEqual({ value: i, type: GgufType.UINT16 });
      expect(meta["split.count"]).toEqual({ value: 3, type: GgufType.UINT16 });
      expect(meta["split.tensors.count"]).toEqual({ value: TENSORS.length, type: GgufType.INT32 });
      if (i === 0) for (const e of KVS) expectKv(meta, e);
      expect(Number(shard.tensorDataOffset)).toBe(layout.files[i]!.dataStart);
      for (const info of shard.tensorInfos) {
        const nbytes = ggmlNbytes(info.dtype, info.shape.map(Number));
        const bytes = await readRange(layout.files[i]!.path, Number(shard.tensorDataOffset + info.offset), nbytes);
        expect(sha(bytes)).toBe(sha(data.get(info.name)!));
      }
    }
  });

  it("gguf-py split style: key order no, count, tensors.count; unpadded size limit; metadata-only first split", async () => {
    const dir = await tempDir("deepcast-gguf-");
    const path = join(dir, "py.gguf");
    const small: GgufTensorSpec[] = [
      { name: "a", ne: [3], type: "F32" },
      { name: "b", ne: [3], type: "F32" },
      { name: "c", ne: [3], type: "F32" },
    ];
    // limit = two tensors unpadded (24 bytes): gguf-py fits two per file, gguf-split (32 bytes each, padded) one
    const py = planGgufLayout(path, KVS, small, { maxBytes: 24, style: "gguf-py" });
    const gs = planGgufLayout(path, KVS, small, { maxBytes: 24 });
    expect(py.files.map((f) => f.tensors.map((t) => t.name))).toEqual([["a", "b"], ["c"]]);
    expect(gs.files.map((f) => f.tensors.map((t) => t.name))).toEqual([["a"], ["b"], ["c"]]);
    expect(py.files[0]!.kvs.slice(-3).map((e) => e.key)).toEqual(["split.no", "split.count", "split.tensors.count"]);
    expect(py.files[1]!.kvs.map((e) => e.key)).toEqual(["split.no", "split.count", "split.tensors.count"]);
    const big = planGgufLayout(path, KVS, TENSORS, { maxBytes: 1000 });
    // a tensor bigger than the limit gets a file of its own
    for (const f of big.files) expect(f.tensors.length).toBeGreaterThan(0);
    expect(big.files[0]!.tensors.map((t) => t.name)).toEqual(["token_embd.weight"]);

    const meta = planGgufLayout(path, KVS, TENSORS, { maxTensors: 4, noTensorFirstSplit: true });
    expect(meta.files.map((f) => f.tensors.length)).toEqual([0, 4, 2]);
    await writeAll(meta);
    const { shards } = await ggufAllShards(meta.files[0]!.path, { allowLocalFile: true });
    expect(shards.map((s) => s.tensorInfos.length)).toEqual([0, 4, 2]);
    for (const f of meta.files) expect((await stat(f.path)).size).toBe(f.fileSize);
  });

  it("honours general.alignment", async () => {
    const dir = await tempDir("deepcast-gguf-");
    const path = join(dir, "a64.gguf");
    const layout = planGgufLayout(path, [...KVS, kv.u32("general.alignment", 64)], TENSORS);
    await writeAll(layout);
    const parsed = await gguf(path, { allowLocalFile: true });
    expect(Number(parsed.tensorDataOffset) % 64).toBe(0);
    for (const t of parsed.tensorInfos) expect(Number(t.offset) % 64).toBe(0);
    expect((await stat(path)).size).toBe(layout.totalBytes);
    expect(() => planGgufLayout(path, [kv.u32("general.alignment", 48)], TENSORS)).toThrow(DeepcastError);
  });

  it("rejects bad plans and out-of-order or oversized appends; abort removes temporaries", async () => {
    const dir = await tempDir("deepcast-gguf-");
    const path = join(dir, "bad.gguf");
    expect(() => planGgufLayout(path, [kv.u32("x", 1), kv.u32("x", 2)], [])).toThrow(/duplicate/);
    expect(() => planGgufLayout(path, [], [TENSORS[0]!, TENSORS[0]!])).toThrow(/duplicate/);
    expect(() => planGgufLayout(path, [], [{ name: "x".repeat(64), ne: [4], type: "F32" }])).toThrow(/name/);
    expect(() => planGgufLayout(path, [], [{ name: "q", ne: [100], type: "Q8_0" }])).toThrow(/block size/);
    expect(() => planGgufLayout(path, [kv.u16("split.no", 0)], [])).toThrow(/split/);

    const layout = planGgufLayout(path, KVS, TENSORS, { maxTensors: 3 });
    const w = await GgufWriter.create(layout);
    expect(await readdir(dir)).toEqual([".bad-00001-of-00002.gguf.partial"]);
    await expect(w.append("output.weight", new Uint8Array(4))).rejects.toThrow(/plan expects token_embd.weight/);
    await expect(w.append("token_embd.weight", new Uint8Array(layout.files[0]!.tensors[0]!.nbytes + 1))).rejects.toThrow(/overflow/);
    await w.append("token_embd.weight", new Uint8Array(layout.files[0]!.tensors[0]!.nbytes));
    await expect(w.commit()).rejects.toThrow(/incomplete/);
    await w.abort();
    expect(await readdir(dir)).toEqual([]);
    expect(partialPath("/x/y.gguf")).toBe("/x/.y.gguf.partial");
  });

  it("writes a header-only file", async () => {
    const dir = await tempDir("deepcast-gguf-");
    const path = join(dir, "empty.gguf");
    const layout = planGgufLayout(path, [kv.str("general.architecture", "deepseek2")], []);
    const w = await GgufWriter.create(layout);
    await w.commit();
    const bytes = await readFile(path);
    expect(bytes.length).toBe(layout.totalBytes);
    const parsed = await gguf(path, { allowLocalFile: true });
    expect(parsed.tensorInfos).toEqual([]);
  });
});
