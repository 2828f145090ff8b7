/**
 * Where the forward pass gets its weights: a `WeightSource` hands out tensors by their Hugging Face
 * name (`model.layers.3.mlp.experts.7.up_proj.weight`) as float32, a tensor or a row range at a
 * time, so the forward pass can stream the model layer by layer (and expert by expert) without
 * holding it. `HfWeightSource` reads an HF safetensors checkpoint: FP8 e4m3fn with 128x128 blocks
 * scaled by F32 `weight_scale_inv` (V3, V3.2) or F8_E8M0 `.scale` (V4), V4's packed FP4 routed experts
 * (I8 with an E8M0 `.scale` per 32 elements of a row; shape() gives the unpacked [rows, cols]), BF16,
 * F16, F32 and V4's integer `tid2eid` (I64/I32, as float32 values). Every dequantized value is the
 * exact float32 product code x scale. A GGUF or demo-shard source implements the same interface
 * (mapping names and dequantizing with `dequantizeRows`).
 */
import { DeepcastError } from "../errors.js";
import { loadCheckpoint, locate, type Checkpoint } from "../io/checkpoint.js";
import { numel } from "../io/dtypes.js";
import { LocalSource, type CheckpointSource } from "../io/source.js";
import { ShardReader } from "../io/shard-reader.js";
import { FP8_BLOCK } from "../formats/fp8.js";
import { blockScaleRules, type BlockScaleRule } from "../formats/block-scales.js";
import { checkE8m0, e8m0ToF32Array } from "../formats/e8m0.js";
import { FP4_MAX_SCALE_BYTE, fp4LogicalShape } from "../formats/fp4.js";
import { fp8NanError, kernels } from "../quant/kernels.js";
import { checkCheckpointConfig } from "../io/hf-config.js";
import type { ModelConfig } from "./config.js";
import type { StoredMatrix } from "./ops.js";

/** Tensors smaller than this (elements) are converted on one thread: starting threads costs more. */
const PARALLEL_MIN = 1 << 22;

export interface WeightSource {
  /** For messages. */
  readonly description: string;
  readonly config: ModelConfig;
  /** Whether the model has this (HF-named) tensor. */
  has(name: string): boolean;
  /** Logical shape of an HF-named tensor ([out, in] for projections). */
  shape(name: string): readonly number[];
  /**
   * The tensor as float32, row-major. With `start`/`count`, only rows [start, start+count) of a
   * 2-D tensor (elements, for a 1-D one).
   */
  read(name: string, start?: number, count?: number): Promise<Float32Array>;
  /**
   * Rows of a 2-D tensor in its stored ggml form (what `read` would dequantize), for kernels that
   * multiply it directly; null when the tensor has no such form here (1-D, rebuilt, FP8 blocks).
   */
  readStored?(name: string, start?: number, count?: number): Promise<StoredMatrix | null>;
  close(): Promise<void>;
}

export interface HfWeightSourceOptions {
  /** Threads for dequantization (default 1). */
  threads?: number;
  /**
   * Round each dequantized FP8 value to BF16, as `fp8_cast_bf16.py` does (default false: the
   * exact float32 product code * scale_inv, which model.py uses when it dequantizes to float32).
   */
  bf16Round?: boolean;
}

/** A Hugging Face safetensors checkpoint (FP8 or BF16) with its config.json. */
export class HfWeightSource implements WeightSource {
  private readonly reader: ShardReader;

  private constructor(
    readonly checkpoint: Checkpoint,
    readonly config: ModelConfig,
    private readonly opts: Required<HfWeightSourceOptions>,
  ) {
    this.reader = new ShardReader(checkpoint.source);
  }

  static async open(source: CheckpointSource | string, opts: HfWeightSourceOptions = {}): Promise<HfWeightSource> {
    const src = typeof source === "string" ? new LocalSource(source) : source;
    const ckpt = await loadCheckpoint(src);
    return new HfWeightSource(ckpt, checkCheckpointConfig(ckpt, "full", { accept: ["deepseek-v32", "deepseek-v4"] }), { threads: opts.threads ?? 1, bf16Round: opts.bf16Round ?? false });
  }

