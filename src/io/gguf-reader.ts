/**
 * GGUF reader (v2/v3, little-endian), the counterpart of ./gguf.ts: parses the header, metadata
 * and tensor infos of a file without reading tensor data, finds the other files of a split model
 * (`<prefix>-00001-of-0000N.gguf`, as llama.cpp's gguf-split and convert_hf_to_gguf name them), and
 * reads tensor bytes by position. The header is read through a growing buffer, so a 129k-token
 * vocabulary costs a few MB and the tensor data is never touched until asked for.
 *
 * Checks: magic and byte order, version, counts and string/array lengths against the file size,
 * tensor dims (1..4, non-negative), known ggml types, row lengths that are whole blocks, data
 * offsets aligned and inside the file, no overlapping or duplicate tensors; for split models the
 * split.no / split.count / split.tensors.count keys of every file.
 */
import { open, type FileHandle } from "node:fs/promises";
import { DeepcastError } from "../errors.js";
import { GGML_MAX_NAME, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, KV_ALIGNMENT, KV_SPLIT_COUNT, KV_SPLIT_NO, KV_SPLIT_TENSORS_COUNT, padTo, splitPath } from "./gguf-layout.js";
import { GgufType, type GgufKV, type GgufScalar, type GgufScalarType } from "./gguf-kv.js";
import { ggmlNbytes, ggmlType, type GgmlType } from "../formats/ggml-types.js";
import { readFully } from "./safetensors.js";

/** ggml's GGML_MAX_DIMS. */
const GGML_MAX_DIMS = 4;
const READ_AHEAD = 1 << 20;

export interface GgufTensorInfo {
  name: string;
  /** ggml order: ne[0] is the contiguous (innermost) dimension. */
  ne: number[];
  type: GgmlType;
  /** Offset relative to the data section of its file, as stored. */
  offset: number;
  /** Absolute offset in its file. */
  fileOffset: number;
  /** Data size in bytes (unpadded). */
  nbytes: number;
  /** Index of the file (split) holding it. */
  file: number;
}

export interface GgufFileHeader {
  path: string;
  version: number;
  alignment: number;
  /** In file order. */
  kvs: GgufKV[];
  /** In file order. */
  tensors: GgufTensorInfo[];
  /** Bytes of header + KVs + tensor infos. */
  headerBytes: number;
  /** Absolute offset of the data section. */
  dataStart: number;
  size: number;
}

const VALUE_TYPE_NAME = new Map<number, keyof typeof GgufType>(Object.entries(GgufType).map(([k, v]) => [v, k as keyof typeof GgufType]));
const SCALAR_SIZE: Record<GgufScalarType, number> = {
  UINT8: 1, INT8: 1, UINT16: 2, INT16: 2, UINT32: 4, INT32: 4, FLOAT32: 4, BOOL: 1, STRING: 8, UINT64: 8, INT64: 8, FLOAT64: 8,
};

/** Sequential little-endian reads over a file handle through a buffer that is refilled on demand. */
class Cursor {
  private buf = Buffer.alloc(0);
  /** File position of buf[0]. */
  private base = 0;
  /** Absolute read position. */
  pos = 0;

  constructor(private readonly fh: FileHandle, readonly size: number, readonly path: string) {}

  /** Makes the next `n` bytes available (fails on a truncated file). */
  async need(n: number, what: string): Promise<void> {
    if (this.pos + n <= this.base + this.buf.length) return;
    if (this.pos + n > this.size) {
      throw new DeepcastError(`truncated or corrupt GGUF header: ${what} needs ${n} bytes at offset ${this.pos}, the file has ${this.size}`, { file: this.path });
    }
    const len = Math.min(this.size - this.pos, Math.max(n, READ_AHEAD));
    const next = Buffer.allocUnsafe(len);
    await readFully(this.fh, next, this.pos, this.path);
    this.buf = next;
    this.base = this.pos;
  }

  private at(n: number): number {
    const o = this.pos - this.base;
    this.pos += n;
    return o;
  }

