/**
 * Tensor operations of the forward pass, all float32 and row-major. The hot ones (matmul,
 * attention, SwiGLU) run in the native addon (native/src/forward.cc) when it is built, else in the
 * TypeScript twins below (slow, same semantics, double accumulation).
 */
import { loadNative } from "../quant/native.js";

/** A weight [rows, cols] in its stored ggml form (type id, `rows` rows of `cols` values, ggml row layout). */
export interface StoredMatrix {
  readonly type: number;
  readonly data: Uint8Array;
  readonly rows: number;
  readonly cols: number;
}

/** A weight [out, in] for matmul: float32 row-major, or stored blocks (only with ops that have matmulStored). */
export type Matrix = Float32Array | StoredMatrix;

export interface ForwardOps {
  readonly backend: "native" | "ts";
  /** y[t*ldy + o] = sum_i x[t*in + i] * w[o*in + i]  (y = x W^T; W is [out, in]). */
  matmul(x: Float32Array, w: Float32Array, y: Float32Array, tokens: number, inDim: number, outDim: number, threads: number, ldy?: number): void;
  /**
   * matmul with W in its stored ggml form, dequantized tile by tile inside the kernel (never whole);
   * the same float32 result as matmul on the dequantized W. Absent: weights are read as float32.
   */
  matmulStored?(x: Float32Array, w: StoredMatrix, y: Float32Array, tokens: number, inDim: number, outDim: number, threads: number, ldy?: number): void;
  /**
   * Causal attention over ragged sequences: q, k [N, H, dqk], v and out [N, H, dv]; sequence b is
   * tokens offsets[b]..offsets[b+1]-1, each token sees its own sequence up to itself.
   */
  attention(q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array, offsets: Int32Array, heads: number, dqk: number, dv: number, scale: number, threads: number): void;
  /**
   * attention() that also gives cOut [N, H, C] = the same softmax weights times c [N, C] (values every
   * head shares: MLA's latent): out and cOut are the bytes of attention() over values [v_h, c].
   * Absent: the caller builds those values.
   */
  attentionLatent?(q: Float32Array, k: Float32Array, v: Float32Array, c: Float32Array, out: Float32Array, cOut: Float32Array, offsets: Int32Array,
                   heads: number, dqk: number, dv: number, scale: number, threads: number): void;
  /** g <- silu(g) * u, element-wise (silu(z) = z * sigmoid(z)). */
  siluMul(g: Float32Array, u: Float32Array, threads: number): void;
}

export const tsOps: ForwardOps = {
  backend: "ts",
  matmul(x, w, y, tokens, inDim, outDim, _threads, ldy = outDim) {
    if (x.length !== tokens * inDim) throw new RangeError(`x has ${x.length} values, expected ${tokens * inDim}`);
    if (w.length !== outDim * inDim) throw new RangeError(`w has ${w.length} values, expected ${outDim * inDim}`);
    if (tokens > 0 && y.length < (tokens - 1) * ldy + outDim) throw new RangeError("y is too small");
    for (let t = 0; t < tokens; t++) {
      const xo = t * inDim;
      for (let o = 0; o < outDim; o++) {
        const wo = o * inDim;
        let s = 0;
        for (let i = 0; i < inDim; i++) s += x[xo + i]! * w[wo + i]!;
        y[t * ldy + o] = s;
      }
    }
  },
  attention(q, k, v, out, offsets, heads, dqk, dv, scale) {
    const nseq = offsets.length - 1;
    const sc = Math.fround(scale);
    let maxLen = 0;
    for (let b = 0; b < nseq; b++) maxLen = Math.max(maxLen, offsets[b + 1]! - offsets[b]!);
    const p = new Float64Array(maxLen);
    const acc = new Float64Array(dv);
    for (let b = 0; b < nseq; b++) {
      const s0 = offsets[b]!;
      for (let i = s0; i < offsets[b + 1]!; i++) {
        for (let h = 0; h < heads; h++) {
          const qo = (i * heads + h) * dqk;
          let mx = -Infinity;
          for (let j = s0; j <= i; j++) {
            const ko = (j * heads + h) * dqk;
            let d = 0;
            for (let c = 0; c < dqk; c++) d += q[qo + c]! * k[ko + c]!;
            const s = Math.fround(Math.fround(d) * sc);
            p[j - s0] = s;
            if (s > mx) mx = s;
          }
          let sum = 0;
          for (let j = 0; j <= i - s0; j++) {
            p[j] = Math.exp(p[j]! - mx);
            sum += p[j]!;
          }
          acc.fill(0);
          for (let j = s0; j <= i; j++) {
            const pj = p[j - s0]! / sum;
            const vo = (j * heads + h) * dv;
            for (let c = 0; c < dv; c++) acc[c]! += pj * v[vo + c]!;
          }
          out.set(acc, (i * heads + h) * dv);
        }
      }
    }
  },
  siluMul(g, u) {
    if (g.length !== u.length) throw new RangeError("g and u differ in size");
    const f = Math.fround;
    for (let i = 0; i < g.length; i++) {
      const z = g[i]!;
      g[i] = f(f(z / (1 + Math.exp(-z))) * u[i]!);
    }
  },
};

