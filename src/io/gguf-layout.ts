/**
 * GGUF v3 file layout, planned without any tensor data (for --dry-run, and as the writer's plan),
 * including llama.cpp-compatible split files.
 *
 * Layout rules follow ggml's gguf.cpp / gguf-py's GGUFWriter (llama.cpp v0.4.0): little-endian,
 * header (magic, version 3, u64 tensor count, u64 KV count), KVs in the given order, tensor infos
 * (name, u32 n_dims, i64 ne[] innermost first, i32 ggml type, u64 offset relative to the data
 * section), zero padding to the alignment, then tensor blobs each zero-padded to the alignment
 * (the last one too). Offsets are consecutive in tensor-info order, as ggml's reader requires.
 */
import { DeepcastError } from "../errors.js";
import { Keys } from "../formats/gguf-keys.js";
import { ggmlNbytes, ggmlType, type GgmlType, type GgmlTypeRef } from "../formats/ggml-types.js";
import { ByteSink, kv, writeKv, type GgufKV } from "./gguf-kv.js";

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** ggml's GGML_MAX_NAME: a tensor name must be shorter than this many bytes. */
export const GGML_MAX_NAME = 64;

export const KV_ALIGNMENT = Keys.General.ALIGNMENT;
export const KV_SPLIT_NO = Keys.Split.LLM_KV_SPLIT_NO;
export const KV_SPLIT_COUNT = Keys.Split.LLM_KV_SPLIT_COUNT;
export const KV_SPLIT_TENSORS_COUNT = Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT;

export function padTo(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

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
  /**
   * The file of each tensor, by index (llama-quantize --keep-split: the input part it came from), instead
   * of maxBytes/maxTensors; indices must not decrease. Split keys as "gguf-py" places them.
   */
  fileOf?: readonly number[];
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
  for (const [tensorIndex, spec] of tensors.entries()) {
    const nameBytes = Buffer.byteLength(spec.name, "utf8");
    if (nameBytes >= GGML_MAX_NAME) throw new DeepcastError(`tensor name is ${nameBytes} bytes, GGUF allows at most ${GGML_MAX_NAME - 1}`, { tensor: spec.name });
    if (names.has(spec.name)) throw new DeepcastError("duplicate tensor name", { tensor: spec.name });
    names.add(spec.name);
    if (spec.ne.length < 1 || spec.ne.length > 4 || !spec.ne.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new DeepcastError(`invalid tensor dims ${JSON.stringify(spec.ne)}: 1 to 4 non-negative integers`, { tensor: spec.name });
    }
    const type = ggmlType(spec.type);
    let nbytes: number;
    try {
      nbytes = ggmlNbytes(type, spec.ne, spec.name);
    } catch (e) {
      // Name the file it would go to: the GGUF being planned.
      throw new DeepcastError((e as Error).message.replace(/ \(tensor [^)]*\)$/, ""), { file: path, tensor: spec.name, code: "UNSUPPORTED" });
    }
    const counted = style === "gguf-py" ? nbytes : padTo(nbytes, alignment);
    if (split.fileOf) {
      const f = split.fileOf[tensorIndex];
      if (f === undefined || !Number.isSafeInteger(f) || f < groups.length - 1) throw new DeepcastError(`internal: file index ${f} for a tensor after file ${groups.length - 1}`, { tensor: spec.name });
      while (groups.length <= f) groups.push([]);
      groups[f]!.push({ name: spec.name, ne: [...spec.ne], type, nbytes, offset: 0, fileOffset: 0, file: f });
      continue;
    }
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