  u8(): number { return this.buf.readUInt8(this.at(1)); }
  i8(): number { return this.buf.readInt8(this.at(1)); }
  u16(): number { return this.buf.readUInt16LE(this.at(2)); }
  i16(): number { return this.buf.readInt16LE(this.at(2)); }
  u32(): number { return this.buf.readUInt32LE(this.at(4)); }
  i32(): number { return this.buf.readInt32LE(this.at(4)); }
  f32(): number { return this.buf.readFloatLE(this.at(4)); }
  f64(): number { return this.buf.readDoubleLE(this.at(8)); }
  u64(): bigint { return this.buf.readBigUInt64LE(this.at(8)); }
  i64(): bigint { return this.buf.readBigInt64LE(this.at(8)); }
  utf8(n: number): string { const o = this.at(n); return this.buf.toString("utf8", o, o + n); }
}

/** A 64-bit value as a number when it is exactly representable, else as a bigint. */
function big(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

async function readString(c: Cursor, what: string): Promise<string> {
  await c.need(8, what);
  const n = c.u64();
  if (n > BigInt(c.size - c.pos)) throw new DeepcastError(`truncated or corrupt GGUF header: ${what} claims ${n} bytes at offset ${c.pos - 8}, past the end of the file`, { file: c.path });
  await c.need(Number(n), what);
  return c.utf8(Number(n));
}

async function readScalar(c: Cursor, type: GgufScalarType, what: string): Promise<GgufScalar> {
  if (type === "STRING") return readString(c, what);
  await c.need(SCALAR_SIZE[type], what);
  switch (type) {
    case "UINT8": return c.u8();
    case "INT8": return c.i8();
    case "UINT16": return c.u16();
    case "INT16": return c.i16();
    case "UINT32": return c.u32();
    case "INT32": return c.i32();
    case "FLOAT32": return c.f32();
    case "FLOAT64": return c.f64();
    case "BOOL": return c.u8() !== 0;
    case "UINT64": return big(c.u64());
    case "INT64": return big(c.i64());
  }
}

async function readValueType(c: Cursor, what: string): Promise<keyof typeof GgufType> {
  await c.need(4, what);
  const id = c.u32();
  const name = VALUE_TYPE_NAME.get(id);
  if (name === undefined) throw new DeepcastError(`corrupt GGUF header: ${what} has unknown value type ${id}`, { file: c.path });
  return name;
}

async function readKv(c: Cursor): Promise<GgufKV> {
  const key = await readString(c, "a metadata key");
  const type = await readValueType(c, `metadata ${key}`);
  if (type !== "ARRAY") return { key, type, value: await readScalar(c, type, `metadata ${key}`) };
  const et = await readValueType(c, `metadata ${key}`);
  if (et === "ARRAY") throw new DeepcastError(`GGUF metadata ${key}: arrays of arrays are not supported`, { file: c.path });
  await c.need(8, `metadata ${key}`);
  const n = c.u64();
  if (n * BigInt(SCALAR_SIZE[et]) > BigInt(c.size - c.pos)) {
    throw new DeepcastError(`truncated or corrupt GGUF header: metadata ${key} claims ${n} elements, past the end of the file`, { file: c.path });
  }
  const count = Number(n);
  const value: GgufScalar[] = new Array(count);
  if (et === "STRING") {
    for (let i = 0; i < count; i++) value[i] = await readString(c, `metadata ${key}[${i}]`);
  } else {
    const size = SCALAR_SIZE[et];
    const batch = Math.max(1, Math.floor(READ_AHEAD / size));
    for (let i = 0; i < count;) {
      const m = Math.min(batch, count - i);
      await c.need(m * size, `metadata ${key}`);
      for (const end = i + m; i < end; i++) value[i] = await readScalar(c, et, `metadata ${key}`);
    }
  }
  return { key, type: "ARRAY", elementType: et, value };
}

/** Parses the header, metadata and tensor infos of one GGUF file (no tensor data is read). */
export async function readGgufHeader(path: string, fileIndex = 0): Promise<GgufFileHeader> {
  let fh: FileHandle;
  try {
    fh = await open(path, "r");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new DeepcastError(code === "ENOENT" ? "GGUF file not found" : `cannot open GGUF file: ${(e as Error).message}`,
      { file: path, code: code === "ENOENT" ? "NOT_FOUND" : "INVALID_INPUT" }, { cause: e });
  }
  try {
    return await parseHeader(fh, path, fileIndex);
  } finally {
    await fh.close();
  }
}

async function parseHeader(fh: FileHandle, path: string, fileIndex: number): Promise<GgufFileHeader> {
  const size = (await fh.stat()).size;
  const c = new Cursor(fh, size, path);
  if (size < 24) throw new DeepcastError(`not a GGUF file: ${size} bytes`, { file: path });
  await c.need(24, "the header");
  const magic = c.u32();
  if (magic !== GGUF_MAGIC) throw new DeepcastError("not a GGUF file (bad magic)", { file: path });
  const version = c.u32();
  if (version === 0x03000000 || version === 0x02000000) throw new DeepcastError("big-endian GGUF files are not supported", { file: path });
  if (version === 1) throw new DeepcastError("GGUF version 1 is not supported (re-convert the model with a current llama.cpp)", { file: path });
  if (version !== 2 && version !== 3) throw new DeepcastError(`unsupported GGUF version ${version}`, { file: path });
  const nTensors = c.u64();
  const nKv = c.u64();
  // A tensor info takes at least 8+1+4+8+4+8 bytes, a KV at least 8+1+4+1.
  if (nTensors * 33n > BigInt(size) || nKv * 14n > BigInt(size)) {
    throw new DeepcastError(`corrupt GGUF header: ${nTensors} tensors and ${nKv} metadata entries cannot fit in ${size} bytes`, { file: path });
  }
  const kvs: GgufKV[] = [];
  const keys = new Set<string>();
  for (let i = 0; i < Number(nKv); i++) {
    const e = await readKv(c);
    if (keys.has(e.key)) throw new DeepcastError(`duplicate GGUF metadata key ${e.key}`, { file: path });
    keys.add(e.key);
    kvs.push(e);
  }
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const a = kvs.find((k) => k.key === KV_ALIGNMENT);
  if (a) {
    if (a.type !== "UINT32" || typeof a.value !== "number" || a.value <= 0 || (a.value & (a.value - 1)) !== 0) {
      throw new DeepcastError(`${KV_ALIGNMENT} must be a UINT32 power of two`, { file: path });
    }
    alignment = a.value;
  }
  const infos: { name: string; ne: number[]; typeId: number; offset: bigint }[] = [];
  for (let i = 0; i < Number(nTensors); i++) {
    const name = await readString(c, "a tensor name");
    const where = { file: path, tensor: name };
    if (Buffer.byteLength(name, "utf8") >= GGML_MAX_NAME) throw new DeepcastError(`tensor name is longer than ${GGML_MAX_NAME - 1} bytes`, where);
    await c.need(4, `tensor ${name}`);
    const nDims = c.u32();
    if (nDims < 1 || nDims > GGML_MAX_DIMS) throw new DeepcastError(`tensor has ${nDims} dims, GGUF allows 1 to ${GGML_MAX_DIMS}`, where);
    await c.need(nDims * 8 + 12, `tensor ${name}`);
    const ne: number[] = [];
    for (let d = 0; d < nDims; d++) {
      const v = c.i64();
      if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) throw new DeepcastError(`tensor dim ${d} is ${v}`, where);
      ne.push(Number(v));
    }
    infos.push({ name, ne, typeId: c.i32(), offset: c.u64() });
  }
  const headerBytes = c.pos;
  const dataStart = padTo(headerBytes, alignment);
  const tensors: GgufTensorInfo[] = [];
  const names = new Set<string>();
  for (const t of infos) {
    const where = { file: path, tensor: t.name };
    if (names.has(t.name)) throw new DeepcastError("duplicate tensor name", { ...where, code: "BAD_HEADER" });
    names.add(t.name);
    let type: GgmlType;
    try {
      type = ggmlType(t.typeId);
    } catch {
      throw new DeepcastError(`unknown ggml type ${t.typeId}`, { ...where, code: "UNSUPPORTED" });
    }
    let nbytes: number;
    try {
      nbytes = ggmlNbytes(type, t.ne, t.name);
    } catch (e) {
      throw new DeepcastError((e as Error).message.replace(/ \(tensor [^)]*\)$/, ""), { ...where, code: "BAD_HEADER" });
    }
    if (t.offset % BigInt(alignment) !== 0n) throw new DeepcastError(`tensor data offset ${t.offset} is not a multiple of the alignment ${alignment}`, { ...where, code: "BAD_HEADER" });
    if (t.offset + BigInt(dataStart) + BigInt(nbytes) > BigInt(size)) {
      throw new DeepcastError(`tensor data (${nbytes} bytes at offset ${t.offset} of the data section) runs past the end of the file (${size} bytes): truncated file?`, { ...where, code: "TRUNCATED" });
    }
    const offset = Number(t.offset);
    tensors.push({ name: t.name, ne: t.ne, type, offset, fileOffset: dataStart + offset, nbytes, file: fileIndex });
  }
  const byOffset = [...tensors].sort((x, y) => x.offset - y.offset);
  for (let i = 1; i < byOffset.length; i++) {
    const p = byOffset[i - 1]!;
    const t = byOffset[i]!;
    if (t.nbytes > 0 && p.offset + p.nbytes > t.offset) throw new DeepcastError(`tensor data overlaps that of ${p.name}`, { file: path, tensor: t.name });
  }
  return { path, version, alignment, kvs, tensors, headerBytes, dataStart, size };
}

