/**
 * Pure-TypeScript element conversions, bit-exact twins of native/src/floats.h. They are the fallback
 * when the addon is absent and the oracle the native kernels are tested against.
 */
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f32Bits(x: number): number {
  f32[0] = x;
  return u32[0]!;
}

export function f32FromBits(bits: number): number {
  u32[0] = bits >>> 0;
  return f32[0]!;
}

/** FP8 e4m3fn code -> its exact value; NaN codes decode to sign|0x7FF00000 as PyTorch does. */
export function fp8E4m3ToF32(code: number): number {
  const sign = (code & 0x80) << 24;
  const nonsign = code & 0x7f;
  if (nonsign === 0x7f) return f32FromBits(sign | 0x7ff00000);
  const exp = nonsign >> 3;
  const man = nonsign & 7;
  const mag = exp === 0 ? man * 2 ** -9 : (1 + man / 8) * 2 ** (exp - 7);
  return sign ? -mag : mag;
}

/**
 * The e4m3fn value nearest to float32 `x` (ties to the even code), saturating at +-448: what
 * `x.clamp(-448, 448).to(torch.float8_e4m3fn)` gives, as a float32. NaN stays NaN.
 */
export function roundToFp8E4m3(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const a = Math.abs(x);
  if (a >= 448) return x < 0 ? -448 : 448;
  // spacing of e4m3 values around a: 2^(e-3) in binade e, 2^-9 among the subnormals (below 2^-6)
  const e = Math.max(((f32Bits(a) >>> 23) & 0xff) - 127, -6);
  const ulp = 2 ** (e - 3);
  const r = a / ulp;
  let n = Math.floor(r);
  const frac = r - n;
  if (frac > 0.5 || (frac === 0.5 && n % 2 === 1)) n++;
  const v = n * ulp;
  return x < 0 ? -v : v;
}

/** Table of all 256 codes as f32 values (NaN payloads preserved in the bit view). */
export const FP8_E4M3_TABLE: Float32Array = (() => {
  const t = new Float32Array(256);
  const bits = new Uint32Array(t.buffer);
  for (let c = 0; c < 256; c++) bits[c] = f32Bits(fp8E4m3ToF32(c));
  // -0 and NaN payloads: set from the bit formula so the table is exact.
  bits[0x80] = 0x80000000;
  bits[0x7f] = 0x7ff00000;
  bits[0xff] = 0xfff00000;
  return t;
})();

/** f32 bit pattern -> bf16 with round to nearest even; NaN keeps sign and payload, forced quiet. */
export function bf16FromF32Bits(u: number): number {
  if ((u & 0x7fffffff) >>> 0 > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function f32ToBf16(x: number): number {
  return bf16FromF32Bits(f32Bits(x));
}

export function bf16ToF32(h: number): number {
  return f32FromBits((h & 0xffff) << 16);
}

/** ggml's scalar fp32 -> fp16 (round to nearest even; NaN -> sign|0x7E00). */
export function f32ToF16(x: number): number {
  const w = f32Bits(x);
  let base = Math.fround(Math.fround(Math.abs(Math.fround(x)) * 2 ** 112) * 2 ** -110);
  const shl1w = (w * 2) >>> 0;
  const sign = (w & 0x80000000) >>> 0;
  let bias = (shl1w & 0xff000000) >>> 0;
  if (bias < 0x71000000) bias = 0x71000000;
  base = Math.fround(f32FromBits(((bias >>> 1) + 0x07800000) >>> 0) + base);
  const bits = f32Bits(base);
  const expBits = (bits >>> 13) & 0x7c00;
  const mantissaBits = bits & 0xfff;
  const nonsign = expBits + mantissaBits;
  return ((sign >>> 16) | (shl1w > 0xff000000 ? 0x7e00 : nonsign)) & 0xffff;
}

export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const man = h & 0x3ff;
  if (exp === 0) return sign * man * 2 ** -24;
  if (exp === 31) {
    if (man === 0) return sign * Infinity;
    // NaN: payload kept, quiet bit set (as ggml's conversion and F16C do).
    return f32FromBits(((h & 0x8000) << 16) | 0x7fc00000 | (man << 13));
  }
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}
