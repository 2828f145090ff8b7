/**
 * safetensors reader and writer that never hold a whole file: the header is validated against the
 * file size, tensors are read by position into caller-owned buffers, and files are written under a
 * temporary name and renamed into place only when complete.
 */
import { open, rename, rm, stat, type FileHandle } from "node:fs/promises";
import { DeepcastError } from "../errors.js";
import { isDtype, tensorBytes, type Dtype } from "./dtypes.js";
import { guardWrite, partialPath, writeFully } from "./write.js";

/** Largest JSON header we accept; the real 4.3 GB DeepSeek shards have headers of about 100 KB. */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface TensorEntry {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Byte range inside the data section (after the 8-byte length and the header). */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** Length of the JSON header in bytes (without the 8-byte prefix). */
  headerLength: number;
  /** Absolute file offset where the data section starts. */
  dataStart: number;
  metadata: Record<string, string> | null;
  /** Tensors in data order. */
  tensors: TensorEntry[];
  byName: Map<string, TensorEntry>;
}

/** Reads the u64 header length from the first 8 bytes and checks it against the file size and the cap. */
export function parseHeaderLength(prefix: Uint8Array, fileSize: number, file: string): number {
  if (fileSize < 8 || prefix.length < 8) {
    throw new DeepcastError(`not a safetensors file: ${fileSize} bytes, too short for the 8-byte header length`, { file, code: "TRUNCATED" });
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw new DeepcastError(`safetensors header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte cap: corrupt or not a safetensors file`, { file, code: "BAD_HEADER" });
  }
  if (Number(n) + 8 > fileSize) {
    throw new DeepcastError(`truncated safetensors file: header of ${n} bytes does not fit in ${fileSize} bytes`, { file, code: "TRUNCATED" });
  }
  return Number(n);
}

const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * Parses and validates the JSON header as strictly as the safetensors Rust crate: strict UTF-8,
 * tensor data contiguous from offset 0 with no gaps or overlaps, and no bytes after the last tensor.
 * `fileSize` is the size of the whole file.
 */
export function parseHeader(json: Uint8Array, fileSize: number, file: string): SafetensorsHeader {
  const headerLength = json.length;
  const bad = (why: string, tensor?: string) => new DeepcastError(`malformed safetensors header: ${why}`, { file, tensor, code: "BAD_HEADER" });
  let text: string;
  try {
    text = STRICT_UTF8.decode(json);
  } catch {
    throw bad("the header is not valid UTF-8");
  }
  let metadata: Record<string, string> | null = null;
  const tensors: TensorEntry[] = [];
  const seen = new Set<string>();
  // Member by member: a header of a million entries never becomes one million-key object.
  for (const member of topLevelMembers(text, bad)) {
    let one: Record<string, unknown>;
    try {
      one = JSON.parse(`{${member}}`) as Record<string, unknown>;
    } catch (e) {
      throw bad((e as Error).message);
    }
    const keys = Object.keys(one);
    if (keys.length !== 1) throw bad("malformed member");
    const name = keys[0]!;
    if (seen.has(name)) throw bad(`duplicate entry ${JSON.stringify(name)}`, name);
    seen.add(name);
    const value = one[name];
    if (name === "__metadata__") {
      if (value === null || typeof value !== "object" || Array.isArray(value) ||
          !Object.values(value).every((v) => typeof v === "string")) {
        throw bad("__metadata__ must map strings to strings");
      }
      metadata = value as Record<string, string>;
      continue;
    }
    tensors.push(parseEntry(name, value, file));
  }
  text = "";
  const dataStart = 8 + headerLength;
  const dataSize = fileSize - dataStart;
  tensors.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let prevEnd = 0;
  let prevName = "";
  for (const t of tensors) {
    if (t.begin < prevEnd) throw bad(`data of ${t.name} overlaps ${prevName}`, t.name);
    if (t.begin > prevEnd) {
      throw bad(`data of ${t.name} starts at ${t.begin}, leaving a gap after ${prevName ? `${prevName} (ends at ${prevEnd})` : "the header"}: tensor data must be contiguous from offset 0`, t.name);
    }
    prevEnd = t.end;
    prevName = t.name;
  }
  if (prevEnd > dataSize) {
    const last = tensors[tensors.length - 1]!;
    throw new DeepcastError(
      `truncated safetensors file: data section needs ${prevEnd} bytes after the header, the file has ${Math.max(dataSize, 0)}`,
      { file, tensor: last.name, code: "TRUNCATED" },
    );
  }
  if (prevEnd < dataSize) {
    throw bad(`${dataSize - prevEnd} trailing bytes after the last tensor's data (the tensors end at ${prevEnd} of ${dataSize} data bytes)`);
  }
  return { headerLength, dataStart, metadata, tensors, byName: new Map(tensors.map((t) => [t.name, t])) };
}