/** The parts of a split file name `<prefix>-00002-of-00005.gguf` (index 0-based), or null. */
export function parseSplitPath(path: string): { prefix: string; index: number; count: number } | null {
  const m = /^(.*)-(\d{5})-of-(\d{5})\.gguf$/i.exec(path);
  if (!m) return null;
  const index = Number(m[2]) - 1;
  const count = Number(m[3]);
  if (index < 0 || count < 1 || index >= count) return null;
  return { prefix: m[1]!, index, count };
}

function kvInt(kvs: readonly GgufKV[], key: string, path: string): number | undefined {
  const e = kvs.find((k) => k.key === key);
  if (!e) return undefined;
  if (e.type === "ARRAY" || typeof e.value !== "number" || !Number.isInteger(e.value)) throw new DeepcastError(`${key} must be an integer`, { file: path });
  return e.value;
}

/**
 * What a GGUF model's reader offers: metadata by key, the tensor list, and tensor bytes by range.
 * `GgufReader` reads files; a store may also make the bytes on demand (convert/planned-gguf.ts).
 */
export type GgufTensorStore = Pick<GgufReader, "path" | "value" | "kv" | "tensors" | "tensor" | "read" | "close">;

/**
 * A GGUF model: one file, or every file of a split model (give any of them, or the first). Metadata
 * comes from the first file; tensors from all of them, each read by position.
 */
