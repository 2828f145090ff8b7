/**
 * DeepSeek-V4's KV compressor (model.py Compressor, prefill): every complete block of `ratio` tokens
 * becomes one entry of width d. With kv = x Wkv^T and score = x Wgate^T + ape[position in block]
 * (float32, width coff*d):
 *
 *  - ratio 128 (coff 1): entry i = sum over the block's tokens p of softmax_p(score) * kv, per channel;
 *  - ratio 4 (coff 2, overlapping): the candidates of entry i are block i-1's tokens on channels [0, d)
 *    and block i's tokens on channels [d, 2d) (block -1: kv 0, score -inf); softmax over the 8, per channel.
 *
 * Then entry = RMSNorm(entry) * norm, RoPE on its last rope dims at position i*ratio, and model.py's
 * QAT simulation: the indexer's compressor rotates (Hadamard) and FP4-quantizes the entry, the
 * attention's FP8-quantizes its non-RoPE dims by blocks of 64. Entry i is visible to query position t
 * iff i < (t+1) / ratio (integer division).
 */
import { rmsNorm, rope } from "../ops.js";
import { fp4ActQuant, fp8ActQuant, hadamard } from "./qat.js";
import type { RopeTables } from "./rope.js";

const f = Math.fround;

export interface CompressorInput {
  /** [tokens, coff*d] rows of one sequence (x Wkv^T, x Wgate^T), starting at row `row0`. */
  kv: Float32Array;
  score: Float32Array;
  row0: number;
  /** Tokens of the sequence. */
  n: number;
  ratio: number;
  d: number;
  /** [ratio, coff*d] */
  ape: Float32Array;
  norm: Float32Array;
  eps: number;
  ropeDim: number;
  rope: RopeTables;
  /** null: no QAT simulation; "fp8": the attention's; "fp4": the indexer's (with the Hadamard rotation). */
  qat: "fp8" | "fp4" | null;
}

/** The compressed entries [floor(n/ratio), d] of one sequence. */
export function compress(a: CompressorInput): Float32Array {
  const { ratio, d, n } = a;
  const overlap = ratio === 4;
  const width = (overlap ? 2 : 1) * d;
  const nb = Math.floor(n / ratio);
  const out = new Float32Array(nb * d);
  const cand = overlap ? 2 * ratio : ratio;
  const s = new Float64Array(cand);
  const v = new Float64Array(cand);
  for (let i = 0; i < nb; i++) {
    for (let c = 0; c < d; c++) {
      let k = 0;
      if (overlap) {
        for (let p = 0; p < ratio; p++, k++) {
          if (i === 0) {
            s[k] = -Infinity;
            v[k] = 0;
          } else {
            const row = a.row0 + (i - 1) * ratio + p;
            s[k] = f(a.score[row * width + c]! + a.ape[p * width + c]!);
            v[k] = a.kv[row * width + c]!;
          }
        }
      }
      const off = overlap ? d : 0;
      for (let p = 0; p < ratio; p++, k++) {
        const row = a.row0 + i * ratio + p;
        s[k] = f(a.score[row * width + off + c]! + a.ape[p * width + off + c]!);
        v[k] = a.kv[row * width + off + c]!;
      }
      let mx = -Infinity;
      for (let q = 0; q < cand; q++) mx = Math.max(mx, s[q]!);
      let sum = 0;
      for (let q = 0; q < cand; q++) {
        s[q] = Math.exp(s[q]! - mx);
        sum += s[q]!;
      }
      let acc = 0;
      for (let q = 0; q < cand; q++) acc += v[q]! * f(s[q]! / sum);
      out[i * d + c] = acc;
    }
  }
  rmsNorm(out, nb, d, a.norm, a.eps);
  const pos = new Int32Array(nb);
  for (let i = 0; i < nb; i++) pos[i] = i * ratio;
  rope(out, nb, d, d - a.ropeDim, 1, 0, a.ropeDim, pos, a.rope);
  if (a.qat === "fp4") {
    hadamard(out, nb, d);
    fp4ActQuant(out, nb, d);
  } else if (a.qat === "fp8") {
    fp8ActQuant(out, nb, d, 0, d - a.ropeDim, 64);
  }
  return out;
}
