/**
 * GGUF v3 container: value and tensor-info encoding, ggml type sizes, layout planning (including
 * llama.cpp-compatible split files) without any tensor data, and a streaming writer that appends
 * tensor data chunk by chunk in the planned order, under temporary names renamed on commit.
 *
 * Layout rules follow ggml's gguf.cpp / gguf-py's GGUFWriter (llama.cpp v0.4.0): little-endian,
 * header (magic, version 3, u64 tensor count, u64 KV count), KVs in the given order, tensor infos
 * (name, u32 n_dims, i64 ne[] innermost first, i32 ggml type, u64 offset relative to the data
 * section), zero padding to the alignment, then tensor blobs each zero-padded to the alignment
 * (the last one too). Offsets are consecutive in tensor-info order, as ggml's reader requires.
 */
import { open, rename, rm, stat, type FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { ggmlNbytes, ggmlType, type GgmlType, type GgmlTypeRef } from "../formats/ggml-types.js";
import { writeFully } from "./write.js";
import { DeepcastError } from "../errors.js";

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** ggml's GGML_MAX_NAME: a tensor name must be shorter than this many bytes. */
export const GGML_MAX_NAME = 64;

export const KV_ALIGNMENT = "general.alignment";
export const KV_SPLIT_NO = "split.no";
export const KV_SPLIT_COUNT = "split.count";
export const KV_SPLIT_TENSORS_COUNT = "split.tensors.count";

// ---------------------------------------------------------------------------------------------
// Metadata values
// ---------------------------------------------------------------------------------------------

/** `enum gguf_type`. */
export const GgufType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;

export type GgufValueType = keyof typeof GgufType;
export type GgufScalarType = Exclude<GgufValueType, "ARRAY">;
export type GgufScalar = number | bigint | boolean | string;

export type GgufKV =
  | { key: string; type: GgufScalarType; value: GgufScalar }
  | { key: string; type: "ARRAY"; elementType: GgufScalarType; value: readonly GgufScalar[] };

/** Constructors for KVs with an explicit GGUF value type. */
export const kv = {
  u8: (key: string, value: number): GgufKV => ({ key, type: "UINT8", value }),
  i8: (key: string, value: number): GgufKV => ({ key, type: "INT8", value }),
  u16: (key: string, value: number): GgufKV => ({ key, type: "UINT16", value }),
  i16: (key: string, value: number): GgufKV => ({ key, type: "INT16", value }),
  u32: (key: string, value: number): GgufKV => ({ key, type: "UINT32", value }),
  i32: (key: string, value: number): GgufKV => ({ key, type: "INT32", value }),
  u64: (key: string, value: number | bigint): GgufKV => ({ key, type: "UINT64", value }),
  i64: (key: string, value: number | bigint): GgufKV => ({ key, type: "INT64", value }),
  f32: (key: string, value: number): GgufKV => ({ key, type: "FLOAT32", value }),
  f64: (key: string, value: number): GgufKV => ({ key, type: "FLOAT64", value }),
  bool: (key: string, value: boolean): GgufKV => ({ key, type: "BOOL", value }),
  str: (key: string, value: string): GgufKV => ({ key, type: "STRING", value }),
  arr: (key: string, elementType: GgufScalarType, value: readonly GgufScalar[]): GgufKV => ({ key, type: "ARRAY", elementType, value }),
};

/** Sets `key` the way ggml's `gguf_set_val_*` does: an existing entry is removed, the new one appended. */
export function setKvLast(kvs: GgufKV[], entry: GgufKV): void {
  const i = kvs.findIndex((k) => k.key === entry.key);
  if (i >= 0) kvs.splice(i, 1);
  kvs.push(entry);
}

/** Sets `key` the way gguf-py's `add_key_value` does: an existing entry keeps its position. */
export function setKvInPlace(kvs: GgufKV[], entry: GgufKV): void {
  const i = kvs.findIndex((k) => k.key === entry.key);
  if (i >= 0) kvs[i] = entry;
  else kvs.push(entry);
}

/** Growable little-endian byte sink. */
class ByteSink {
  private buf = Buffer.alloc(4096);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.length + n) cap *= 2;
    const next = Buffer.alloc(cap);
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }

  u8(v: number): void { this.reserve(1); this.buf.writeUInt8(v, this.length); this.length += 1; }
  i8(v: number): void { this.reserve(1); this.buf.writeInt8(v, this.length); this.length += 1; }
  u16(v: number): void { this.reserve(2); this.buf.writeUInt16LE(v, this.length); this.length += 2; }
  i16(v: number): void { this.reserve(2); this.buf.writeInt16LE(v, this.length); this.length += 2; }
  u32(v: number): void { this.reserve(4); this.buf.writeUInt32LE(v, this.length); this.length += 4; }
  i32(v: number): void { this.reserve(4); this.buf.writeInt32LE(v, this.length); this.length += 4; }
  u64(v: number | bigint): void { this.reserve(8); this.buf.writeBigUInt64LE(BigInt(v), this.length); this.length += 8; }
  i64(v: number | bigint): void { this.reserve(8); this.buf.writeBigInt64LE(BigInt(v), this.length); this.length += 8; }
  f32(v: number): void { this.reserve(4); this.buf.writeFloatLE(v, this.length); this.length += 4; }
  f64(v: number): void { this.reserve(8); this.buf.writeDoubleLE(v, this.length); this.length += 8; }
  bytes(b: Uint8Array): void { this.reserve(b.length); this.buf.set(b, this.length); this.length += b.length; }
  str(s: string): void {
    const b = Buffer.from(s, "utf8");
    this.u64(b.length);
    this.bytes(b);
  }
  zeros(n: number): void { this.reserve(n); this.buf.fill(0, this.length, this.length + n); this.length += n; }

  toBuffer(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

function badValue(key: string, type: string, value: unknown): DeepcastError {
  return new DeepcastError(`GGUF metadata ${key}: ${JSON.stringify(typeof value === "bigint" ? String(value) : value)} is not a valid ${type}`);
}

function checkInt(key: string, type: string, v: GgufScalar, lo: number, hi: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) throw badValue(key, type, v);
  return v;
}

