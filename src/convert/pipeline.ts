/**
 * The streaming engine under every converter: output files are filled chunk by chunk, with the read
 * of chunk i+1 and the write of chunk i-1 in flight while chunk i is converted. Three buffer slots
 * rotate, so memory is a few chunks, never a tensor, a shard or a model.
 */
import { DeepcastError } from "../errors.js";
import { checkE8m0, E8M0_MAX_FOR_FP8, e8m0ToF32Array } from "../formats/e8m0.js";
import { FP8_BLOCK } from "../formats/fp8.js";
import type { ShardReader, TensorRange } from "../io/shard-reader.js";
import { checkFp8ScaleValues, fp8NanError, type Kernels } from "../quant/kernels.js";

/** Default bytes of input per chunk. */
export const DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024;

export interface Chunk {
  /** Output tensor these bytes belong to. */
  tensor: string;
  src: TensorRange;
  /** Bytes this chunk produces. */
  outBytes: number;
  /** Turns the input bytes into `out` (exactly outBytes long). Absent: the input is written as is. */
  convert?: (input: Uint8Array, out: Uint8Array) => void;
}

/** Anything chunk inputs can be read from: safetensors shards (ShardReader), a GGUF's tensors, ... */
export interface RangeReader {
  read(src: TensorRange, dst: Uint8Array): Promise<void>;
}

/** Anything chunks can be appended to, in order. */
export interface ChunkSink {
  append(tensor: string, data: Uint8Array): Promise<void>;
}

class Slot {
  input = new Uint8Array(0);
  output = new Uint8Array(0);
  /** Resolves when the write that used this slot's buffers has finished. */
  released: Promise<void> = Promise.resolve();

  inputView(n: number): Uint8Array {
    if (this.input.length < n) this.input = new Uint8Array(new ArrayBuffer(n));
    return this.input.subarray(0, n);
  }

  outputView(n: number): Uint8Array {
    if (this.output.length < n) this.output = new Uint8Array(new ArrayBuffer(n));
    return this.output.subarray(0, n);
  }
}

/**
 * The three buffer slots of pump(). A run that pumps many groups of chunks one after another (to-gguf:
 * one group per tensor) passes the same slots to each call, so its buffers are allocated and paged in
 * once, not per tensor. Not for concurrent pumps.
 */
export class PumpSlots {
  readonly slots: readonly Slot[] = [new Slot(), new Slot(), new Slot()];
}

/** Reads, converts and appends every chunk in order. `onChunk` gets input and output byte counts. */
export async function pump(
  chunks: readonly Chunk[],
  reader: RangeReader,
  sink: ChunkSink,
  onChunk: (inBytes: number, outBytes: number) => void = () => undefined,
  buffers: PumpSlots = new PumpSlots(),
): Promise<void> {
  const { slots } = buffers;
  const startRead = async (i: number): Promise<Uint8Array> => {
    const c = chunks[i]!;
    const slot = slots[i % 3]!;
    await slot.released;
    const buf = slot.inputView(c.src.length);
    await reader.read(c.src, buf);
    return buf;
  };
  let pendingRead: Promise<Uint8Array> | null = chunks.length ? startRead(0) : null;
  let lastWrite: Promise<void> = Promise.resolve();
  try {
    for (let i = 0; i < chunks.length; i++) {
      const c = chunks[i]!;
      const slot = slots[i % 3]!;
      const input = await pendingRead!;
      pendingRead = i + 1 < chunks.length ? startRead(i + 1) : null;
      // Keep a rejected read from being reported as unhandled while this chunk is processed.
      pendingRead?.catch(() => undefined);
      let data = input;
      if (c.convert) {
        data = slot.outputView(c.outBytes);
        c.convert(input, data);
      } else if (input.length !== c.outBytes) {
        throw new DeepcastError(`internal: copy chunk of ${input.length} bytes, expected ${c.outBytes}`, { tensor: c.tensor });
      }
      const prev = lastWrite;
      lastWrite = prev.then(() => sink.append(c.tensor, data));
      slot.released = lastWrite.catch(() => undefined);
      await prev;
      onChunk(c.src.length, c.outBytes);
    }
    await lastWrite;
  } finally {
    await pendingRead?.catch(() => undefined);
    await lastWrite.catch(() => undefined);
  }
}

/**
 * Reads an FP8 weight's block scales (F32, checked by loadCheckpoint) and checks their values:
 * finite, non-negative, not absurd, unless `allowNonFinite`.
 */
export async function readFp8Scale(
  reader: ShardReader, scale: { file: string; name: string }, weightCols: number, where: string, allowNonFinite: boolean,
): Promise<Float32Array> {
  const raw = await reader.readTensor(scale.file, scale.name);
  const values = new Float32Array(raw.buffer, raw.byteOffset, raw.length / 4);
  if (!allowNonFinite) checkFp8ScaleValues(values, Math.ceil(weightCols / FP8_BLOCK), { file: where, tensor: scale.name });
  return values;
}

/**
 * Reads a V4 FP8 weight's E8M0 tile scales (F8_E8M0 [ceil(rows/128), ceil(cols/128)], checked by
 * loadCheckpoint) as float32 2^(e-127): byte 255 (NaN) is always refused, a byte whose scale makes
 * 448 overflow unless `allowNonFinite`.
 */
export async function readE8m0Scale(
  reader: ShardReader, scale: { file: string; name: string }, weightCols: number, where: string, allowNonFinite: boolean,
): Promise<Float32Array> {
  const raw = await reader.readTensor(scale.file, scale.name);
  checkE8m0(raw, Math.ceil(weightCols / FP8_BLOCK), { file: where, tensor: scale.name }, allowNonFinite ? 254 : E8M0_MAX_FOR_FP8);
  return e8m0ToF32Array(raw);
}

/**
 * Chunks that dequantize an FP8 [rows, cols] tensor to BF16, in whole 128-row blocks so each chunk's
 * scales are a contiguous slice of `scale()` (read when the chunk converts).
 */
export function fp8ToBf16Chunks(a: {
  tensor: string;
  file: string;
  /** The file as messages name it (source description + shard). */
  where: string;
  /** Keep FP8 NaN codes as NaN instead of failing (--allow-non-finite). */
  allowNonFinite: boolean;
  rows: number;
  cols: number;
  scale: () => Float32Array;
  kernels: Kernels;
  threads: number;
  chunkBytes: number;
}): Chunk[] {
  const { rows, cols } = a;
  const scaleCols = Math.ceil(cols / FP8_BLOCK);
  const step = Math.max(1, Math.floor(a.chunkBytes / Math.max(1, cols * FP8_BLOCK))) * FP8_BLOCK;
  const chunks: Chunk[] = [];
  for (let r0 = 0; r0 < rows; r0 += step) {
    const n = Math.min(step, rows - r0);
    const sb = r0 / FP8_BLOCK;
    chunks.push({
      tensor: a.tensor,
      src: { file: a.file, tensor: a.tensor, offset: r0 * cols, length: n * cols },
      outBytes: n * cols * 2,
      convert: (input, out) => {
        const scale = a.scale().subarray(sb * scaleCols, (sb + Math.ceil(n / FP8_BLOCK)) * scaleCols);
        const nan = a.kernels.fp8ToBf16(input, n, cols, scale, new Uint16Array(out.buffer, out.byteOffset, n * cols), a.threads);
        if (nan > 0 && !a.allowNonFinite) throw fp8NanError(nan, input, r0, cols, { file: a.where, tensor: a.tensor });
      },
    });
  }
  return chunks;
}
