import { describe, expect, it } from "vitest";
import { bf16FromF32Bits, f16ToF32, f32Bits, f32FromBits, f32ToF16, fp8E4m3ToF32 } from "../src/quant/floats.js";
import { tsKernels, type Kernels } from "../src/quant/kernels.js";
import { loadNative } from "../src/quant/native.js";
import { e4m3 } from "./numeric.js";

const native = loadNative();

/** Native kernels pinned to one SIMD level. */
function nativeAt(level: "scalar" | "avx2"): Kernels {
  const n = native!;
  const wrap = <A extends unknown[], R>(f: (...a: A) => R) => (...a: A): R => {
    expect(n.setSimd(level)).toBe(true);
    try {
      return f(...a);
    } finally {
      n.setSimd("auto");
    }
  };
  return {
    backend: "native",
    simd: () => level,
    fp8ToBf16: wrap((s, r, c, sc, d, t) => n.fp8ToBf16(s, r, c, sc, d, t)),
    fp8ToF32: wrap((s, r, c, sc, d, t, b) => n.fp8ToF32(s, r, c, sc, d, t, b)),
    f32ToBf16: wrap((s, d, t) => n.f32ToBf16(s, d, t)),
    bf16ToF32: wrap((s, d, t) => n.bf16ToF32(s, d, t)),
    f32ToF16: wrap((s, d, t) => n.f32ToF16(s, d, t)),
    f16ToF32: wrap((s, d, t) => n.f16ToF32(s, d, t)),
    fp4ToBf16: wrap((s, r, c, sc, d, t) => n.fp4ToBf16(s, r, c, sc, d, t)),
    fp4ToFp8: wrap((s, r, c, sc, d, t) => n.fp4ToFp8(s, r, c, sc, d, t)),
  };
}

const impls: [string, Kernels][] = [["ts", tsKernels]];
if (native) {
  impls.push(["native scalar", nativeAt("scalar")]);
  if (native.hasAvx2()) impls.push(["native avx2", nativeAt("avx2")]);
}


/** bf16 of an f32 bit pattern, computed with BigInt-free arithmetic on the exact value. */
function bf16Spec(bits: number): number {
  const x = f32FromBits(bits);
  if (Number.isNaN(x)) return ((bits >>> 16) | 0x40) & 0xffff;
  // Round the exact value to 8 significant bits, ties to even, by comparing the two neighbours.
  const lo = (bits >>> 16) & 0xffff;
  const hi = (lo + 1) & 0xffff;
  const vlo = f32FromBits(lo << 16);
  const vhi = f32FromBits(hi << 16);
  const dlo = Math.abs(x - vlo);
  const dhi = Math.abs(vhi - x);
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return lo & 1 ? hi : lo;
}