export class GgufReader {
  private readonly handles: (Promise<FileHandle> | undefined)[];
  private readonly byName: Map<string, GgufTensorInfo>;
  private readonly kvByKey: Map<string, GgufKV>;

  private constructor(readonly files: GgufFileHeader[]) {
    this.handles = files.map(() => undefined);
    this.byName = new Map(files.flatMap((f) => f.tensors.map((t) => [t.name, t] as const)));
    this.kvByKey = new Map(files[0]!.kvs.map((k) => [k.key, k]));
  }

  static async open(path: string): Promise<GgufReader> {
    const parts = parseSplitPath(path);
    const first = parts ? splitPath(parts.prefix, 0, parts.count) : path;
    const head = await readGgufHeader(first, 0);
    const count = kvInt(head.kvs, KV_SPLIT_COUNT, first) ?? 1;
    if (!parts) {
      if (count > 1) throw new DeepcastError(`this GGUF is split into ${count} files, but its name does not follow <name>-00001-of-${String(count).padStart(5, "0")}.gguf, so the others cannot be found`, { file: path });
      return new GgufReader([head]);
    }
    if (count !== parts.count) throw new DeepcastError(`${KV_SPLIT_COUNT} is ${count}, the file name says ${parts.count} files`, { file: first });
    const files = [head];
    for (let i = 1; i < count; i++) {
      const part = splitPath(parts.prefix, i, count);
      files.push(await readGgufHeader(part, i).catch((e: unknown) => {
        if (e instanceof DeepcastError && e.code === "NOT_FOUND") {
          throw new DeepcastError(`GGUF file not found: part ${i + 1} of the ${count} files of this split model is missing`, { file: part, code: "NOT_FOUND" }, { cause: e });
        }
        throw e;
      }));
    }
    for (const [i, f] of files.entries()) {
      const no = kvInt(f.kvs, KV_SPLIT_NO, f.path);
      const n = kvInt(f.kvs, KV_SPLIT_COUNT, f.path);
      if ((no ?? 0) !== i || (n ?? 1) !== count) {
        throw new DeepcastError(`split file ${i + 1} of ${count} says it is ${KV_SPLIT_NO}=${no}, ${KV_SPLIT_COUNT}=${n}: files of different models mixed?`, { file: f.path });
      }
    }
    const total = files.reduce((s, f) => s + f.tensors.length, 0);
    const want = kvInt(head.kvs, KV_SPLIT_TENSORS_COUNT, first);
    if (want !== undefined && want !== total) throw new DeepcastError(`${KV_SPLIT_TENSORS_COUNT} is ${want}, the ${count} files hold ${total} tensors`, { file: first });
    const seen = new Map<string, string>();
    for (const f of files) {
      for (const t of f.tensors) {
        const other = seen.get(t.name);
        if (other) throw new DeepcastError(`tensor appears in both ${other} and ${f.path}`, { file: f.path, tensor: t.name });
        seen.set(t.name, f.path);
      }
    }
    return new GgufReader(files);
  }