/**
 * Attention of one sequence (n tokens) where query i sees only the keys t with mask[i*n + t] = 1
 * (a subset of t <= i): q, k [n, H, dqk], v and out [n, H, dv]; rows from `first` on (earlier rows of
 * `out` are left as they are); float64 accumulation as tsOps.attention.
 */
export function maskedAttention(q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array, n: number, mask: Uint8Array,
                                heads: number, dqk: number, dv: number, scale: number, first = 0): void {
  const sc = Math.fround(scale);
  const p = new Float64Array(n);
  const acc = new Float64Array(dv);
  for (let i = first; i < n; i++) {
    const m = mask.subarray(i * n, i * n + i + 1);
    for (let h = 0; h < heads; h++) {
      const qo = (i * heads + h) * dqk;
      let mx = -Infinity;
      for (let j = 0; j <= i; j++) {
        if (!m[j]) continue;
        const ko = (j * heads + h) * dqk;
        let d = 0;
        for (let c = 0; c < dqk; c++) d += q[qo + c]! * k[ko + c]!;
        const s = Math.fround(Math.fround(d) * sc);
        p[j] = s;
        if (s > mx) mx = s;
      }
      let sum = 0;
      for (let j = 0; j <= i; j++) {
        if (!m[j]) continue;
        p[j] = Math.exp(p[j]! - mx);
        sum += p[j]!;
      }
      acc.fill(0);
      for (let j = 0; j <= i; j++) {
        if (!m[j]) continue;
        const pj = p[j]! / sum;
        const vo = (j * heads + h) * dv;
        for (let c = 0; c < dv; c++) acc[c]! += pj * v[vo + c]!;
      }
      out.set(acc, (i * heads + h) * dv);
    }
  }
}

function nativeOps(): ForwardOps | null {
  const nn = loadNative();
  if (!nn) return null;
  // The pass allocates and drops activation buffers of megabytes per step: reuse freed ones instead of
  // fresh zeroed pages from the kernel (native/src/allocator.cc).
  nn.keepFreedMemory(32 * 2 ** 20);
  return {
    backend: "native",
    matmul: (x, w, y, tokens, inDim, outDim, threads, ldy) => nn.f32Matmul(x, w, y, tokens, inDim, outDim, threads, ldy ?? outDim),
    matmulStored: (x, w, y, tokens, inDim, outDim, threads, ldy) => {
      if (w.rows !== outDim || w.cols !== inDim) throw new RangeError(`stored weight is [${w.rows}, ${w.cols}], expected [${outDim}, ${inDim}]`);
      nn.ggmlMatmul(x, w.type, w.data, y, tokens, inDim, outDim, threads, ldy ?? outDim);
    },
    attention: (q, k, v, out, offsets, heads, dqk, dv, scale, threads) =>
      nn.causalAttention(q, k, v, out, offsets, heads, dqk, dv, scale, threads),
    attentionLatent: (q, k, v, c, out, cOut, offsets, heads, dqk, dv, scale, threads) =>
      nn.causalAttention(q, k, v, out, offsets, heads, dqk, dv, scale, threads, c, cOut),
    siluMul: (g, u, threads) => nn.f32SiluMul(g, u, threads),
  };
}

