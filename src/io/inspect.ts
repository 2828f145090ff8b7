/**
 * What a model file holds, from its headers alone (`deepcast inspect`): a GGUF (single or split), a
 * safetensors checkpoint (folder, Hugging Face repo id, or one .safetensors file), or an importance
 * matrix (GGUF or legacy .dat). Metadata, one row per tensor (name, type, shape, bytes, file) and
 * totals per type. Tensor data are never read, so the 671B checkpoint takes seconds.
 */
import { open, stat } from "node:fs/promises";
import { basename } from "node:path";
import { DeepcastError } from "../errors.js";
import { loadCheckpoint } from "./checkpoint.js";
import { numel } from "./dtypes.js";
import { GgufReader } from "./gguf-reader.js";
import { type GgufKV, type GgufScalar } from "./gguf-kv.js";
import { GGUF_MAGIC } from "./gguf-layout.js";
import { readImatrix } from "./imatrix.js";
import { openSource } from "./open-source.js";
import { readHeader } from "./safetensors.js";

export type InspectFormat = "gguf" | "safetensors" | "imatrix";

export interface InspectTensor {
  name: string;
  /** ggml type name (GGUF) or safetensors dtype. */
  type: string;
  /** GGUF: ggml order (ne[0] first, the contiguous dimension); safetensors: row-major (PyTorch) order. */
  shape: number[];
  bytes: number;
  /** The file (shard, split) holding it. */
  file: string;
}

export interface InspectTypeTotal {
  tensors: number;
  bytes: number;
  /** Elements. */
  params: number;
}

export interface InspectReport {
  format: InspectFormat;
  /** "GGUF v3", "safetensors", "imatrix GGUF v3", "imatrix (legacy .dat)". */
  container: string;
  path: string;
  shapeOrder: "ggml" | "row-major";
  files: { file: string; bytes: number; tensors: number }[];
  metadata: Record<string, unknown>;
  tensors: InspectTensor[];
  types: Record<string, InspectTypeTotal>;
  tensorCount: number;
  /** Tensor data bytes. */
  totalBytes: number;
  totalParams: number;
}

/** Arrays longer than this are summarised in metadata (element type, length, first values). */
const ARRAY_HEAD = 8;

function jsonScalar(v: GgufScalar): string | number | boolean {
  return typeof v === "bigint" ? v.toString() : v;
}

/** A GGUF KV as JSON: scalars as they are (64-bit beyond 2^53 as strings), long arrays summarised. */
/** The shortest decimal that reads back as the same float32 (0.95, not 0.949999988079071). */
function f32Shortest(x: number): number {
  if (!Number.isFinite(x)) return x;
  for (let p = 1; p <= 9; p++) {
    const y = Number(x.toPrecision(p));
    if (Math.fround(y) === x) return y;
  }
  return x;
}

function ggufValue(e: GgufKV): unknown {
  if (e.type === "FLOAT32" && typeof e.value === "number") return f32Shortest(e.value);
  if (e.type !== "ARRAY") return jsonScalar(e.value);
  if (e.elementType === "FLOAT32") return ggufValue({ ...e, elementType: "FLOAT64", value: e.value.map((v) => (typeof v === "number" ? f32Shortest(v) : v)) });
  if (e.value.length <= ARRAY_HEAD) return e.value.map(jsonScalar);
  return { array: e.elementType, length: e.value.length, head: e.value.slice(0, ARRAY_HEAD).map(jsonScalar) };
}

function totals(tensors: readonly InspectTensor[]): Pick<InspectReport, "types" | "tensorCount" | "totalBytes" | "totalParams"> {
  const types: Record<string, InspectTypeTotal> = {};
  let totalBytes = 0;
  let totalParams = 0;
  for (const t of tensors) {
    const e = (types[t.type] ??= { tensors: 0, bytes: 0, params: 0 });
    const n = numel(t.shape);
    e.tensors++;
    e.bytes += t.bytes;
    e.params += n;
    totalBytes += t.bytes;
    totalParams += n;
  }
  return { types, tensorCount: tensors.length, totalBytes, totalParams };
}

async function startsWithGgufMagic(path: string): Promise<boolean> {
  const fh = await open(path, "r");
  try {
    const b = Buffer.alloc(4);
    const { bytesRead } = await fh.read(b, 0, 4, 0);
    return bytesRead === 4 && b.readUInt32LE(0) === GGUF_MAGIC;
  } finally {
    await fh.close();
  }
}

