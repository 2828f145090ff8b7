/**
 * An FP8 weight's 128x128 block scales as float32 multipliers, whatever their storage: V3's F32
 * `_scale_inv` (values checked by pipeline.readFp8Scale) or V4's F8_E8M0 `.scale` (2^(e-127); byte 255,
 * NaN in the OCP format, is rejected unless --allow-non-finite).
 */
import { DeepcastError } from "../errors.js";
import { e8m0ToF32 } from "../formats/mxfp4-repack.js";
import type { ShardReader } from "../io/shard-reader.js";
import { readFp8Scale } from "./pipeline.js";

export async function readBlockScale(
  reader: ShardReader, scale: { file: string; name: string; dtype: string }, weightCols: number, where: string, allowNonFinite: boolean,
): Promise<Float32Array> {
  if (scale.dtype !== "F8_E8M0") return readFp8Scale(reader, scale, weightCols, where, allowNonFinite);
  const raw = await reader.readTensor(scale.file, scale.name);
  return e8m0Scales(raw, { file: where, tensor: scale.name }, allowNonFinite);
}

/** E8M0 bytes -> float32 2^(e-127); a 255 byte is an error naming the tensor and its index. */
export function e8m0Scales(raw: Uint8Array, where: { file: string; tensor: string }, allowNonFinite: boolean): Float32Array {
  const out = new Float32Array(raw.length);
  for (let i = 0; i < raw.length; i++) {
    const e = raw[i]!;
    if (e === 255 && !allowNonFinite) {
      throw new DeepcastError(`E8M0 scale byte 255 (NaN) at index ${i}: the checkpoint is corrupt (--allow-non-finite keeps it)`, { ...where, code: "BAD_SCALE" });
    }
    out[i] = e8m0ToF32(e);
  }
  return out;
}

/** Checks E8M0 exponent bytes for 255 (NaN) without converting them. */
export function checkE8m0(raw: Uint8Array, where: { file: string; tensor: string }, allowNonFinite: boolean): void {
  if (allowNonFinite) return;
  const i = raw.indexOf(255);
  if (i >= 0) throw new DeepcastError(`E8M0 scale byte 255 (NaN) at index ${i}: the checkpoint is corrupt (--allow-non-finite keeps it)`, { ...where, code: "BAD_SCALE" });
}