function checkBig(key: string, type: string, v: GgufScalar, lo: bigint, hi: bigint): bigint {
  if (typeof v !== "bigint" && !(typeof v === "number" && Number.isSafeInteger(v))) throw badValue(key, type, v);
  const b = BigInt(v);
  if (b < lo || b > hi) throw badValue(key, type, v);
  return b;
}

function writeScalar(sink: ByteSink, key: string, type: GgufScalarType, v: GgufScalar): void {
  switch (type) {
    case "UINT8": sink.u8(checkInt(key, type, v, 0, 0xff)); break;
    case "INT8": sink.i8(checkInt(key, type, v, -0x80, 0x7f)); break;
    case "UINT16": sink.u16(checkInt(key, type, v, 0, 0xffff)); break;
    case "INT16": sink.i16(checkInt(key, type, v, -0x8000, 0x7fff)); break;
    case "UINT32": sink.u32(checkInt(key, type, v, 0, 0xffffffff)); break;
    case "INT32": sink.i32(checkInt(key, type, v, -0x80000000, 0x7fffffff)); break;
    case "UINT64": sink.u64(checkBig(key, type, v, 0n, 0xffffffffffffffffn)); break;
    case "INT64": sink.i64(checkBig(key, type, v, -0x8000000000000000n, 0x7fffffffffffffffn)); break;
    case "FLOAT32":
      if (typeof v !== "number") throw badValue(key, type, v);
      sink.f32(v);
      break;
    case "FLOAT64":
      if (typeof v !== "number") throw badValue(key, type, v);
      sink.f64(v);
      break;
    case "BOOL":
      if (typeof v !== "boolean") throw badValue(key, type, v);
      sink.u8(v ? 1 : 0);
      break;
    case "STRING":
      if (typeof v !== "string") throw badValue(key, type, v);
      sink.str(v);
      break;
    default:
      throw badValue(key, String(type), v);
  }
}

