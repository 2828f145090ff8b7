/**
 * DeepSeek-V4's quantization-aware-training simulations, as model.py runs them on the activations
 * (kernel.py act_quant / fp4_act_quant with inplace=True, and rotate_activation), in float32:
 *
 *  - fp8ActQuant: per block of `block` values, amax = max(|x|, 1e-4), scale s = 2^ceil(log2(amax/448))
 *    (ue8m0: a power of two), x <- e4m3fn(clamp(x/s, ±448)) * s with round-to-nearest-even;
 *  - fp4ActQuant: per block of 32, amax = max(|x|, 6*2^-126), s = 2^ceil(log2(amax/6)),
 *    x <- e2m1(clamp(x/s, ±6)) * s, round-to-nearest-even onto {0, .5, 1, 1.5, 2, 3, 4, 6};
 *  - hadamard: H x / sqrt(n) with H the Sylvester-ordered Hadamard matrix (n a power of two).
 */
import { DeepcastError } from "../../errors.js";

const f = Math.fround;
const INV_448 = f(1 / 448);
const INV_6 = f(1 / 6);

/** 2^ceil(log2(v)) for a positive float32 v, as kernel.py's bit trick (exponent, +1 when any mantissa bit is set). */
export function pow2Ceil(v: number): number {
  let e = Math.floor(Math.log2(v));
  if (2 ** e > v) e--;
  if (2 ** (e + 1) <= v) e++;
  return 2 ** e === v ? v : 2 ** (e + 1);
}

/** a (>= 0) rounded to a multiple of q (a power of two), ties to the even multiple. */
function roundEven(a: number, q: number): number {
  const r = a / q;
  const fl = Math.floor(r);
  const d = r - fl;
  const n = d > 0.5 ? fl + 1 : d < 0.5 ? fl : fl % 2 === 0 ? fl : fl + 1;
  return n * q;
}

/** v (|v| <= 448) rounded to the e4m3fn grid, ties to even. */
export function roundE4m3(v: number): number {
  const a = Math.abs(v);
  if (a === 0) return v;
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  if (2 ** (e + 1) <= a) e++;
  const q = e < -6 ? 2 ** -9 : 2 ** (e - 3);
  const r = roundEven(a, q);
  return v < 0 ? -r : r;
}

/** v (|v| <= 6) rounded to the e2m1 grid, ties to even. */
export function roundE2m1(v: number): number {
  const a = Math.abs(v);
  const r = roundEven(a, a < 2 ? 0.5 : a < 4 ? 1 : 2);
  return v < 0 ? -r : r;
}

function checkBlocks(width: number, block: number, what: string): void {
  if (width % block !== 0) throw new DeepcastError(`internal: ${what} of ${width} values is not a multiple of the ${block}-value quantization block`);
}

/**
 * In place: FP8 quant-dequant of x[r*stride + offset .. + width) for every row r, by blocks of `block`.
 */
export function fp8ActQuant(x: Float32Array, rows: number, stride: number, offset: number, width: number, block: number): void {
  checkBlocks(width, block, "an FP8 act-quant row");
  for (let r = 0; r < rows; r++) {
    for (let b0 = r * stride + offset, end = b0 + width; b0 < end; b0 += block) {
      let amax = 0;
      for (let i = b0; i < b0 + block; i++) amax = Math.max(amax, Math.abs(x[i]!));
      const s = pow2Ceil(f(Math.max(amax, f(1e-4)) * INV_448));
      for (let i = b0; i < b0 + block; i++) x[i] = roundE4m3(Math.min(448, Math.max(-448, x[i]! / s))) * s;
    }
  }
}

/** In place: FP4 quant-dequant of every row of `width` values (rows contiguous), by blocks of 32. */
export function fp4ActQuant(x: Float32Array, rows: number, width: number, block = 32): void {
  checkBlocks(width, block, "an FP4 act-quant row");
  const floor = f(6 * 2 ** -126);
  for (let b0 = 0; b0 < rows * width; b0 += block) {
    let amax = 0;
    for (let i = b0; i < b0 + block; i++) amax = Math.max(amax, Math.abs(x[i]!));
    const s = pow2Ceil(f(Math.max(amax, floor) * INV_6));
    for (let i = b0; i < b0 + block; i++) x[i] = roundE2m1(Math.min(6, Math.max(-6, x[i]! / s))) * s;
  }
}

/** In place: every row of n values (n a power of two) <- H x / sqrt(n), Sylvester order (fast Walsh-Hadamard). */
export function hadamard(x: Float32Array, rows: number, n: number): void {
  if (n < 1 || (n & (n - 1)) !== 0) throw new DeepcastError(`the Hadamard rotation needs a power-of-two width, got ${n}`);
  const scale = n ** -0.5;
  const t = new Float64Array(n);
  for (let r = 0; r < rows; r++) {
    const o = r * n;
    for (let i = 0; i < n; i++) t[i] = x[o + i]!;
    for (let h = 1; h < n; h *= 2) {
      for (let i = 0; i < n; i += 2 * h) {
        for (let j = i; j < i + h; j++) {
          const a = t[j]!;
          const b = t[j + h]!;
          t[j] = a + b;
          t[j + h] = a - b;
        }
      }
    }
    for (let i = 0; i < n; i++) x[o + i] = t[i]! * scale;
  }
}

/** x quantized as model.py's linear() does before an FP8/FP4 weight (a copy), or x itself without QAT. */
export function qatInput(x: Float32Array, rows: number, cols: number, qat: boolean): Float32Array {
  if (!qat) return x;
  const y = x.slice();
  fp8ActQuant(y, rows, cols, 0, cols, 128);
  return y;
}