describe("FP8 e4m3fn decode", () => {
  it("matches the format definition for all 256 codes", () => {
    for (let c = 0; c < 256; c++) {
      const v = fp8E4m3ToF32(c);
      const spec = e4m3(c);
      if (Number.isNaN(spec)) expect(f32Bits(v)).toBe(((c & 0x80) << 24 | 0x7ff00000) >>> 0);
      else expect(Object.is(v, spec)).toBe(true);
    }
    expect(fp8E4m3ToF32(0x7e)).toBe(448);
    expect(fp8E4m3ToF32(0x01)).toBe(2 ** -9);
    expect(Object.is(fp8E4m3ToF32(0x80), -0)).toBe(true);
  });

  // Every code times scales that exercise rounding: ordinary, subnormal products, huge, negative zero.
  const scales = [1, 0.0123456789, 3.4e-3, 1e-38, 2 ** -126, 7.1e30, 1.5, -0.0, 0.0009765625];
  for (const [name, k] of impls) {
    it(`${name}: all 256 codes x ${scales.length} scales give bf16(f32(fp8) * scale)`, () => {
      const rows = scales.length * 128;
      const cols = 256;
      const src = new Uint8Array(rows * cols);
      for (let i = 0; i < src.length; i++) src[i] = i & 0xff;
      // scale[r/128][c/128]: second column block uses the scale halved.
      const scale = new Float32Array(scales.length * 2);
      scales.forEach((s, i) => { scale[i * 2] = s; scale[i * 2 + 1] = Math.fround(s / 2); });
      const dst = new Uint16Array(rows * cols);
      k.fp8ToBf16(src, rows, cols, scale, dst, 2);
      for (let r = 0; r < rows; r += 37) {
        for (let c = 0; c < cols; c++) {
          const s = scale[Math.floor(r / 128) * 2 + Math.floor(c / 128)]!;
          const prod = Math.fround(fp8E4m3ToF32(src[r * cols + c]!) * s);
          expect(dst[r * cols + c]).toBe(bf16Spec(f32Bits(prod)));
        }
      }
    });
  }

  it("all implementations give identical bytes, including partial edge blocks", () => {
    const shapes: [number, number][] = [[144, 256], [192, 128], [576, 200], [1, 1], [130, 129], [7, 300]];
    for (const [rows, cols] of shapes) {
      const src = new Uint8Array(rows * cols).map((_, i) => (i * 2654435761) >>> 24);
      const scale = new Float32Array(Math.ceil(rows / 128) * Math.ceil(cols / 128)).map((_, i) => Math.fround(0.001 * (i + 1) + 1e-7 * i * i));
      const outs = impls.map(([, k]) => {
        const d = new Uint16Array(rows * cols);
        k.fp8ToBf16(src, rows, cols, scale, d, 3);
        return Buffer.from(d.buffer);
      });
      const f32s = impls.map(([, k]) => {
        const d = new Float32Array(rows * cols);
        k.fp8ToF32(src, rows, cols, scale, d, 2, true);
        return Buffer.from(d.buffer);
      });
      for (const o of outs.slice(1)) expect(o.equals(outs[0]!)).toBe(true);
      for (const o of f32s.slice(1)) expect(o.equals(f32s[0]!)).toBe(true);
      // The bf16-rounded f32 path holds exactly the bf16 values.
      const bf = new Uint16Array(outs[0]!.buffer, outs[0]!.byteOffset, rows * cols);
      const f = new Uint32Array(f32s[0]!.buffer, f32s[0]!.byteOffset, rows * cols);
      for (let i = 0; i < bf.length; i++) expect(f[i]).toBe((bf[i]! << 16) >>> 0);
    }
  });

  it("every implementation counts the NaN codes 0x7F/0xFF it casts, and the counts agree (scalar, AVX2, TS)", () => {
    for (const [rows, cols] of [[144, 256], [130, 129], [7, 300], [1, 1]] as [number, number][]) {
      const src = new Uint8Array(rows * cols).map((_, i) => (i * 2654435761) >>> 24);
      let expected = 0;
      for (const c of src) if ((c & 0x7f) === 0x7f) expected++;
      src[src.length - 1] = 0xff; // one in the scalar tail of the last row
      if ((((src.length - 1) * 2654435761) >>> 24 & 0x7f) !== 0x7f) expected++;
      const scale = new Float32Array(Math.ceil(rows / 128) * Math.ceil(cols / 128)).fill(0.5);
      for (const [name, k] of impls) {
        expect(k.fp8ToBf16(src, rows, cols, scale, new Uint16Array(rows * cols), 3), name).toBe(expected);
        expect(k.fp8ToF32(src, rows, cols, scale, new Float32Array(rows * cols), 2, false), name).toBe(expected);
      }
    }
    for (const [, k] of impls) expect(k.fp8ToBf16(new Uint8Array(256).fill(0x7e), 1, 256, new Float32Array(2), new Uint16Array(256), 1)).toBe(0);
  });

  it("rejects a scale of the wrong size", () => {
    for (const [, k] of impls) {
      expect(() => k.fp8ToBf16(new Uint8Array(144 * 256), 144, 256, new Float32Array(2), new Uint16Array(144 * 256), 1)).toThrow(/scale/);
    }
  });
});

