/**
 * safetensors dtype tags, their element sizes, and the order the safetensors library writes them in
 * (the declaration order of the Rust crate's `Dtype` enum: BOOL, F4, ... F8_E5M2, F8_E4M3, F8_E8M0, I16 ...).
 */
export const DTYPE_SIZE = {
  BOOL: 1,
  /**
   * OCP e2m1 FP4, two elements per byte (low nibble first): torch's float4_e2m1fn_x2, which safetensors
   * records as F4 with the logical shape (last dim = elements, twice the bytes). Half a byte per element.
   */
  F4: 0.5,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  /** OCP E8M0 power-of-two scale byte (DeepSeek-V4 `.scale`): 2^(e-127); 255 is NaN. */
  F8_E8M0: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
} as const;

export type Dtype = keyof typeof DTYPE_SIZE;

export function isDtype(s: unknown): s is Dtype {
  return typeof s === "string" && Object.hasOwn(DTYPE_SIZE, s);
}

/** Rank in safetensors' `Dtype` enum; the library lays tensors out by descending rank, then by name. */
const DTYPE_RANK: Record<Dtype, number> = Object.fromEntries(
  (Object.keys(DTYPE_SIZE) as Dtype[]).map((d, i) => [d, i]),
) as Record<Dtype, number>;

/** The tensor order of `safetensors.save_file`: dtype descending (F32 before BF16 before F8), then name. */
export function safetensorsOrder(a: { name: string; dtype: Dtype }, b: { name: string; dtype: Dtype }): number {
  const byDtype = DTYPE_RANK[b.dtype] - DTYPE_RANK[a.dtype];
  if (byDtype !== 0) return byDtype;
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Bytes of a tensor's data; NaN when they are not a whole number (an F4 tensor with an odd element count). */
export function tensorBytes(dtype: Dtype, shape: readonly number[]): number {
  const bytes = numel(shape) * DTYPE_SIZE[dtype];
  return Number.isInteger(bytes) ? bytes : NaN;
}