function writeKv(sink: ByteSink, entry: GgufKV): void {
  sink.str(entry.key);
  sink.u32(GgufType[entry.type]);
  writeValuePayload(sink, entry);
}

function writeValuePayload(sink: ByteSink, entry: GgufKV): void {
  if (entry.type === "ARRAY") {
    const et = entry.elementType as GgufValueType;
    if (et === "ARRAY") throw new DeepcastError(`GGUF metadata ${entry.key}: arrays of arrays are not supported`);
    sink.u32(GgufType[entry.elementType]);
    sink.u64(entry.value.length);
    for (const v of entry.value) writeScalar(sink, entry.key, entry.elementType, v);
  } else {
    writeScalar(sink, entry.key, entry.type, entry.value);
  }
}

/** Bytes of one KV pair as stored: key string, u32 value type, value. */
export function encodeKv(entry: GgufKV): Buffer {
  const sink = new ByteSink();
  writeKv(sink, entry);
  return Buffer.from(sink.toBuffer());
}

/**
 * Bytes of a value as stored after its type tag. For an array: the array's element payload after the
 * u64 count (the bytes the golden listings hash), i.e. without element type and count.
 */
export function encodeValueData(entry: GgufKV): Buffer {
  const sink = new ByteSink();
  if (entry.type === "ARRAY") {
    for (const v of entry.value) writeScalar(sink, entry.key, entry.elementType, v);
  } else {
    writeScalar(sink, entry.key, entry.type, entry.value);
  }
  return Buffer.from(sink.toBuffer());
}

