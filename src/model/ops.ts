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

function nativeOps(): ForwardOps | null {
  const nn = loadNative();
  if (!nn) return null;
  return {
    backend: "native",
    matmul: (x, w, y, tokens, inDim, outDim, threads, ldy) => nn.f32Matmul(x, w, y, tokens, inDim, outDim, threads, ldy ?? outDim),
    matmulStored: (x, w, y, tokens, inDim, outDim, threads, ldy) => {
      if (w.rows !== outDim || w.cols !== inDim) throw new RangeError(`stored weight is [${w.rows}, ${w.cols}], expected [${outDim}, ${inDim}]`);
      nn.ggmlMatmul(x, w.type, w.data, y, tokens, inDim, outDim, threads, ldy ?? outDim);
    },
    attention: (q, k, v, out, offsets, heads, dqk, dv, scale, threads) =>
      nn.causalAttention(q, k, v, out, offsets, heads, dqk, dv, scale, threads),
    siluMul: (g, u, threads) => nn.f32SiluMul(g, u, threads),
  };
}

let chosen: ForwardOps | undefined;

/** Native ops when the addon is built (and has the forward kernels), else the TypeScript ones. */
export function forwardOps(): ForwardOps {
  chosen ??= nativeOps() ?? tsOps;
  return chosen;
}

// ---- small element-wise ops (TypeScript; O(tokens x dim), never the bottleneck) --------------

/**
 * RMSNorm over rows of `dim`: y = x / sqrt(mean(x^2) + eps) * w (sum of squares in float64,
 * everything else rounded to float32 like F.rms_norm's float32 path). In place when y === x.
 */
export function rmsNorm(x: Float32Array, rows: number, dim: number, w: Float32Array, eps: number, y: Float32Array = x, xStride = dim, yStride = dim): Float32Array {
  const f = Math.fround;
  for (let r = 0; r < rows; r++) {
    const xo = r * xStride;
    const yo = r * yStride;
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[xo + i]! * x[xo + i]!;
    const inv = f(1 / Math.sqrt(f(f(ss / dim) + f(eps))));
    for (let i = 0; i < dim; i++) y[yo + i] = f(x[xo + i]! * inv) * w[i]!;
  }
  return y;
}

/** x += y */
export function addInto(x: Float32Array, y: Float32Array): void {
  for (let i = 0; i < x.length; i++) x[i] = x[i]! + y[i]!;
}
