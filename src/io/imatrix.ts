/**
 * Importance matrices (llama-imatrix output) for `to-gguf --imatrix`, read the way llama.cpp v0.4.0's
 * llama-quantize reads them (common/imatrix-loader.cpp + tools/quantize/quantize.cpp):
 *
 *  - GGUF (current llama-imatrix default): KVs `imatrix.datasets` (array of strings),
 *    `imatrix.chunk_count`, `imatrix.chunk_size` (u32; all three must be present), and per weight
 *    `<tensor>.in_sum2` (F32, ne0 x n_mat raw sums of squared activations) and `<tensor>.counts`
 *    (F32, n_mat token counts; n_mat = experts for `_exps`, else 1). The weights handed to ggml are
 *    `in_sum2[m*ne0 + i] / (float)lround(counts[m])`, or 1 for a matrix whose count is not positive.
 *  - legacy `.dat`: `i32 n_entries`, per entry `i32 len, name, i32 ncall, i32 nval, f32 values[nval]`,
 *    optional trailer `i32 chunk_count, i32 len, dataset`. Weights = `value / (float)ncall` (ncall > 0).
 *
 * Entries are named by the final GGUF tensor name (`blk.3.ffn_down_exps.weight`). A tensor of ggml
 * dims [ne0, ne1, ne2] takes an entry of exactly ne0 * ne2 weights: matrix (expert / head) m uses
 * weights [m*ne0, (m+1)*ne0) for its ne1 rows.
 */
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { DeepcastError } from "../errors.js";
import { Keys } from "../formats/gguf-keys.js";
import { GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC } from "./gguf-layout.js";
import { GgufType, kv, type GgufKV } from "./gguf-kv.js";

export interface ImatrixEntry {
  /** The weights llama-quantize hands to ggml (sums divided by counts), nMat matrices one after another. */
  values: Float32Array;
  /** Matrices in the entry: the length of `.counts` in a GGUF imatrix (experts, or 1); 1 for legacy .dat. */
  nMat: number;
}

export interface Imatrix {
  /** The path as given; llama-quantize records it (first 127 bytes) as quantize.imatrix.file. */
  file: string;
  format: "gguf" | "dat";
  /** By tensor name. */
  entries: Map<string, ImatrixEntry>;
  /** imatrix.datasets, or the legacy trailer's dataset name. */
  datasets: string[];
  /** imatrix.chunk_count, or the legacy trailer's chunk count; 0 when absent. */
  chunkCount: number;
  /** imatrix.chunk_size (0 for legacy .dat). */
  chunkSize: number;
  /** SHA-256 of the file's bytes. */
  sha256: string;
}

/** Reads a GGUF or legacy .dat imatrix (told apart by the GGUF magic). */
export async function readImatrix(path: string): Promise<Imatrix> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new DeepcastError(`cannot read the importance matrix: ${(e as Error).message}`, { file: path }, { cause: e });
  }
  return parseImatrix(bytes, path);
}

/** Parses imatrix bytes; `file` names the file in errors and in quantize.imatrix.file. */
export function parseImatrix(bytes: Uint8Array, file: string): Imatrix {
  const r = new Reader(bytes, file);
  const im = bytes.length >= 4 && r.view.getUint32(0, true) === GGUF_MAGIC ? parseGguf(r) : parseLegacy(r);
  for (const [name, e] of im.entries) {
    const bad = e.values.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) throw new DeepcastError(`imatrix contains non-finite value ${e.values[bad]} (entry ${name}, index ${bad})`, { file });
  }
  return { file, ...im, sha256: createHash("sha256").update(bytes).digest("hex") };
}

type Parsed = Omit<Imatrix, "file" | "sha256">;