  get description(): string {
    return this.checkpoint.source.description;
  }

  has(name: string): boolean {
    return locate(this.checkpoint, name) !== undefined;
  }

  private where(name: string) {
    const loc = locate(this.checkpoint, name);
    if (!loc) throw new DeepcastError("tensor not found in the checkpoint", { file: this.description, tensor: name });
    return loc;
  }

  /** The block-scale rule a weight follows (the first whose scale tensor exists), checked; null for an unscaled dtype. */
  private scaleOf(name: string, dtype: string, shape: readonly number[], file: string): { rule: BlockScaleRule; file: string } | null {
    const rules = blockScaleRules(name, dtype as never, shape);
    if (rules.length === 0) return null;
    for (const rule of rules) {
      const loc = locate(this.checkpoint, rule.scale);
      if (!loc) continue;
      if (loc.entry.dtype !== rule.dtype || loc.entry.shape.length !== 2 || loc.entry.shape[0] !== rule.shape[0] || loc.entry.shape[1] !== rule.shape[1]) {
        throw new DeepcastError(`${rule.scale} is ${loc.entry.dtype} [${loc.entry.shape.join(", ")}], expected ${rule.dtype} [${rule.shape.join(", ")}] (${rule.grid})`, { file: loc.file, tensor: rule.scale });
      }
      return { rule, file: loc.file };
    }
    throw new DeepcastError(`${dtype} weight has no ${rules.map((r) => r.scale).join(" or ")}`, { file, tensor: name });
  }

  shape(name: string): readonly number[] {
    const { entry } = this.where(name);
    return entry.dtype === "I8" && entry.shape.length === 2 && this.has(name.replace(/\.weight$/, ".scale")) ? fp4LogicalShape(entry.shape) : entry.shape;
  }

