/** Numeric helpers shared by tests and benchmarks (no test-runner imports, so bundles can use them). */

/** Deterministic uniform values in [-1, 1). */
export function random(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = s / 2 ** 31 - 1;
  }
  return a;
}

/** Deterministic xorshift32 in [0, 1) (seed 0 counts as 1). */
export function xorshift32(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

/** max |a - b| / max |b|. */
export function relError(a: Float32Array, b: Float32Array): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return m > 0 ? d / m : d;
}

/** An e4m3fn code's value, from the format's definition: bias 7, subnormals m * 2^-9, 0x7F/0xFF NaN, no infinity. */
export function e4m3(code: number): number {
  const s = code & 0x80 ? -1 : 1;
  const e = (code >> 3) & 15;
  const m = code & 7;
  if (e === 15 && m === 7) return NaN;
  return e === 0 ? s * m * 2 ** -9 : s * (1 + m / 8) * 2 ** (e - 7);
}

const E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6];

/** An e2m1 (FP4) nibble's value with DeepSeek's table: sign bit 8, code 8 is +0. */
export function e2m1(code: number): number {
  return code === 8 ? 0 : (code & 8 ? -1 : 1) * E2M1[code & 7]!;
}