export function padTo(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

// ---------------------------------------------------------------------------------------------
// Layout planning
// ---------------------------------------------------------------------------------------------

export interface GgufTensorSpec {
  name: string;
  /** ggml order: ne[0] is the contiguous (innermost) dimension = reversed PyTorch shape. Written as given. */
  ne: readonly number[];
  type: GgmlTypeRef;
}

export interface GgufTensorPlacement {
  name: string;
  ne: number[];
  type: GgmlType;
  /** Unpadded data size. */
  nbytes: number;
  /** Offset relative to the data section of its file (as stored in the tensor info). */
  offset: number;
  /** Absolute offset in its file. */
  fileOffset: number;
  /** Index of the file (split) holding it. */
  file: number;
}

export interface GgufFilePlan {
  path: string;
  /** 0-based split index. */
  index: number;
  kvs: GgufKV[];
  tensors: GgufTensorPlacement[];
  /** Bytes of header + KVs + tensor infos, before padding. */
  headerBytes: number;
  /** Absolute offset of the data section (headerBytes padded to the alignment). */
  dataStart: number;
  /** Data section size, every tensor padded (the last one too). */
  dataBytes: number;
  fileSize: number;
}

export interface GgufLayout {
  alignment: number;
  files: GgufFilePlan[];
  tensorCount: number;
  totalBytes: number;
}

export interface GgufSplitOptions {
  /** Start a new file before a tensor that would take this file's tensor data past this many bytes. */
  maxBytes?: number;
  /** At most this many tensors per file. */
  maxTensors?: number;
  /** Put only metadata in the first file (gguf-split --no-tensor-first-split). */
  noTensorFirstSplit?: boolean;
  /**
   * Whose rules to follow. "gguf-split" (default): data sizes counted padded, shard 0 = all KVs then
   * split.no, split.tensors.count, split.count. "gguf-py" (convert_hf_to_gguf --split-max-*): sizes
   * unpadded, split.no, split.count, split.tensors.count. Other shards carry only the three split keys.
   */
  style?: "gguf-split" | "gguf-py";
}

/** Parses a split size like llama.cpp's converter: digits, optionally followed by K, M or G (powers of 1000). */
export function parseSplitSize(s: string): number {
  const m = /^(\d+)([KMG]?)$/.exec(s.trim());
  if (!m) throw new DeepcastError(`invalid split size ${JSON.stringify(s)}: must be a number, optionally followed by K, M or G (e.g. 50G, 500M)`);
  const n = Number(m[1]) * ({ "": 1, K: 1e3, M: 1e6, G: 1e9 } as const)[m[2] as "" | "K" | "M" | "G"];
  if (!Number.isSafeInteger(n) || n <= 0) throw new DeepcastError(`invalid split size ${JSON.stringify(s)}: must be positive`);
  return n;
}

/** `<prefix>-00001-of-00003.gguf` for split i (0-based) of n; a trailing ".gguf" on `path` is dropped first. */
export function splitPath(path: string, i: number, n: number): string {
  const prefix = path.endsWith(".gguf") ? path.slice(0, -5) : path;
  return `${prefix}-${String(i + 1).padStart(5, "0")}-of-${String(n).padStart(5, "0")}.gguf`;
}

function alignmentOf(kvs: readonly GgufKV[]): number {
  const a = kvs.find((k) => k.key === KV_ALIGNMENT);
  if (!a) return GGUF_DEFAULT_ALIGNMENT;
  if (a.type !== "UINT32" || typeof a.value !== "number" || a.value <= 0 || (a.value & (a.value - 1)) !== 0) {
    throw new DeepcastError(`${KV_ALIGNMENT} must be a UINT32 power of two`);
  }
  return a.value;
}

function encodeHeader(kvs: readonly GgufKV[], tensors: readonly GgufTensorPlacement[]): Buffer {
  const sink = new ByteSink();
  sink.u32(GGUF_MAGIC);
  sink.u32(GGUF_VERSION);
  sink.u64(tensors.length);
  sink.u64(kvs.length);
  for (const e of kvs) writeKv(sink, e);
  for (const t of tensors) {
    sink.str(t.name);
    sink.u32(t.ne.length);
    for (const d of t.ne) sink.i64(d);
    sink.i32(t.type.id);
    sink.u64(t.offset);
  }
  return Buffer.from(sink.toBuffer());
}

function checkKvs(kvs: readonly GgufKV[]): void {
  const seen = new Set<string>();
  for (const e of kvs) {
    if (seen.has(e.key)) throw new DeepcastError(`duplicate GGUF metadata key ${e.key}`);
    seen.add(e.key);
  }
}

/**
 * Computes the exact layout of the output file(s) — names, KVs per file, tensor offsets, header and
 * file sizes — without any tensor data (for --dry-run, and as the writer's plan).
 * Split keys are added only when the result has more than one file.
 */
export function planGgufLayout(
  path: string,
  kvs: readonly GgufKV[],
  tensors: readonly GgufTensorSpec[],
  split: GgufSplitOptions = {},
): GgufLayout {
  checkKvs(kvs);
  for (const k of [KV_SPLIT_NO, KV_SPLIT_COUNT, KV_SPLIT_TENSORS_COUNT]) {
    if (kvs.some((e) => e.key === k)) throw new DeepcastError(`metadata must not contain ${k}: split keys are added by the layout planner`);
  }
  const alignment = alignmentOf(kvs);
  const style = split.style ?? "gguf-split";
  if (split.maxTensors !== undefined && (!Number.isSafeInteger(split.maxTensors) || split.maxTensors < 1)) {
    throw new DeepcastError(`max tensors per split must be a positive integer, got ${split.maxTensors}`);
  }
  if (split.maxBytes !== undefined && (!Number.isSafeInteger(split.maxBytes) || split.maxBytes < 1)) {
    throw new DeepcastError(`max split size must be a positive integer, got ${split.maxBytes}`);
  }

  const names = new Set<string>();
  const groups: GgufTensorPlacement[][] = [[]];
  if (split.noTensorFirstSplit && tensors.length > 0) groups.push([]);
  let groupBytes = 0;
  for (const spec of tensors) {
    const nameBytes = Buffer.byteLength(spec.name, "utf8");
    if (nameBytes >= GGML_MAX_NAME) throw new DeepcastError(`tensor name is ${nameBytes} bytes, GGUF allows at most ${GGML_MAX_NAME - 1}`, { tensor: spec.name });
    if (names.has(spec.name)) throw new DeepcastError("duplicate tensor name", { tensor: spec.name });
    names.add(spec.name);
    if (spec.ne.length < 1 || spec.ne.length > 4 || !spec.ne.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new DeepcastError(`invalid tensor dims ${JSON.stringify(spec.ne)}: 1 to 4 non-negative integers`, { tensor: spec.name });
    }
    const type = ggmlType(spec.type);
    const nbytes = ggmlNbytes(type, spec.ne, spec.name);
    const counted = style === "gguf-py" ? nbytes : padTo(nbytes, alignment);
    let cur = groups[groups.length - 1]!;
    if (cur.length > 0 &&
        ((split.maxTensors !== undefined && cur.length >= split.maxTensors) ||
         (split.maxBytes !== undefined && groupBytes + counted > split.maxBytes))) {
      cur = [];
      groups.push(cur);
      groupBytes = 0;
    }
    cur.push({ name: spec.name, ne: [...spec.ne], type, nbytes, offset: 0, fileOffset: 0, file: groups.length - 1 });
    groupBytes += counted;
  }

  const n = groups.length;
  const files: GgufFilePlan[] = groups.map((group, index) => {
    let fileKvs: GgufKV[] = index === 0 ? [...kvs] : [];
    if (n > 1) {
      const no = kv.u16(KV_SPLIT_NO, index);
      const count = kv.u16(KV_SPLIT_COUNT, n);
      const total = kv.i32(KV_SPLIT_TENSORS_COUNT, tensors.length);
      fileKvs = fileKvs.concat(style === "gguf-py" ? [no, count, total] : [no, total, count]);
    }
    let offset = 0;
    for (const t of group) {
      t.offset = offset;
      offset += padTo(t.nbytes, alignment);
    }
    const headerBytes = encodeHeader(fileKvs, group).length;
    const dataStart = padTo(headerBytes, alignment);
    for (const t of group) t.fileOffset = dataStart + t.offset;
    return {
      path: n > 1 ? splitPath(path, index, n) : path,
      index,
      kvs: fileKvs,
      tensors: group,
      headerBytes,
      dataStart,
      dataBytes: offset,
      fileSize: dataStart + offset,
    };
  });
  return { alignment, files, tensorCount: tensors.length, totalBytes: files.reduce((s, f) => s + f.fileSize, 0) };
}

/** The bytes a planned file starts with: header, KVs, tensor infos and the padding up to the data section. */
export function encodeFileHeader(file: GgufFilePlan): Buffer {
  const header = encodeHeader(file.kvs, file.tensors);
  if (header.length !== file.headerBytes) throw new DeepcastError("internal: GGUF header size changed since planning", { file: file.path });
  const out = Buffer.alloc(file.dataStart);
  header.copy(out, 0);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Streaming writer
// ---------------------------------------------------------------------------------------------

/** Temporary name a file is written under before it is renamed into place. */
export function partialPath(path: string): string {
  return join(dirname(path), `.${basename(path)}.partial`);
}

const WRITE_BUFFER_BYTES = 8 * 1024 * 1024;

/**
 * Writes a planned layout: files in order, tensors in order, each tensor appended in one or more
 * chunks (e.g. one expert at a time). Only one file is open at a time; each file is written to
 * `.<name>.partial`, synced, and renamed to its final name as soon as it is complete, so an
 * interrupted multi-file run keeps its finished files (`skipFiles` resumes after them).
 */
/** A point in a layout: file index and tensor index within that file. */
export interface GgufPosition {
  file: number;
  tensor: number;
}

export class GgufWriter {
  private fileIndex = -1;
  private tensorIndex = 0;
  private fh: FileHandle | null = null;
  private pos = 0;
  private tensorEnd = 0;
  private readonly buf = Buffer.alloc(WRITE_BUFFER_BYTES);
  private bufLen = 0;
  private bufPos = 0;
  private closed = false;
  /** The current file's temporary holds a synced prefix a rerun can continue from. */
  private resumable = false;

  private constructor(
    readonly layout: GgufLayout,
    private readonly skip: ReadonlySet<number>,
    private readonly onFileDone: (path: string) => Promise<void>,
  ) {}

  /**
   * Opens the first file to write and writes its header. Files whose index is in `skipFiles` are
   * already complete (a resumed run): they are neither written nor expected. `onFileDone` runs after
   * each file is renamed into place. `resumeAt` continues a file whose temporary holds a synced
   * prefix (see `checkpoint()`): when that file's header and size check out, writing goes on at that
   * tensor; otherwise the file starts over. `resumed` tells which happened.
   */
  static async create(
    layout: GgufLayout,
    opts: { skipFiles?: ReadonlySet<number>; onFileDone?: (path: string) => Promise<void>; resumeAt?: GgufPosition } = {},
  ): Promise<GgufWriter> {
    const w = new GgufWriter(layout, opts.skipFiles ?? new Set(), opts.onFileDone ?? (async () => undefined));
    try {
      if (!(opts.resumeAt && (await w.reopen(opts.resumeAt)))) await w.openNextFileWithWork();
    } catch (e) {
      await w.abort();
      throw e;
    }
    return w;
  }

  /** Where the writer stands: the file being written and its next tensor. */
  get position(): GgufPosition {
    return { file: this.fileIndex, tensor: this.tensorIndex };
  }

  /**
   * Flushes and syncs what was written so far and returns the position to resume from: every byte
   * before that tensor's offset is on disk.
   */
  async checkpoint(): Promise<GgufPosition> {
    await this.flush();
    await this.fh?.sync();
    this.resumable = true;
    return this.position;
  }

  /** Reopens the temporary of file `at.file` and positions at tensor `at.tensor`, if it is intact. */
  private async reopen(at: GgufPosition): Promise<boolean> {
    const file = this.layout.files[at.file];
    const t = file?.tensors[at.tensor];
    if (!file || !t || this.skip.has(at.file)) return false;
    const tmp = partialPath(file.path);
    const fh = await open(tmp, "r+").catch(() => null);
    if (!fh) return false;
    const header = encodeFileHeader(file);
    const onDisk = Buffer.alloc(header.length);
    const size = (await fh.stat()).size;
    const { bytesRead } = size >= t.fileOffset ? await fh.read(onDisk, 0, header.length, 0) : { bytesRead: 0 };
    if (bytesRead !== header.length || !onDisk.equals(header)) {
      await fh.close();
      return false;
    }
    await fh.truncate(t.fileOffset);
    this.fh = fh;
    this.fileIndex = at.file;
    this.tensorIndex = at.tensor;
    this.bufLen = 0;
    this.resumable = true;
    this.startTensor();
    return true;
  }

  /** Final paths of all files. */
  get paths(): string[] {
    return this.layout.files.map((f) => f.path);
  }

  /** The tensor whose bytes come next, or undefined when all were written. */
  get current(): GgufTensorPlacement | undefined {
    return this.layout.files[this.fileIndex]?.tensors[this.tensorIndex];
  }

  /** Appends bytes of the current tensor; when it is complete its padding is written and the next tensor (or file) begins. */
  async append(name: string, data: Uint8Array): Promise<void> {
    const file = this.layout.files[this.fileIndex];
    const t = this.current;
    if (!file || !t || t.name !== name) {
      throw new DeepcastError(`internal: wrote ${name} but the plan expects ${t?.name ?? "no more tensors"}`, { file: file?.path, tensor: name });
    }
    if (this.pos + data.length > this.tensorEnd) {
      throw new DeepcastError(`internal: ${data.length} bytes overflow the tensor's ${t.nbytes} bytes`, { file: file.path, tensor: name });
    }
    await this.put(data);
    if (this.pos === this.tensorEnd) {
      const pad = padTo(t.nbytes, this.layout.alignment) - t.nbytes;
      if (pad) await this.put(new Uint8Array(pad));
      this.tensorIndex++;
      if (this.tensorIndex < file.tensors.length) {
        this.startTensor();
      } else {
        await this.finishFile();
        await this.openNextFileWithWork();
      }
    }
  }

  /** Checks that every file was completed (each was renamed into place when it was). */
  async commit(): Promise<void> {
    if (this.fh || this.fileIndex < this.layout.files.length) {
      const t = this.current;
      throw new DeepcastError(`internal: output incomplete, ${t ? `tensor ${t.name} and later ones` : "some files"} not written`, { file: this.layout.files[this.fileIndex]?.path, tensor: t?.name });
    }
    this.closed = true;
  }

  /**
   * Closes the file being written after an error and deletes its temporary, unless it holds a
   * checkpointed prefix a rerun can continue from. Safe to call more than once.
   */
  async abort(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh?.close().catch(() => undefined);
    this.fh = null;
    const file = this.layout.files[this.fileIndex];
    if (file && !this.resumable) await rm(partialPath(file.path), { force: true });
  }

  private startTensor(): void {
    const t = this.current!;
    this.pos = t.fileOffset;
    this.tensorEnd = t.fileOffset + t.nbytes;
  }

  /** Opens files in turn, completing those without tensors, until one has tensors or none are left. */
  private async openNextFileWithWork(): Promise<void> {
    for (;;) {
      this.fileIndex++;
      const file = this.layout.files[this.fileIndex];
      if (!file) return;
      if (this.skip.has(this.fileIndex)) continue;
      this.resumable = false;
      const tmp = partialPath(file.path);
      try {
        this.fh = await open(tmp, "w");
      } catch (e) {
        throw new DeepcastError(`cannot create output: ${(e as Error).message}`, { file: tmp }, { cause: e });
      }
      this.bufLen = 0;
      this.bufPos = 0;
      this.pos = 0;
      this.tensorIndex = 0;
      await this.put(encodeFileHeader(file));
      if (file.tensors.length > 0) {
        this.startTensor();
        return;
      }
      await this.finishFile();
    }
  }

  private async finishFile(): Promise<void> {
    const file = this.layout.files[this.fileIndex]!;
    await this.flush();
    const fh = this.fh!;
    try {
      await fh.sync();
    } finally {
      await fh.close();
      this.fh = null;
    }
    const tmp = partialPath(file.path);
    const size = (await stat(tmp)).size;
    if (size !== file.fileSize) throw new DeepcastError(`output has ${size} bytes, expected ${file.fileSize}`, { file: tmp });
    await rename(tmp, file.path);
    await this.onFileDone(file.path);
  }

  /** Buffered sequential write at the current position. */
  private async put(data: Uint8Array): Promise<void> {
    if (this.bufLen + data.length > this.buf.length) await this.flush();
    if (data.length >= this.buf.length) {
      await this.rawWrite(data, this.pos);
    } else {
      if (this.bufLen === 0) this.bufPos = this.pos;
      this.buf.set(data, this.bufLen);
      this.bufLen += data.length;
    }
    this.pos += data.length;
  }

  private async flush(): Promise<void> {
    if (this.bufLen === 0) return;
    const n = this.bufLen;
    this.bufLen = 0;
    await this.rawWrite(this.buf.subarray(0, n), this.bufPos);
  }

  private async rawWrite(data: Uint8Array, position: number): Promise<void> {
    const file = this.layout.files[this.fileIndex]!;
    await writeFully(this.fh!, data, position, { file: partialPath(file.path), tensor: this.current?.name });
  }
}
