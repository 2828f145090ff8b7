/**
 * A planned GGUF without the file: the tensors to-gguf would write for a choice of types, made on
 * demand (decoded from the checkpoint and quantized with the plan's imatrix weights by the same
 * functions as runToGguf) and served through the GGUF reader's interface, so the forward pass reads
 * a candidate allocation as it would read the file (`GgufWeightSource.fromStore`). Tensors are made
 * in slabs (an expert, a head-split kv_b part, or 256 rows of a plain tensor) when the pass first
 * asks for them; decoded values and quantized slabs are kept in one LRU cache of bounded bytes, so
 * trying many allocations decodes each slab once and quantizes each (slab, type) once while it fits.
 */
import { DeepcastError } from "../errors.js";
import { FP8_BLOCK } from "../formats/fp8.js";
import { ggmlNbytes, rowBytes, type GgmlType } from "../formats/ggml-types.js";
import type { GgufTensorInfo, GgufTensorStore } from "../io/gguf-reader.js";
import type { GgufKV, GgufScalar } from "../io/gguf-kv.js";
import { ShardReader } from "../io/shard-reader.js";
import type { CheckpointSource } from "../io/source.js";
import type { Kernels } from "../quant/kernels.js";
import type { GgufOutputTensor } from "./gguf-output.js";
import { kvBSplit } from "./gguf-plan.js";
import { loadScale } from "./target-errors.js";
import { decodeRows, elemSize, encodeRows, type DecodeCtx, type ToGgufPlan } from "./to-gguf.js";

/** Rows of a plain (not stacked) tensor made at a time: two FP8 scale blocks. */
const PLAIN_SLAB_ROWS = 2 * FP8_BLOCK;

export interface PlannedGgufOptions {
  kernels: Kernels;
  threads?: number;
  /** Bytes of decoded values and quantized slabs kept between reads (default 1 GiB). */
  cacheBytes?: number;
}

class Lru {
  private readonly map = new Map<string, Float32Array | Uint8Array>();
  private bytes = 0;
  constructor(private readonly cap: number) {}
  get<T extends Float32Array | Uint8Array>(key: string): T | undefined {
    const v = this.map.get(key);
    if (v) {
      this.map.delete(key);
      this.map.set(key, v);
    }
    return v as T | undefined;
  }
  set(key: string, v: Float32Array | Uint8Array): void {
    if (v.byteLength > this.cap) return;
    const old = this.map.get(key);
    if (old) {
      this.map.delete(key);
      this.bytes -= old.byteLength;
    }
    this.map.set(key, v);
    this.bytes += v.byteLength;
    for (const [k, old] of this.map) {
      if (this.bytes <= this.cap) break;
      this.map.delete(k);
      this.bytes -= old.byteLength;
    }
  }
}

export class PlannedGguf {
  private readonly reader: ShardReader;
  private readonly ctx: DecodeCtx;
  private readonly cache: Lru;
  private readonly byName: Map<string, GgufOutputTensor>;
  private readonly weights: ReadonlyMap<string, Float32Array> | undefined;
  private readonly kvs: Map<string, GgufScalar>;
  private readonly kvByKey: Map<string, GgufKV>;

  /** `plan`: any plan of the model (its tensor list, metadata and imatrix weights); the types come with each `store`. */
  constructor(source: CheckpointSource, private readonly plan: ToGgufPlan, private readonly opts: PlannedGgufOptions) {
    this.reader = new ShardReader(source);
    this.ctx = { k: opts.kernels, threads: opts.threads ?? 1, scales: new Map(), allowNonFinite: false, where: source.description };
    this.cache = new Lru(opts.cacheBytes ?? 2 ** 30);
    this.byName = new Map(plan.output.tensors.map((t) => [t.name, t]));
    this.weights = plan.imatrix?.weights;
    this.kvs = new Map(plan.output.kvs.filter((k) => k.type !== "ARRAY").map((k) => [k.key, k.value as GgufScalar]));
    this.kvByKey = new Map(plan.output.kvs.map((k) => [k.key, k]));
  }

  /**
   * The model with `types` (by GGUF tensor name; the others keep the plan's type) as a GGUF store.
   * Closing the store does not close this.
   */
  store(types: ReadonlyMap<string, GgmlType>, description = "planned GGUF"): GgufTensorStore {
    const infos: GgufTensorInfo[] = this.plan.output.tensors.map((t) => {
      const type = types.get(t.name) ?? t.type;
      return { name: t.name, ne: [...t.ne], type, offset: 0, fileOffset: 0, nbytes: ggmlNbytes(type, t.ne, t.name), file: 0 };
    });
    const byName = new Map(infos.map((t) => [t.name, t]));
    const value = (key: string) => this.kvs.get(key);
    return {
      path: description,
      value,
      kv: (key: string) => this.kvByKey.get(key),
      get tensors() {
        return infos;
      },
      tensor: (name: string) => byName.get(name),
      read: (t, offset, dst) => this.read(t, offset, dst),
      close: async () => undefined,
    };
  }

