/**
 * Where the forward pass gets its weights: a `WeightSource` hands out tensors by their Hugging Face
 * name (`model.layers.3.mlp.experts.7.up_proj.weight`) as float32, a tensor or a row range at a
 * time, so the forward pass can stream the model layer by layer (and expert by expert) without
 * holding it. `HfWeightSource` reads an HF safetensors checkpoint (FP8 e4m3fn with 128x128
 * `weight_scale_inv` blocks, BF16, F16, F32); a GGUF or demo-shard source implements the same
 * interface (mapping names and dequantizing with `dequantizeRows`).
 */
import { DeepcastError } from "../errors.js";
import { loadCheckpoint, locate, type Checkpoint } from "../io/checkpoint.js";
import { numel } from "../io/dtypes.js";
import { LocalSource, type CheckpointSource } from "../io/source.js";
import { ShardReader } from "../io/shard-reader.js";
import { FP8_BLOCK, scaleNameOf, scaleShape } from "../formats/fp8.js";
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
    return new HfWeightSource(ckpt, checkCheckpointConfig(ckpt, "full", { accept: ["deepseek-v32"] }), { threads: opts.threads ?? 1, bf16Round: opts.bf16Round ?? false });
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

  shape(name: string): readonly number[] {
    return this.where(name).entry.shape;
  }

  async read(name: string, start?: number, count?: number): Promise<Float32Array> {
    const { file, entry } = this.where(name);
    const shape = entry.shape;
    const rows = shape.length === 0 ? 1 : shape[0]!;
    const cols = shape.length <= 1 ? 1 : numel(shape.slice(1));
    const r0 = start ?? 0;
    const n = count ?? rows - r0;
    if (!Number.isInteger(r0) || !Number.isInteger(n) || r0 < 0 || n < 0 || r0 + n > rows) {
      throw new DeepcastError(`rows ${r0}..${r0 + n} out of range for shape [${shape.join(", ")}]`, { file, tensor: name });
    }
    const k = kernels();
    const threads = this.opts.threads;
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
      case "F8_E4M3": {
        if (shape.length !== 2) throw new DeepcastError("FP8 tensor is not 2-D", { file, tensor: name });
        const scaleName = scaleNameOf(name);
        const sLoc = locate(this.checkpoint, scaleName);
        if (!sLoc) throw new DeepcastError(`FP8 weight has no ${scaleName}`, { file, tensor: name });
        const expect = scaleShape(rows, cols);
        const scaleCols = expect[1];
        if (sLoc.entry.dtype !== "F32" || numel(sLoc.entry.shape) !== expect[0]! * expect[1]!) {
          throw new DeepcastError(`${scaleName} is ${sLoc.entry.dtype} [${sLoc.entry.shape.join(", ")}], expected F32 [${expect.join(", ")}]`, { file: sLoc.file, tensor: scaleName });
        }
        // Whole 128-row blocks around the requested rows, so block scales line up.
        const a = Math.floor(r0 / FP8_BLOCK) * FP8_BLOCK;
        const b = r0 + n;
        const codes = new Uint8Array((b - a) * cols);
        await this.reader.read({ file, tensor: name, offset: a * cols, length: codes.length }, codes);
        const sRows = Math.ceil(b / FP8_BLOCK) - a / FP8_BLOCK;
        const scale = new Float32Array(sRows * scaleCols);
        await this.reader.read(
          { file: sLoc.file, tensor: scaleName, offset: (a / FP8_BLOCK) * scaleCols * 4, length: scale.byteLength },
          new Uint8Array(scale.buffer),
        );
        const out = new Float32Array((b - a) * cols);
        const nan = k.fp8ToF32(codes, b - a, cols, scale, out, codes.length >= PARALLEL_MIN ? threads : 1, this.opts.bf16Round);
        if (nan > 0) throw fp8NanError(nan, codes, a, cols, { file: `${this.description}/${file}`, tensor: name });
        return a === r0 ? out : out.subarray((r0 - a) * cols);
      }
      default:
        throw new DeepcastError(`unsupported dtype ${entry.dtype} for the forward pass`, { file, tensor: name });
    }
  }

  close(): Promise<void> {
    return this.reader.close();
  }
}