let chosen: ForwardOps | undefined;

/** Native ops when the addon is built (and has the forward kernels), else the TypeScript ones. */
export function forwardOps(): ForwardOps {
  chosen ??= nativeOps() ?? tsOps;
  return chosen;
}

// ---- row-wise steps: native (native/src/forward_rows.cc) when built, else these TypeScript twins;
// both give the same bytes (every operation rounded to float32, test/forward-rows.test.ts).

const f = Math.fround;

/** The TypeScript twins of the row-wise steps, exported for the test that compares them with the native ones. */
export const rowsTs = {
  /** RMSNorm over rows of `dim` (sum of squares in float64, the rest float32 as F.rms_norm). */
  rmsNorm(x: Float32Array, rows: number, dim: number, w: Float32Array, eps: number, y: Float32Array, xStride: number, yStride: number): void {
    for (let r = 0; r < rows; r++) {
      const xo = r * xStride;
      const yo = r * yStride;
      let ss = 0;
      for (let i = 0; i < dim; i++) ss += x[xo + i]! * x[xo + i]!;
      const inv = f(1 / Math.sqrt(f(f(ss / dim) + f(eps))));
      for (let i = 0; i < dim; i++) y[yo + i] = f(x[xo + i]! * inv) * w[i]!;
    }
  },
  rope(x: Float32Array, rows: number, rowStride: number, offset: number, heads: number, headStride: number, dr: number,
       pos: Int32Array, cos: Float32Array, sin: Float32Array): void {
    const half = dr / 2;
    for (let i = 0; i < rows; i++) {
      const t = pos[i]! * half;
      for (let hh = 0; hh < heads; hh++) {
        const o = i * rowStride + hh * headStride + offset;
        for (let j = 0; j < half; j++) {
          const c = cos[t + j]!;
          const s = sin[t + j]!;
          const x0 = x[o + 2 * j]!;
          const x1 = x[o + 2 * j + 1]!;
          x[o + 2 * j] = f(x0 * c) - f(x1 * s);
          x[o + 2 * j + 1] = f(x0 * s) + f(x1 * c);
        }
      }
    }
  },
  add(x: Float32Array, y: Float32Array): void {
    for (let i = 0; i < x.length; i++) x[i] = x[i]! + y[i]!;
  },
  mlaKv(kva: Float32Array, kvb: Float32Array, k: Float32Array, v: Float32Array, N: number, H: number, dn: number, dr: number, dv: number, kvr: number): void {
    const dqk = dn + dr;
    for (let i = 0; i < N; i++) {
      const pe = i * (kvr + dr) + kvr;
      for (let hh = 0; hh < H; hh++) {
        const src = (i * H + hh) * (dn + dv);
        k.set(kvb.subarray(src, src + dn), (i * H + hh) * dqk);
        k.set(kva.subarray(pe, pe + dr), (i * H + hh) * dqk + dn);
        v.set(kvb.subarray(src + dn, src + dn + dv), (i * H + hh) * dv);
      }
    }
  },
  gather(x: Float32Array, rows: Int32Array, dim: number, y: Float32Array): void {
    for (let j = 0; j < rows.length; j++) y.set(x.subarray(rows[j]! * dim, (rows[j]! + 1) * dim), j * dim);
  },
  scatterAddScaled(y: Float32Array, out: Float32Array, rows: Int32Array, scale: Float32Array, dim: number): void {
    for (let j = 0; j < rows.length; j++) {
      const yo = rows[j]! * dim;
      const oo = j * dim;
      const w = scale[j]!;
      for (let c = 0; c < dim; c++) y[yo + c] = y[yo + c]! + f(out[oo + c]! * w);
    }
  },
};

