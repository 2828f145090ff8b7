/**
 * An FP8 weight's 128x128 block scales as float32 multipliers, whatever their storage: V3's F32
 * `_scale_inv` (values checked by pipeline.readFp8Scale) or V4's F8_E8M0 `.scale` (2^(e-127); byte 255,
 * NaN in the OCP format, is rejected by formats/e8m0.ts unless --allow-non-finite).
 */
import { checkE8m0, e8m0ToF32Array } from "../formats/e8m0.js";
import type { ShardReader } from "../io/shard-reader.js";
import { readFp8Scale } from "./pipeline.js";

export async function readBlockScale(
  reader: ShardReader, scale: { file: string; name: string; dtype: string; shape: number[] }, weightCols: number, where: string, allowNonFinite: boolean,
): Promise<Float32Array> {
  if (scale.dtype !== "F8_E8M0") return readFp8Scale(reader, scale, weightCols, where, allowNonFinite);
  const raw = await reader.readTensor(scale.file, scale.name);
  if (!allowNonFinite) checkE8m0(raw, scale.shape[1] ?? 1, { file: where, tensor: scale.name });
  return e8m0ToF32Array(raw);
}