class Reader {
  pos = 0;
  readonly view: DataView;
  constructor(readonly bytes: Uint8Array, readonly file: string) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  get left(): number {
    return this.bytes.length - this.pos;
  }
  need(n: number, what: string): void {
    if (n > this.left) {
      throw new DeepcastError(`imatrix file is truncated: ${what} needs ${n} bytes at offset ${this.pos}, ${this.left} left`, { file: this.file });
    }
  }
  i32(what: string): number {
    this.need(4, what);
    const v = this.view.getInt32(this.pos, true);
    this.pos += 4;
    return v;
  }
  u32(what: string): number {
    this.need(4, what);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  u64(what: string): number {
    this.need(8, what);
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new DeepcastError(`imatrix file is corrupt: ${what} = ${v}`, { file: this.file });
    return Number(v);
  }
  i64(what: string): number {
    this.need(8, what);
    const v = this.view.getBigInt64(this.pos, true);
    this.pos += 8;
    if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) throw new DeepcastError(`imatrix file is corrupt: ${what} = ${v}`, { file: this.file });
    return Number(v);
  }
  raw(n: number, what: string): Uint8Array {
    this.need(n, what);
    const b = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  /** A C string of `n` bytes (cut at the first NUL, as llama.cpp's std::string{char*} does). */
  cstr(n: number, what: string): string {
    const b = this.raw(n, what);
    const nul = b.indexOf(0);
    return Buffer.from(b.buffer, b.byteOffset, nul < 0 ? b.length : nul).toString("utf8");
  }
  f32s(n: number, what: string): Float32Array {
    const b = this.raw(n * 4, what);
    return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  }
}

// ---------------------------------------------------------------------------------------------
// legacy .dat
// ---------------------------------------------------------------------------------------------

function parseLegacy(r: Reader): Parsed {
  const file = r.file;
  if (r.left < 4) throw new DeepcastError("not an imatrix: neither GGUF nor a legacy .dat file (too short)", { file });
  const n = r.i32("entry count");
  if (n < 1) throw new DeepcastError(`not an imatrix: no data (legacy .dat entry count ${n})`, { file });
  const entries = new Map<string, ImatrixEntry>();
  for (let i = 0; i < n; i++) {
    const at = `entry ${i + 1} of ${n}`;
    const len = r.i32(`${at}: name length`);
    if (len < 0 || len > r.left) throw new DeepcastError(`imatrix file is corrupt or truncated: ${at} has name length ${len} at offset ${r.pos - 4}`, { file });
    const name = r.cstr(len, `${at}: name`);
    const ncall = r.i32(`${at} (${name}): ncall`);
    const nval = r.i32(`${at} (${name}): value count`);
    if (nval < 1) throw new DeepcastError(`imatrix file is corrupt: ${at} (${name}) has ${nval} values`, { file });
    const sums = r.f32s(nval, `${at} (${name}): ${nval} values`);
    // quantize.cpp: e[i] = sums[i] / ncall (float / int64_t, i.e. a float division) when ncall > 0
    if (ncall > 0) {
      const d = Math.fround(ncall);
      for (let j = 0; j < sums.length; j++) sums[j] = sums[j]! / d;
    }
    entries.set(name, { values: sums, nMat: 1 });
  }
  let chunkCount = 0;
  const datasets: string[] = [];
  if (r.left > 0) {
    chunkCount = r.i32("trailer: chunk count");
    const len = r.i32("trailer: dataset name length");
    if (len > 0) datasets.push(r.cstr(len, "trailer: dataset name"));
  }
  return { format: "dat", entries, datasets, chunkCount, chunkSize: 0 };
}

// ---------------------------------------------------------------------------------------------
// GGUF
// ---------------------------------------------------------------------------------------------

const SCALAR_SIZE: Partial<Record<number, number>> = {
  [GgufType.UINT8]: 1, [GgufType.INT8]: 1, [GgufType.BOOL]: 1,
  [GgufType.UINT16]: 2, [GgufType.INT16]: 2,
  [GgufType.UINT32]: 4, [GgufType.INT32]: 4, [GgufType.FLOAT32]: 4,
  [GgufType.UINT64]: 8, [GgufType.INT64]: 8, [GgufType.FLOAT64]: 8,
};

interface GgufValue {
  type: number;
  /** UINT32 scalars. */
  u32?: number;
  /** Arrays of strings. */
  strings?: string[];
  arrayType?: number;
}

function readGgufString(r: Reader, what: string): string {
  const b = r.raw(r.u64(`${what} length`), what);
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("utf8");
}

function readGgufValue(r: Reader, type: number, key: string): GgufValue {
  if (type === GgufType.STRING) {
    readGgufString(r, `value of ${key}`);
    return { type };
  }
  if (type === GgufType.ARRAY) {
    const at = r.i32(`array type of ${key}`);
    const n = r.u64(`array length of ${key}`);
    if (at === GgufType.STRING) {
      const strings: string[] = [];
      for (let i = 0; i < n; i++) strings.push(readGgufString(r, `element ${i} of ${key}`));
      return { type, arrayType: at, strings };
    }
    const size = SCALAR_SIZE[at];
    if (size === undefined) throw new DeepcastError(`imatrix GGUF is corrupt: key ${key} is an array of unsupported type ${at}`, { file: r.file });
    r.raw(n * size, `${n} elements of ${key}`);
    return { type, arrayType: at };
  }
  const size = SCALAR_SIZE[type];
  if (size === undefined) throw new DeepcastError(`imatrix GGUF is corrupt: key ${key} has unknown value type ${type}`, { file: r.file });
  const v: GgufValue = { type };
  if (type === GgufType.UINT32) v.u32 = r.view.getUint32(r.pos, true);
  r.raw(size, `value of ${key}`);
  return v;
}

interface TensorInfo {
  name: string;
  ne: number[];
  type: number;
  offset: number;
}

function parseGguf(r: Reader): Parsed {
  const file = r.file;
  r.u32("magic");
  const version = r.u32("version");
  if (version !== 2 && version !== 3) throw new DeepcastError(`imatrix GGUF has unsupported version ${version} (expected 3)`, { file });
  const nTensors = r.u64("tensor count");
  const nKv = r.u64("metadata count");
  const kvs = new Map<string, GgufValue>();
  for (let i = 0; i < nKv; i++) {
    const key = readGgufString(r, `key ${i}`);
    const type = r.i32(`type of ${key}`);
    kvs.set(key, readGgufValue(r, type, key));
  }
  const infos: TensorInfo[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = readGgufString(r, `tensor ${i} name`);
    const nDims = r.u32(`n_dims of ${name}`);
    if (nDims < 1 || nDims > 4) throw new DeepcastError(`imatrix GGUF is corrupt: tensor ${name} has ${nDims} dims`, { file });
    const ne: number[] = [];
    for (let d = 0; d < nDims; d++) ne.push(r.i64(`dim ${d} of ${name}`));
    const type = r.i32(`type of ${name}`);
    const offset = r.u64(`offset of ${name}`);
    infos.push({ name, ne, type, offset });
  }
  const align = kvs.get(Keys.General.ALIGNMENT);
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  if (align) {
    if (align.u32 === undefined || align.u32 === 0 || (align.u32 & (align.u32 - 1)) !== 0) {
      throw new DeepcastError("imatrix GGUF is corrupt: general.alignment must be a UINT32 power of two", { file });
    }
    alignment = align.u32;
  }
  const dataStart = Math.ceil(r.pos / alignment) * alignment;

  // metadata (common_imatrix_load + load_imatrix)
  const datasetsKv = kvs.get(Keys.IMatrix.DATASETS);
  const chunkCountKv = kvs.get(Keys.IMatrix.CHUNK_COUNT);
  const chunkSizeKv = kvs.get(Keys.IMatrix.CHUNK_SIZE);
  if (!datasetsKv || !chunkCountKv || !chunkSizeKv) {
    const missing = [[Keys.IMatrix.DATASETS, datasetsKv], [Keys.IMatrix.CHUNK_COUNT, chunkCountKv], [Keys.IMatrix.CHUNK_SIZE, chunkSizeKv]].filter((x) => !x[1]).map((x) => x[0]);
    throw new DeepcastError(`missing imatrix metadata (${missing.join(", ")}): not an imatrix GGUF?`, { file });
  }
  for (const [key, v] of [[Keys.IMatrix.CHUNK_COUNT, chunkCountKv], [Keys.IMatrix.CHUNK_SIZE, chunkSizeKv]] as const) {
    if (v.u32 === undefined) throw new DeepcastError(`imatrix GGUF: ${key} must be UINT32 (type ${v.type})`, { file });
  }
  if (infos.length < 1) throw new DeepcastError("not an imatrix: no data (the GGUF has no tensors)", { file });

  // pair <name>.in_sum2 with <name>.counts
  const pairs = new Map<string, { sums?: TensorInfo; counts?: TensorInfo }>();
  for (const t of infos) {
    for (const [suffix, field] of [[".in_sum2", "sums"], [".counts", "counts"]] as const) {
      if (t.name.endsWith(suffix) && t.name.length > suffix.length) {
        const base = t.name.slice(0, -suffix.length);
        const p = pairs.get(base) ?? {};
        p[field] = t;
        pairs.set(base, p);
      }
    }
  }
  const data = (t: TensorInfo, n: number): Float32Array => {
    const start = dataStart + t.offset;
    if (start + n * 4 > r.bytes.length) {
      throw new DeepcastError(`imatrix file is truncated: tensor ${t.name} needs bytes ${start}..${start + n * 4}, the file has ${r.bytes.length}`, { file });
    }
    return new Float32Array(r.bytes.buffer.slice(r.bytes.byteOffset + start, r.bytes.byteOffset + start + n * 4));
  };
  const entries = new Map<string, ImatrixEntry>();
  for (const [name, p] of [...pairs].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
    if (!p.sums || !p.counts) throw new DeepcastError(`mismatched sums and counts for ${name}: ${p.sums ? ".counts" : ".in_sum2"} is missing`, { file });
    if (p.sums.type !== 0 || p.counts.type !== 0) throw new DeepcastError(`sums and counts for ${name} must be F32`, { file });
    const nval = p.sums.ne.reduce((a, b) => a * b, 1);
    const ncounts = p.counts.ne.reduce((a, b) => a * b, 1);
    if (ncounts < 1 || nval < 1 || nval % ncounts !== 0) {
      throw new DeepcastError(`imatrix entry ${name} has ${nval} sums for ${ncounts} counts (expected counts x ne0)`, { file });
    }
    const sums = data(p.sums, nval);
    const counts = data(p.counts, ncounts);
    const ne0 = nval / ncounts;
    for (let m = 0; m < ncounts; m++) {
      const c = counts[m]!;
      if (!Number.isFinite(c)) throw new DeepcastError(`imatrix entry ${name} has a non-finite count ${c} (matrix ${m})`, { file });
      // e.counts = lround(float), then (float)count: round half away from zero
      const count = Math.fround(Math.sign(c) * Math.floor(Math.abs(c) + 0.5));
      for (let i = m * ne0; i < (m + 1) * ne0; i++) sums[i] = count > 0 ? sums[i]! / count : 1;
    }
    entries.set(name, { values: sums, nMat: ncounts });
  }
  return {
    format: "gguf",
    entries,
    datasets: datasetsKv.arrayType === GgufType.STRING ? datasetsKv.strings! : [],
    chunkCount: chunkCountKv.u32! | 0,
    chunkSize: chunkSizeKv.u32! | 0,
  };
}

// ---------------------------------------------------------------------------------------------
// use by llama-quantize
// ---------------------------------------------------------------------------------------------

/** `strncpy(val_str, s, 127)`: at most 127 bytes (cut back to whole UTF-8 characters). */
function cut127(s: string): string {
  const b = Buffer.from(s, "utf8");
  if (b.length <= 127) return s;
  let n = 127;
  while (n > 0 && (b[n]! & 0xc0) === 0x80) n--;
  return b.subarray(0, n).toString("utf8");
}

/**
 * The KVs llama-quantize appends for an imatrix, in its order: quantize.imatrix.file,
 * quantize.imatrix.dataset (the first dataset, when there is one), quantize.imatrix.entries_count,
 * quantize.imatrix.chunks_count (when > 0).
 */
export function imatrixKvs(im: Imatrix): GgufKV[] {
  const out = [kv.str(Keys.Quantize.IMATRIX_FILE, cut127(im.file))];
  if (im.datasets.length > 0) out.push(kv.str(Keys.Quantize.IMATRIX_DATASET, cut127(im.datasets[0]!)));
  out.push(kv.u32(Keys.Quantize.IMATRIX_N_ENTRIES, im.entries.size));
  if (im.chunkCount > 0) out.push(kv.u32(Keys.Quantize.IMATRIX_N_CHUNKS, im.chunkCount));
  return out;
}

export interface ImatrixTensor {
  name: string;
  /** ggml dims. */
  ne: readonly number[];
  /** Needs imatrix data (Q2_K in a Q2_K_S file, IQ types): missing data is an error. */
  requiresImatrix: boolean;
}

export interface ImatrixUse {
  /** Weights per tensor name, ne0 * ne2 values (matrix m: [m*ne0, (m+1)*ne0)). */
  weights: Map<string, Float32Array>;
  /** Quantized without imatrix weights: llama-quantize's "did not find weights for <name>". */
  missing: string[];
  /** token_embd.weight with an entry of the wrong size: quantized without (llama-quantize only warns for it). */
  sizeMismatch: string[];
  /** Tensors that require weights but have none (only with `dryRun`; otherwise an error). */
  missingRequired: string[];
}

/**
 * Matches imatrix entries to the tensors that get quantized (those whose type changes), as
 * llama-quantize does: an entry must hold ne0 * ne2 weights (else an error, except for
 * token_embd.weight, which is then quantized without); a tensor without an entry is quantized
 * without weights, unless it requires them ("Missing importance matrix ... very low-bit quantization";
 * with `dryRun` they are listed in `missingRequired` instead, as llama-quantize --dry-run does not check).
 */
export function imatrixForTensors(im: Imatrix, tensors: readonly ImatrixTensor[], opts: { dryRun?: boolean } = {}): ImatrixUse {
  const use: ImatrixUse = { weights: new Map(), missing: [], sizeMismatch: [], missingRequired: [] };
  for (const t of tensors) {
    const e = im.entries.get(t.name);
    const want = (t.ne[0] ?? 1) * (t.ne[2] ?? 1);
    if (!e) {
      use.missing.push(t.name);
    } else if (e.values.length !== want) {
      if (t.name !== "token_embd.weight" && t.name !== "per_layer_token_embd.weight") {
        throw new DeepcastError(
          `imatrix size ${e.values.length} is different from tensor size ${want} for ${t.name} (ne0 ${t.ne[0] ?? 1} x ${t.ne[2] ?? 1} matrices)`,
          { file: im.file, tensor: t.name },
        );
      }
      use.sizeMismatch.push(t.name);
    } else {
      use.weights.set(t.name, e.values);
      continue;
    }
    if (t.requiresImatrix && opts.dryRun) use.missingRequired.push(t.name);
    else if (t.requiresImatrix) {
      throw new DeepcastError(`missing importance matrix for tensor ${t.name} in a very low-bit quantization (the result would be garbage)`, { file: im.file, tensor: t.name });
    }
  }
  return use;
}