type Rows = typeof rowsTs;
let rowsChosen: Rows | undefined;

/** The native row-wise steps when the addon is built, else the TypeScript twins. */
function rowOps(): Rows {
  if (rowsChosen) return rowsChosen;
  const nn = loadNative();
  rowsChosen = !nn ? rowsTs : {
    rmsNorm: (x, rows, dim, w, eps, y, xs, ys) => nn.rmsNormRows(x, rows, dim, w, eps, y, xs, ys),
    rope: (x, rows, rs, off, heads, hs, dr, pos, cos, sin) => nn.ropeRows(x, rows, rs, off, heads, hs, dr, pos, cos, sin),
    add: (x, y) => nn.addRows(x, y),
    mlaKv: (kva, kvb, k, v, N, H, dn, dr, dv, kvr) => nn.mlaKv(kva, kvb, k, v, N, H, dn, dr, dv, kvr),
    gather: (x, rows, dim, y) => nn.gatherRows(x, rows, dim, y),
    scatterAddScaled: (y, out, rows, scale, dim) => nn.scatterAddScaled(y, out, rows, scale, dim),
  };
  return rowsChosen;
}

/**
 * RMSNorm over rows of `dim`: y = x / sqrt(mean(x^2) + eps) * w (sum of squares in float64,
 * everything else rounded to float32 like F.rms_norm's float32 path). In place when y === x.
 */
export function rmsNorm(x: Float32Array, rows: number, dim: number, w: Float32Array, eps: number, y: Float32Array = x, xStride = dim, yStride = dim): Float32Array {
  rowOps().rmsNorm(x, rows, dim, w, eps, y, xStride, yStride);
  return y;
}

/** In place: interleaved-pair RoPE on `dr` values at x[i*rowStride + h*headStride + offset ...]; row i at position pos[i]. */
export function rope(x: Float32Array, rows: number, rowStride: number, offset: number, heads: number, headStride: number, dr: number,
                     pos: Int32Array, tables: { cos: Float32Array; sin: Float32Array }): void {
  rowOps().rope(x, rows, rowStride, offset, heads, headStride, dr, pos, tables.cos, tables.sin);
}

/** x += y */
export function addInto(x: Float32Array, y: Float32Array): void {
  rowOps().add(x, y);
}

/** MLA's per-head keys and values: k[i,h] = [kvb[i,h,:dn], kva[i,kvr:kvr+dr]], v[i,h] = kvb[i,h,dn:]. */
export function mlaKv(kva: Float32Array, kvb: Float32Array, k: Float32Array, v: Float32Array, N: number, H: number, dn: number, dr: number, dv: number, kvr: number): void {
  rowOps().mlaKv(kva, kvb, k, v, N, H, dn, dr, dv, kvr);
}

/** y[j] = x[rows[j]] for rows of `dim` values. */
export function gatherRows(x: Float32Array, rows: Int32Array, dim: number, y: Float32Array = new Float32Array(rows.length * dim)): Float32Array {
  rowOps().gather(x, rows, dim, y);
  return y;
}

/** y[rows[j]] += out[j] * scale[j] (float32), j in increasing order. */
export function scatterAddScaled(y: Float32Array, out: Float32Array, rows: Int32Array, scale: Float32Array, dim: number): void {
  rowOps().scatterAddScaled(y, out, rows, scale, dim);
}

/**
 * dst[dOff + r*dStride + c] = src[sOff + r*sStride + c] for r < rows, c < len: a strided block copy
 * without a subarray per row (V8 allocates an object for each, which cost more than the copy itself).
 */
export function copyRows(dst: Float32Array, dOff: number, dStride: number, src: Float32Array, sOff: number, sStride: number, rows: number, len: number): void {
  for (let r = 0; r < rows; r++) {
    const d = dOff + r * dStride;
    const s = sOff + r * sStride;
    for (let c = 0; c < len; c++) dst[d + c] = src[s + c]!;
  }
}