/**
 * The members (`"key": value`) of the JSON object `text`, as slices, found by tracking strings and
 * nesting depth. Anything but one top-level object is malformed (each member is parsed by JSON.parse).
 */
function* topLevelMembers(text: string, bad: (why: string) => DeepcastError): Generator<string> {
  let i = 0;
  const n = text.length;
  const isWs = (c: number) => c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;
  while (i < n && isWs(text.charCodeAt(i))) i++;
  if (text.charCodeAt(i) !== 0x7b) throw bad("not a JSON object");
  i++;
  let start = i;
  let depth = 0;
  let inString = false;
  let members = 0;
  for (; i < n; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inString = false;
      continue;
    }
    if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) depth++;
    else if (c === 0x7d || c === 0x5d) {
      if (depth === 0) {
        if (c !== 0x7d) throw bad("unbalanced brackets");
        const last = text.slice(start, i);
        if (last.trim() !== "") yield last;
        else if (members > 0) throw bad("trailing comma");
        i++;
        while (i < n && isWs(text.charCodeAt(i))) i++;
        if (i !== n) throw bad("bytes after the JSON object");
        return;
      }
      depth--;
    } else if (c === 0x2c && depth === 0) {
      yield text.slice(start, i);
      members++;
      start = i + 1;
    }
  }
  throw bad("unterminated JSON object");
}

function parseEntry(name: string, value: unknown, file: string): TensorEntry {
  const bad = (why: string) => new DeepcastError(`malformed safetensors header: ${why}`, { file, tensor: name, code: "BAD_HEADER" });
  if (value === null || typeof value !== "object") throw bad("entry is not an object");
  const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
  if (!isDtype(dtype)) throw bad(`unknown dtype ${JSON.stringify(dtype)}`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw bad(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw bad(`data_offsets ${JSON.stringify(offsets)} is not a pair of non-negative integers`);
  }
  const [begin, end] = offsets as [number, number];
  const expected = tensorBytes(dtype, shape as number[]);
  if (Number.isNaN(expected)) throw bad(`${dtype}${JSON.stringify(shape)} is not a whole number of bytes`);
  if (end < begin || end - begin !== expected) {
    throw bad(`data_offsets [${begin}, ${end}] span ${end - begin} bytes, but ${dtype}${JSON.stringify(shape)} needs ${expected}`);
  }
  return { name, dtype, shape: shape as number[], begin, end };
}

/** Reads the header of a local file. */
export async function readHeader(path: string): Promise<SafetensorsHeader> {
  const fh = await openForRead(path);
  try {
    return await readHeaderFrom(fh, (await fh.stat()).size, path);
  } finally {
    await fh.close();
  }
}

async function readHeaderFrom(fh: FileHandle, size: number, file: string): Promise<SafetensorsHeader> {
  const prefix = Buffer.alloc(8);
  await readFully(fh, prefix, 0, file);
  const n = parseHeaderLength(prefix, size, file);
  const json = Buffer.alloc(n);
  await readFully(fh, json, 8, file);
  return parseHeader(json, size, file);
}

async function openForRead(path: string): Promise<FileHandle> {
  try {
    return await open(path, "r");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new DeepcastError(code === "ENOENT" ? "file not found" : `cannot open: ${(e as Error).message}`, { file: path });
  }
}

/** Reads exactly `buf.length` bytes at `position`, failing with a clear message on a short read. */
export async function readFully(fh: FileHandle, buf: Uint8Array, position: number, file: string, tensor?: string): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) {
      throw new DeepcastError(`truncated file: expected ${buf.length} bytes at offset ${position}, got ${done}`, { file, tensor });
    }
    done += bytesRead;
  }
}

/** An open safetensors file: validated header plus positional reads. */
export class SafetensorsFile {
  private constructor(
    readonly path: string,
    readonly size: number,
    readonly header: SafetensorsHeader,
    private readonly fh: FileHandle,
  ) {}