describe("f32 <-> bf16 / f16", () => {
  // Special values plus pseudo-random bit patterns (all exponents, ties, NaN payloads).
  const bits = new Uint32Array(1 << 18);
  let s = 12345;
  for (let i = 0; i < bits.length; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    bits[i] = (s ^ (i << 13)) >>> 0;
  }
  const specials = [0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xffa00001, 0x00000001, 0x007fffff,
    0x3f808000, 0x3f818000, 0x3f80ffff, 0x477fe000, 0x477ff000, 0x477fefff, 0x38800000, 0x33800000, 0x33000000, 0x7f7fffff];
  specials.forEach((b, i) => { bits[i] = b; });
  const f = new Float32Array(bits.buffer);

  it("bf16 rounding is round-to-nearest-even and keeps NaN", () => {
    const d = new Uint16Array(f.length);
    tsKernels.f32ToBf16(f, d, 1);
    for (let i = 0; i < f.length; i += 7) expect(d[i]).toBe(bf16Spec(bits[i]!));
    expect(bf16FromF32Bits(0x7f800001)).toBe(0x7fc0);
  });

  it("f16 conversion rounds to nearest even (NaN -> 0x7E00)", () => {
    expect(f32ToF16(65504)).toBe(0x7bff);
    expect(f32ToF16(65520)).toBe(0x7c00);
    expect(f32ToF16(2 ** -24)).toBe(1);
    expect(f32ToF16(2 ** -25)).toBe(0);
    expect(f32ToF16(3 * 2 ** -25)).toBe(2);
    expect(f32ToF16(NaN)).toBe(0x7e00);
    for (let h = 0; h < 0x10000; h++) {
      const v = f16ToF32(h);
      if (!Number.isNaN(v)) expect(f32ToF16(v)).toBe(h);
    }
  });

  for (const [name, k] of impls.slice(1)) {
    it(`${name} equals the TypeScript twin bit for bit`, () => {
      const pairs: [(s: Float32Array, d: Uint16Array, t: number) => void, (s: Float32Array, d: Uint16Array, t: number) => void][] = [
        [tsKernels.f32ToBf16, k.f32ToBf16], [tsKernels.f32ToF16, k.f32ToF16]];
      for (const [ref, impl] of pairs) {
        const a = new Uint16Array(f.length);
        const b = new Uint16Array(f.length);
        ref(f, a, 1);
        impl(f, b, 2);
        expect(Buffer.from(b.buffer).equals(Buffer.from(a.buffer))).toBe(true);
      }
      const all = new Uint16Array(0x10000).map((_, i) => i);
      for (const [ref, impl] of [[tsKernels.bf16ToF32, k.bf16ToF32], [tsKernels.f16ToF32, k.f16ToF32]] as const) {
        const a = new Float32Array(all.length);
        const b = new Float32Array(all.length);
        ref(all, a, 1);
        impl(all, b, 2);
        expect(Buffer.from(b.buffer).equals(Buffer.from(a.buffer))).toBe(true);
      }
    });
  }
});

describe("backend", () => {
  it("the native addon is built and dispatches to AVX2 on this CPU", () => {
    expect(native, "run npm install to build the addon").not.toBeNull();
    if (native!.hasAvx2()) expect(native!.simdLevel()).toBe("avx2");
  });
});

/** e2m1 decoded straight from the format: sign bit 3, exponent bits 2..1 (bias 1), mantissa bit 0; no -0. */
function e2m1Spec(code: number): number {
  const e = (code >> 1) & 3;
  const m = code & 1;
  const mag = e === 0 ? m * 0.5 : (1 + m / 2) * 2 ** (e - 1);
  return code & 8 && mag !== 0 ? -mag : mag;
}