  async read(name: string, start?: number, count?: number): Promise<Float32Array> {
    const { file, entry } = this.where(name);
    const shape = this.shape(name);
    const rows = shape.length === 0 ? 1 : shape[0]!;
    const cols = shape.length <= 1 ? 1 : numel(shape.slice(1));
    const r0 = start ?? 0;
    const n = count ?? rows - r0;
    if (!Number.isInteger(r0) || !Number.isInteger(n) || r0 < 0 || n < 0 || r0 + n > rows) {
      throw new DeepcastError(`rows ${r0}..${r0 + n} out of range for shape [${shape.join(", ")}]`, { file, tensor: name });
    }
    const k = kernels();
    const threads = this.opts.threads;
    const where = { file: `${this.description}/${file}`, tensor: name };
    switch (entry.dtype) {
      case "F32": {
        const out = new Float32Array(n * cols);
        await this.reader.read({ file, tensor: name, offset: r0 * cols * 4, length: n * cols * 4 }, new Uint8Array(out.buffer));
        return out;
      }
      case "BF16":
      case "F16": {
        const raw = new Uint16Array(n * cols);
        await this.reader.read({ file, tensor: name, offset: r0 * cols * 2, length: n * cols * 2 }, new Uint8Array(raw.buffer));
        const out = new Float32Array(n * cols);
        const t = raw.length >= PARALLEL_MIN ? threads : 1;
        if (entry.dtype === "BF16") k.bf16ToF32(raw, out, t);
        else k.f16ToF32(raw, out, t);
        return out;
      }
      case "I64":
      case "I32": {
        // V4's tid2eid: expert ids, exact as float32 (ids below 2^24).
        const size = entry.dtype === "I64" ? 8 : 4;
        const raw = new Uint8Array(n * cols * size);
        await this.reader.read({ file, tensor: name, offset: r0 * cols * size, length: raw.length }, raw);
        const view = new DataView(raw.buffer);
        const out = new Float32Array(n * cols);
        for (let i = 0; i < out.length; i++) {
          const v = size === 8 ? Number(view.getBigInt64(i * 8, true)) : view.getInt32(i * 4, true);
          if (!Number.isSafeInteger(v) || Math.abs(v) >= 2 ** 24) throw new DeepcastError(`integer ${v} at element ${r0 * cols + i} is out of range`, where);
          out[i] = v;
        }
        return out;
      }
      case "F8_E4M3": {
        if (shape.length !== 2) throw new DeepcastError("FP8 tensor is not 2-D", { file, tensor: name });
        const { rule, file: sFile } = this.scaleOf(name, entry.dtype, shape, file)!;
        const scaleCols = rule.shape[1];
        // Whole 128-row blocks around the requested rows, so block scales line up.
        const a = Math.floor(r0 / FP8_BLOCK) * FP8_BLOCK;
        const b = r0 + n;
        const codes = new Uint8Array((b - a) * cols);
        await this.reader.read({ file, tensor: name, offset: a * cols, length: codes.length }, codes);
        const sRows = Math.ceil(b / FP8_BLOCK) - a / FP8_BLOCK;
        let scale: Float32Array;
        if (rule.kind === "fp8-e8m0") {
          const bytes = new Uint8Array(sRows * scaleCols);
          await this.reader.read({ file: sFile, tensor: rule.scale, offset: (a / FP8_BLOCK) * scaleCols, length: bytes.length }, bytes);
          checkE8m0(bytes, scaleCols, { file: `${this.description}/${sFile}`, tensor: rule.scale }, 254, a / FP8_BLOCK);
          scale = e8m0ToF32Array(bytes);
        } else {
          scale = new Float32Array(sRows * scaleCols);
          await this.reader.read({ file: sFile, tensor: rule.scale, offset: (a / FP8_BLOCK) * scaleCols * 4, length: scale.byteLength }, new Uint8Array(scale.buffer));
        }
        const out = new Float32Array((b - a) * cols);
        const nan = k.fp8ToF32(codes, b - a, cols, scale, out, codes.length >= PARALLEL_MIN ? threads : 1, this.opts.bf16Round);
        if (nan > 0) throw fp8NanError(nan, codes, a, cols, where);
        return a === r0 ? out : out.subarray((r0 - a) * cols);
      }
      case "I8": {
        // Packed FP4 (V4 routed experts): e2m1 x 2^(e-127) is exact in BF16, hence in float32.
        const scaleRule = shape.length === 2 ? this.scaleOf(name, entry.dtype, entry.shape, file) : null;
        if (!scaleRule) throw new DeepcastError("I8 tensor without an FP4 .scale is not a weight the forward pass reads", { file, tensor: name });
        const { rule, file: sFile } = scaleRule;
        const groups = rule.shape[1];
        const packed = new Uint8Array((n * cols) / 2);
        await this.reader.read({ file, tensor: name, offset: (r0 * cols) / 2, length: packed.length }, packed);
        const bytes = new Uint8Array(n * groups);
        await this.reader.read({ file: sFile, tensor: rule.scale, offset: r0 * groups, length: bytes.length }, bytes);
        checkE8m0(bytes, groups, { file: `${this.description}/${sFile}`, tensor: rule.scale }, FP4_MAX_SCALE_BYTE, r0);
        const t = packed.length >= PARALLEL_MIN ? threads : 1;
        const bf = new Uint16Array(n * cols);
        k.fp4ToBf16(packed, n, cols, bytes, bf, t);
        const out = new Float32Array(n * cols);
        k.bf16ToF32(bf, out, t);
        return out;
      }
      default:
        throw new DeepcastError(`unsupported dtype ${entry.dtype} for the forward pass`, { file, tensor: name });
    }
  }

  close(): Promise<void> {
    return this.reader.close();
  }
}
