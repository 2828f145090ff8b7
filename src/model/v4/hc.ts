/**
 * DeepSeek-V4's hyper-connections (model.py Block.hc_pre / hc_post, ParallelHead.hc_head; kernel.py
 * hc_split_sinkhorn). The residual is hc streams [tokens, hc, dim]. Around each sublayer F:
 *
 *   X = the hc streams flattened (hc*dim), m = (X fn^T) * rsqrt(mean(X^2) + rms_norm_eps)   [(2+hc)*hc]
 *   pre_j  = sigmoid(m_j * s0 + b_j) + eps,        post_j = 2 sigmoid(m_{hc+j} * s1 + b_{hc+j})
 *   C[j,k] = m_{2hc + j*hc + k} * s2 + b_{...};  C = softmax over k, + eps;  C /= (column sums + eps);
 *            then iters-1 times: rows /= (row sums + eps), columns /= (column sums + eps)
 *   F's input  x = sum_j pre_j stream_j;   output streams  stream'_k = post_k F(x) + sum_j C[j,k] stream_j
 *
 * The head mixes with pre only: y = sum_j (sigmoid(m_j * s + b_j) + eps) stream_j.
 */
const f = Math.fround;

export interface HcSplit {
  /** [tokens, hc] */
  pre: Float32Array;
  /** [tokens, hc] */
  post: Float32Array;
  /** [tokens, hc, hc]: comb[t, j, k] weighs stream j into output stream k. */
  comb: Float32Array;
}

const sigmoid = (z: number) => f(1 / (1 + Math.exp(-z)));

/** mixes [rows, (2+hc)*hc] (already scaled by the rsqrt) -> pre, post, comb with `iters` Sinkhorn iterations. */
export function hcSplitSinkhorn(mixes: Float32Array, rows: number, scale: Float32Array, base: Float32Array, hc: number, iters: number, eps: number): HcSplit {
  const mix = (2 + hc) * hc;
  const pre = new Float32Array(rows * hc);
  const post = new Float32Array(rows * hc);
  const comb = new Float32Array(rows * hc * hc);
  const c = new Float64Array(hc * hc);
  const sums = new Float64Array(hc);
  const colNorm = () => {
    sums.fill(0);
    for (let j = 0; j < hc; j++) for (let k = 0; k < hc; k++) sums[k] = sums[k]! + c[j * hc + k]!;
    for (let j = 0; j < hc; j++) for (let k = 0; k < hc; k++) c[j * hc + k] = f(c[j * hc + k]! / f(sums[k]! + eps));
  };
  for (let t = 0; t < rows; t++) {
    const m = mixes.subarray(t * mix, (t + 1) * mix);
    for (let j = 0; j < hc; j++) {
      pre[t * hc + j] = f(sigmoid(f(f(m[j]! * scale[0]!) + base[j]!)) + eps);
      post[t * hc + j] = f(2 * sigmoid(f(f(m[hc + j]! * scale[1]!) + base[hc + j]!)));
    }
    for (let j = 0; j < hc; j++) {
      let mx = -Infinity;
      for (let k = 0; k < hc; k++) {
        const i = 2 * hc + j * hc + k;
        c[j * hc + k] = f(f(m[i]! * scale[2]!) + base[i]!);
        mx = Math.max(mx, c[j * hc + k]!);
      }
      let s = 0;
      for (let k = 0; k < hc; k++) {
        c[j * hc + k] = f(Math.exp(c[j * hc + k]! - mx));
        s += c[j * hc + k]!;
      }
      for (let k = 0; k < hc; k++) c[j * hc + k] = f(f(c[j * hc + k]! / f(s)) + eps);
    }
    colNorm();
    for (let it = 1; it < iters; it++) {
      for (let j = 0; j < hc; j++) {
        let s = 0;
        for (let k = 0; k < hc; k++) s += c[j * hc + k]!;
        for (let k = 0; k < hc; k++) c[j * hc + k] = f(c[j * hc + k]! / f(s + eps));
      }
      colNorm();
    }
    for (let i = 0; i < hc * hc; i++) comb[t * hc * hc + i] = c[i]!;
  }
  return { pre, post, comb };
}

/** Scales each row of mixes [rows, mix] by rsqrt(mean(X^2) + eps) of its streams X [rows, width]. */
export function scaleByRms(mixes: Float32Array, X: Float32Array, rows: number, width: number, mix: number, eps: number): void {
  for (let t = 0; t < rows; t++) {
    let ss = 0;
    for (let i = t * width; i < (t + 1) * width; i++) ss += X[i]! * X[i]!;
    const r = f(1 / Math.sqrt(f(f(ss / width) + f(eps))));
    for (let i = t * mix; i < (t + 1) * mix; i++) mixes[i] = f(mixes[i]! * r);
  }
}

/** Each row of X [rows, width] times rsqrt(mean(row^2) + eps): the input hc_fn multiplies in llama.cpp. */
export function rmsRows(X: Float32Array, rows: number, width: number, eps: number): Float32Array {
  const out = new Float32Array(rows * width);
  for (let t = 0; t < rows; t++) {
    let ss = 0;
    for (let i = t * width; i < (t + 1) * width; i++) ss += X[i]! * X[i]!;
    const r = f(1 / Math.sqrt(f(f(ss / width) + f(eps))));
    for (let i = t * width; i < (t + 1) * width; i++) out[i] = f(X[i]! * r);
  }
  return out;
}

/** x[t] = sum_j w[t, j] stream_j of X [rows, hc, dim]. */
export function hcCombine(X: Float32Array, w: Float32Array, rows: number, hc: number, dim: number): Float32Array {
  const x = new Float32Array(rows * dim);
  for (let t = 0; t < rows; t++) {
    const xo = t * dim;
    for (let j = 0; j < hc; j++) {
      const wj = w[t * hc + j]!;
      const so = (t * hc + j) * dim;
      for (let i = 0; i < dim; i++) x[xo + i] = f(x[xo + i]! + f(wj * X[so + i]!));
    }
  }
  return x;
}

/** New streams [rows, hc, dim]: stream'_k = post_k F + sum_j comb[j,k] stream_j. */
export function hcPost(F: Float32Array, X: Float32Array, split: HcSplit, rows: number, hc: number, dim: number): Float32Array {
  const out = new Float32Array(rows * hc * dim);
  for (let t = 0; t < rows; t++) {
    for (let k = 0; k < hc; k++) {
      const oo = (t * hc + k) * dim;
      const pk = split.post[t * hc + k]!;
      for (let i = 0; i < dim; i++) out[oo + i] = f(pk * F[t * dim + i]!);
      for (let j = 0; j < hc; j++) {
        const cjk = split.comb[(t * hc + j) * hc + k]!;
        const so = (t * hc + j) * dim;
        for (let i = 0; i < dim; i++) out[oo + i] = f(out[oo + i]! + f(cjk * X[so + i]!));
      }
    }
  }
  return out;
}

/** The head's mixing weights: sigmoid(m * s + b) + eps per stream, m [rows, hc] already rms-scaled. */
export function hcHeadWeights(m: Float32Array, rows: number, scale: number, base: Float32Array, hc: number, eps: number): Float32Array {
  const w = new Float32Array(rows * hc);
  for (let t = 0; t < rows; t++) for (let j = 0; j < hc; j++) w[t * hc + j] = f(sigmoid(f(f(m[t * hc + j]! * scale) + base[j]!)) + eps);
  return w;
}