describe("packed FP4 (DeepSeek-V4 experts)", () => {
  // Every byte (two codes) under every scale byte whose values stay finite (0..252), 16 groups a row.
  const rows = 255;
  const cols = 512;
  const src = new Uint8Array((rows * cols) / 2);
  const scale = new Uint8Array((rows * cols) / 32);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < cols / 2; i++) src[(r * cols) / 2 + i] = (i + r * 7) & 255;
    for (let g = 0; g < cols / 32; g++) scale[(r * cols) / 32 + g] = (r + g * 37) % 253;
  }
  const want = new Uint16Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const b = src[(r * cols + c) >> 1]!;
      const v = e2m1Spec(c & 1 ? b >> 4 : b & 15) * 2 ** (scale[(r * cols) / 32 + (c >> 5)]! - 127);
      const bits = f32Bits(v);
      expect(f32FromBits(bits)).toBe(v); // exact in f32 ...
      expect(bits & 0xffff).toBe(0); // ... and in bf16
      want[r * cols + c] = bits >>> 16;
    }
  }
  for (const [name, k] of impls) {
    it(`${name}: fp4ToBf16 is e2m1 x 2^(e-127) exactly for every byte and scale byte (code 8 is +0)`, () => {
      const dst = new Uint16Array(rows * cols);
      k.fp4ToBf16(src, rows, cols, scale, dst, 3);
      expect(Buffer.from(dst.buffer).equals(Buffer.from(want.buffer))).toBe(true);
      expect(dst.includes(0x8000)).toBe(false);
    });
  }

  /** A [256, 256] FP4 weight whose tile scales are lossless except where `poison` puts a wide gap. */
  function tiles(poison?: { row: number; group: number; zeroCodes: boolean }) {
    const r = 256, c = 256;
    const s = new Uint8Array(r * c / 2);
    const sc = new Uint8Array(r * c / 32);
    for (let i = 0; i < s.length; i++) s[i] = (i * 131 + 17) & 255;
    for (let i = 0; i < sc.length; i++) sc[i] = 118 + (i % 15); // spread 14 in every tile: still exact
    if (poison) {
      const g = poison.row * (c / 32) + poison.group;
      sc[g] = 117; // 15 below the tile's maximum 132
      if (poison.zeroCodes) s.fill(0x88, g * 16, g * 16 + 16); // -0 codes only: nothing to lose
    }
    return { r, c, s, sc };
  }

  for (const [name, k] of impls) {
    it(`${name}: fp4ToFp8 casts every tile exactly (value = fp8 x 2^(tileMax-6-127)) and refuses a tile that would round`, () => {
      const { r, c, s, sc } = tiles();
      const dst = new Uint8Array(r * c);
      expect(k.fp4ToFp8(s, r, c, sc, dst, 2)).toBe(-1);
      for (let i = 0; i < r * c; i++) {
        const row = Math.floor(i / c), col = i % c;
        const g = row * (c / 32) + (col >> 5);
        let tmax = 0;
        const tr = row >> 7, tc = col >> 7;
        for (let rr = tr * 128; rr < tr * 128 + 128; rr++) for (let gg = tc * 4; gg < tc * 4 + 4; gg++) tmax = Math.max(tmax, sc[rr * (c / 32) + gg]!);
        const b = s[i >> 1]!;
        const fp4 = e2m1Spec(i & 1 ? b >> 4 : b & 15) * 2 ** (sc[g]! - 127);
        const fp8 = e4m3(dst[i]!) * 2 ** (tmax - 6 - 127);
        if (fp8 !== fp4 || (fp8 === 0 && dst[i] !== 0)) throw new Error(`element ${i}: ${fp8} (code ${dst[i]}) != ${fp4}`);
      }
      // Tile (1, 0) gets a group 15 below its maximum with nonzero codes: refused, naming that tile.
      const bad = tiles({ row: 200, group: 1, zeroCodes: false });
      expect(k.fp4ToFp8(bad.s, bad.r, bad.c, bad.sc, new Uint8Array(r * c), 2)).toBe(1 * 2 + 0);
      // The same gap over codes that are all zero loses nothing.
      const zero = tiles({ row: 200, group: 1, zeroCodes: true });
      expect(k.fp4ToFp8(zero.s, zero.r, zero.c, zero.sc, new Uint8Array(r * c), 2)).toBe(-1);
      // A tile whose largest scale byte is below 6 has no E8M0 tile scale (it would be negative).
      const tiny = tiles();
      tiny.sc.fill(5, 0, 8); // tile (0, 1) keeps its bytes above 6
      for (let rr = 0; rr < 128; rr++) tiny.sc.fill(5, rr * 8, rr * 8 + 4);
      expect(k.fp4ToFp8(tiny.s, tiny.r, tiny.c, tiny.sc, new Uint8Array(r * c), 2)).toBe(0);
    });
  }
});