  /** Quantized bytes [offset, offset + dst.length) of tensor `t` as `t.type`. */
  private async read(t: GgufTensorInfo, offset: number, dst: Uint8Array): Promise<void> {
    const out = this.byName.get(t.name);
    if (!out) throw new DeepcastError("tensor not in the plan", { tensor: t.name });
    const ne0 = t.ne[0] ?? 1;
    const rb = rowBytes(t.type, ne0);
    if (offset % rb !== 0 || dst.length % rb !== 0) throw new DeepcastError(`internal: read of ${dst.length} bytes at ${offset} is not whole rows of ${rb} bytes`, { tensor: t.name });
    const row0 = offset / rb;
    const rows = dst.length / rb;
    const slab = slabRows(out);
    for (let r = row0; r < row0 + rows;) {
      const s0 = Math.floor(r / slab) * slab;
      const bytes = await this.slabBytes(out, t.type, s0);
      const n = Math.min(row0 + rows, s0 + bytes.length / rb) - r;
      dst.set(bytes.subarray((r - s0) * rb, (r - s0 + n) * rb), (r - row0) * rb);
      r += n;
    }
  }

  private async slabBytes(t: GgufOutputTensor, type: GgmlType, s0: number): Promise<Uint8Array> {
    const key = `q ${t.name} ${type.id} ${s0}`;
    const hit = this.cache.get<Uint8Array>(key);
    if (hit) return hit;
    const values = await this.slabValues(t, s0);
    const ne0 = t.ne[0] ?? 1;
    const rows = values.length / ne0;
    const out = new Uint8Array(rows * rowBytes(type, ne0));
    encodeRows(type, values, rows, ne0, out, s0, t.ne[1] ?? 1, this.weights?.get(t.name), this.ctx.threads);
    this.cache.set(key, out);
    return out;
  }

  /** The float32 values to-gguf quantizes for the slab of `t` starting at ggml row `s0`. */
  private async slabValues(t: GgufOutputTensor, s0: number): Promise<Float32Array> {
    const key = `v ${t.name} ${s0}`;
    const hit = this.cache.get<Float32Array>(key);
    if (hit) return hit;
    const s = t.source;
    const round = t.inputType.name === "BF16";
    // reads of several tensors overlap (the forward pass prefetches): each has its own scales
    const ctx: DecodeCtx = { ...this.ctx, scales: new Map() };
    const ne0 = t.ne[0] ?? 1;
    const total = t.ne.slice(1).reduce((a, b) => a * b, 1);
    const n = Math.min(slabRows(t), total - s0);
    let values: Float32Array;
    if (s.kind === "kv_b") {
      const [rows, cols] = s.src.shape as [number, number];
      await loadScale(this.reader, ctx, s.src);
      const input = new Uint8Array(rows * cols * elemSize(s.src));
      await this.reader.read({ file: s.src.file, tensor: s.src.name, offset: 0, length: input.length }, input);
      const all = new Float32Array(rows * cols);
      decodeRows(ctx, s.src, input, 0, rows, cols, round, all);
      values = kvBSplit(all, s.part, s);
    } else if (s.kind !== "tensor" && s.kind !== "stack") {
      throw new DeepcastError(`--target-measure builds DeepSeek-V3 and V3.2 tensors only, not this ${s.kind} source (DeepSeek-V4)`, { tensor: t.name, code: "UNSUPPORTED" });
    } else {
      const [src, r0] = s.kind === "stack" ? [s.experts[Math.floor(s0 / (t.ne[1] ?? 1))]!, 0] : [s.src, s0];
      const cols = src.shape.length === 0 ? 1 : src.shape[src.shape.length - 1]!;
      if (cols !== ne0) throw new DeepcastError(`row length ${cols} of the source does not match ne0 ${ne0}`, { tensor: t.name, file: src.file });
      await loadScale(this.reader, ctx, src);
      const es = elemSize(src);
      const input = new Uint8Array(n * cols * es);
      await this.reader.read({ file: src.file, tensor: src.name, offset: r0 * cols * es, length: input.length }, input);
      values = new Float32Array(n * cols);
      decodeRows(ctx, src, input, r0, n, cols, round, values);
    }
    if (values.length !== n * ne0) throw new DeepcastError(`internal: slab of ${values.length} values, expected ${n} x ${ne0}`, { tensor: t.name });
    this.cache.set(key, values);
    return values;
  }

  close(): Promise<void> {
    return this.reader.close();
  }
}

/** Rows per slab: a stacked tensor's matrix (one expert), a whole kv_b part, or PLAIN_SLAB_ROWS rows. */
function slabRows(t: GgufOutputTensor): number {
  const total = t.ne.slice(1).reduce((a, b) => a * b, 1);
  if (t.source.kind === "kv_b") return total;
  if (t.source.kind === "stack") return t.ne[1] ?? 1;
  return Math.min(total, PLAIN_SLAB_ROWS);
}