async function inspectGguf(path: string): Promise<InspectReport> {
  const reader = await GgufReader.open(path);
  try {
    const metadata: Record<string, unknown> = {};
    for (const e of reader.kvs) metadata[e.key] = ggufValue(e);
    const tensors = reader.tensors.map((t) => ({ name: t.name, type: t.type.name, shape: [...t.ne], bytes: t.nbytes, file: basename(reader.files[t.file]!.path) }));
    const isImatrix = reader.value("general.type") === "imatrix";
    const version = reader.files[0]!.version;
    return {
      format: isImatrix ? "imatrix" : "gguf",
      container: `${isImatrix ? "imatrix " : ""}GGUF v${version}`,
      path: reader.path,
      shapeOrder: "ggml",
      files: reader.files.map((f) => ({ file: f.path, bytes: f.size, tensors: f.tensors.length })),
      metadata,
      tensors,
      ...totals(tensors),
    };
  } finally {
    await reader.close();
  }
}

async function inspectImatrixDat(path: string, size: number): Promise<InspectReport> {
  const im = await readImatrix(path);
  const tensors = [...im.entries].map(([name, e]) => ({
    name,
    type: "F32",
    shape: [e.values.length / e.nMat, e.nMat],
    bytes: e.values.length * 4,
    file: basename(path),
  }));
  return {
    format: "imatrix",
    container: "imatrix (legacy .dat)",
    path,
    shapeOrder: "ggml",
    files: [{ file: path, bytes: size, tensors: tensors.length }],
    metadata: { datasets: im.datasets, chunkCount: im.chunkCount, entries: im.entries.size, sha256: im.sha256 },
    tensors,
    ...totals(tensors),
  };
}

async function inspectSafetensorsFile(path: string, size: number): Promise<InspectReport> {
  const h = await readHeader(path);
  const tensors = h.tensors.map((t) => ({ name: t.name, type: t.dtype, shape: [...t.shape], bytes: t.end - t.begin, file: basename(path) }));
  return {
    format: "safetensors",
    container: "safetensors",
    path,
    shapeOrder: "row-major",
    files: [{ file: path, bytes: size, tensors: tensors.length }],
    metadata: { __metadata__: h.metadata },
    tensors,
    ...totals(tensors),
  };
}

async function inspectCheckpoint(spec: string, opts: { revision?: string; fetch?: typeof fetch; cacheDir?: string }): Promise<InspectReport> {
  const source = await openSource(spec, opts);
  const ckpt = await loadCheckpoint(source);
  const sizes = new Map(ckpt.files.map((f) => [f.name, f.size]));
  const tensors: InspectTensor[] = [];
  const shardMeta = new Map<string, string>();
  for (const s of ckpt.shards) {
    const h = ckpt.headers.get(s)!;
    shardMeta.set(s, JSON.stringify(h.metadata));
    for (const t of h.tensors) tensors.push({ name: t.name, type: t.dtype, shape: [...t.shape], bytes: t.end - t.begin, file: s });
  }
  // Index order (the checkpoint's own), then tensors only the shards list.
  const order = new Map([...ckpt.weightMap.keys()].map((n, i) => [n, i]));
  tensors.sort((a, b) => order.get(a.name)! - order.get(b.name)!);
  const distinct = [...new Set(shardMeta.values())];
  const metadata: Record<string, unknown> = {
    config: ckpt.config,
    ...(ckpt.index ? { indexMetadata: ckpt.index.metadata ?? null } : {}),
    shardMetadata: distinct.length === 1 ? JSON.parse(distinct[0]!) : Object.fromEntries([...shardMeta].map(([k, v]) => [k, JSON.parse(v)])),
    otherFiles: ckpt.files.map((f) => f.name).filter((n) => !ckpt.shards.includes(n)),
  };
  return {
    format: "safetensors",
    container: "safetensors",
    path: source.description,
    shapeOrder: "row-major",
    files: ckpt.shards.map((s) => ({ file: s, bytes: sizes.get(s) ?? 0, tensors: ckpt.headers.get(s)!.tensors.length })),
    metadata,
    tensors,
    ...totals(tensors),
  };
}

/**
 * Inspects `spec`: a .gguf file (any file of a split model), an imatrix (.gguf or legacy .dat), a
 * .safetensors file, a checkpoint folder, or a Hugging Face repo id (headers by Range requests).
 */
export async function inspect(spec: string, opts: { revision?: string; fetch?: typeof fetch; cacheDir?: string } = {}): Promise<InspectReport> {
  const s = await stat(spec).catch(() => null);
  if (!s || s.isDirectory()) return inspectCheckpoint(spec, opts);
  if (!s.isFile()) throw new DeepcastError("not a regular file or folder", { file: spec, code: "NOT_A_FILE" });
  if (await startsWithGgufMagic(spec)) return inspectGguf(spec);
  if (/\.safetensors$/i.test(spec)) return inspectSafetensorsFile(spec, s.size);
  if (/\.dat$/i.test(spec)) return inspectImatrixDat(spec, s.size);
  throw new DeepcastError(
    "cannot tell what this file is: expected a GGUF (model or imatrix), a .safetensors file, a legacy imatrix .dat, a checkpoint folder or a Hugging Face repo id",
    { file: spec, code: "UNSUPPORTED" },
  );
}