  /** The first file's path (the model's name for messages). */
  get path(): string {
    return this.files[0]!.path;
  }

  /** Metadata of the first file, in order (split.* keys included). */
  get kvs(): readonly GgufKV[] {
    return this.files[0]!.kvs;
  }

  kv(key: string): GgufKV | undefined {
    return this.kvByKey.get(key);
  }

  /** A scalar metadata value, or undefined when the key is absent. */
  value(key: string): GgufScalar | undefined {
    const e = this.kvByKey.get(key);
    if (!e) return undefined;
    if (e.type === "ARRAY") throw new DeepcastError(`GGUF metadata ${key} is an array, expected a single value`, { file: this.path });
    return e.value;
  }

  /** Every tensor of the model, file by file in file order. */
  get tensors(): GgufTensorInfo[] {
    return this.files.flatMap((f) => f.tensors);
  }

  tensor(name: string): GgufTensorInfo | undefined {
    return this.byName.get(name);
  }

  /** Reads `dst.length` bytes of tensor `t`'s data, starting `offset` bytes into it. */
  async read(t: GgufTensorInfo, offset: number, dst: Uint8Array): Promise<void> {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + dst.length > t.nbytes) {
      throw new DeepcastError(`read of ${dst.length} bytes at ${offset} is outside the tensor's ${t.nbytes} bytes`, { file: this.files[t.file]!.path, tensor: t.name });
    }
    const path = this.files[t.file]!.path;
    let h = this.handles[t.file];
    if (!h) {
      h = open(path, "r");
      h.catch(() => undefined);
      this.handles[t.file] = h;
    }
    await readFully(await h, dst, t.fileOffset + offset, path, t.name);
  }

  async close(): Promise<void> {
    const hs = await Promise.allSettled(this.handles.filter((h) => h !== undefined));
    this.handles.fill(undefined);
    for (const h of hs) if (h.status === "fulfilled") await h.value.close();
  }
}