  static async open(path: string): Promise<SafetensorsFile> {
    const fh = await openForRead(path);
    try {
      const size = (await fh.stat()).size;
      return new SafetensorsFile(path, size, await readHeaderFrom(fh, size, path), fh);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  get tensors(): readonly TensorEntry[] {
    return this.header.tensors;
  }

  entry(name: string): TensorEntry {
    const t = this.header.byName.get(name);
    if (!t) throw new DeepcastError("tensor not found in this file", { file: this.path, tensor: name });
    return t;
  }

  /** Reads `dst.length` bytes of tensor `name`, starting `offset` bytes into its data. */
  async read(name: string, dst: Uint8Array, offset = 0): Promise<void> {
    const t = this.entry(name);
    if (offset + dst.length > t.end - t.begin) {
      throw new DeepcastError(`read of ${dst.length} bytes at ${offset} is past the tensor's ${t.end - t.begin} bytes`, { file: this.path, tensor: name });
    }
    await readFully(this.fh, dst, this.header.dataStart + t.begin + offset, this.path, name);
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

export interface TensorSpec {
  name: string;
  dtype: Dtype;
  shape: number[];
}

/** Serializes a header exactly as the safetensors library does: compact JSON, padded with spaces to 8 bytes. */
export function encodeHeader(tensors: readonly TensorSpec[], metadata: Record<string, string> | null): { bytes: Buffer; offsets: [number, number][] } {
  const obj: Record<string, unknown> = {};
  if (metadata) obj.__metadata__ = metadata;
  const offsets: [number, number][] = [];
  let pos = 0;
  for (const t of tensors) {
    if (t.name === "__metadata__" || Object.hasOwn(obj, t.name)) throw new DeepcastError(`duplicate tensor name in output`, { tensor: t.name });
    const len = tensorBytes(t.dtype, t.shape);
    if (Number.isNaN(len)) throw new DeepcastError(`${t.dtype}${JSON.stringify(t.shape)} is not a whole number of bytes`, { tensor: t.name });
    offsets.push([pos, pos + len]);
    obj[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [pos, pos + len] };
    pos += len;
  }
  let json = Buffer.from(JSON.stringify(obj), "utf8");
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const bytes = Buffer.alloc(8 + json.length);
  bytes.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(bytes, 8);
  return { bytes, offsets };
}

/** Size in bytes of the file `encodeHeader` + data would make. */
export function safetensorsFileSize(tensors: readonly TensorSpec[], metadata: Record<string, string> | null): number {
  const { bytes, offsets } = encodeHeader(tensors, metadata);
  return bytes.length + (offsets.length ? offsets[offsets.length - 1]![1] : 0);
}

/**
 * Streams one safetensors file: the header is written first, then each tensor's bytes in the
 * planned order (possibly in several chunks). `commit()` checks every byte arrived, syncs and renames.
 */
export class SafetensorsWriter {
  private pos: number;
  private index = 0;
  private readonly dataStart: number;
  private readonly ends: number[];

  private constructor(
    readonly path: string,
    readonly tmpPath: string,
    private readonly fh: FileHandle,
    private readonly specs: readonly TensorSpec[],
    header: Buffer,
    offsets: [number, number][],
  ) {
    this.dataStart = header.length;
    this.pos = header.length;
    this.ends = offsets.map(([, e]) => e);
  }

  static async create(path: string, tensors: readonly TensorSpec[], metadata: Record<string, string> | null): Promise<SafetensorsWriter> {
    const { bytes, offsets } = encodeHeader(tensors, metadata);
    const tmp = partialPath(path);
    const fh = await guardWrite("create the output", tmp, () => open(tmp, "w"));
    const w = new SafetensorsWriter(path, tmp, fh, tensors, bytes, offsets);
    await w.writeAt(bytes, 0);
    return w;
  }

  /** Total size of the file when complete. */
  get expectedSize(): number {
    return this.dataStart + (this.ends.length ? this.ends[this.ends.length - 1]! : 0);
  }

  /** The tensor whose bytes come next. */
  get current(): TensorSpec | undefined {
    return this.specs[this.index];
  }

  /** Appends bytes of the current tensor; advances to the next tensor when this one is full. */
  async append(name: string, data: Uint8Array): Promise<void> {
    const spec = this.specs[this.index];
    if (!spec || spec.name !== name) {
      throw new DeepcastError(`internal: wrote ${name} but the plan expects ${spec?.name ?? "no more tensors"}`, { file: this.path, tensor: name });
    }
    const end = this.dataStart + this.ends[this.index]!;
    if (this.pos + data.length > end) {
      throw new DeepcastError(`internal: ${data.length} bytes overflow the tensor`, { file: this.path, tensor: name });
    }
    await this.writeAt(data, this.pos);
    this.pos += data.length;
    if (this.pos === end) this.index++;
  }

  private async writeAt(data: Uint8Array, position: number): Promise<void> {
    await writeFully(this.fh, data, position, { file: this.tmpPath, tensor: this.specs[this.index]?.name });
  }

  /** Checks completeness, flushes to disk and renames the temporary file to its final name. */
  async commit(): Promise<void> {
    if (this.index !== this.specs.length || this.pos !== this.expectedSize) {
      throw new DeepcastError(`internal: output incomplete (${this.pos} of ${this.expectedSize} bytes)`, { file: this.path, tensor: this.current?.name });
    }
    await guardWrite("sync the output", this.tmpPath, () => this.fh.sync());
    await this.fh.close();
    const size = (await stat(this.tmpPath)).size;
    if (size !== this.expectedSize) {
      throw new DeepcastError(`output has ${size} bytes, expected ${this.expectedSize}`, { file: this.tmpPath, code: "WRITE_FAILED" });
    }
    await guardWrite("rename the output into place", this.path, () => rename(this.tmpPath, this.path));
  }

  /** Closes and deletes the temporary file (after an error). */
  async abort(): Promise<void> {
    await this.fh.close().catch(() => undefined);
    await rm(this.tmpPath, { force: true });
  }
}
