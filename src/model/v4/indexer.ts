/**
 * DeepSeek-V4's lightning indexer for the ratio-4 layers (model.py Indexer, prefill): which compressed
 * entries each query attends to. With q [heads, d] per query (wq_b of the query LoRA, RoPE, and under
 * QAT Hadamard + FP4), w [heads] = weights_proj(x) * d^-0.5 * heads^-0.5 and the indexer's own
 * compressed keys k_j [d]:
 *
 *   score[t, j] = sum_h relu(q_h . k_j) * w_h        for the visible entries j < (t+1)/4,
 *
 * and the query keeps the top min(index_topk, n/4) of them (n: its sequence's length), so every
 * visible entry once n/4 <= index_topk: then the indexer does not matter.
 */

/** The entries query t keeps, in increasing order: the `keep` best-scored of `visible` (ties: lower index first). */
export function topVisible(score: Float64Array, visible: number, keep: number): Int32Array {
  if (visible <= keep) return Int32Array.from({ length: visible }, (_, j) => j);
  const order = Int32Array.from({ length: visible }, (_, j) => j);
  order.sort((a, b) => score[b]! - score[a]! || a - b);
  return order.subarray(0, keep).sort();
}

/**
 * Scores of the visible entries for one query: q [heads, d] at qOff, w [heads] at wOff, keys [entries, d].
 */
export function indexScores(q: Float32Array, qOff: number, w: Float32Array, wOff: number, keys: Float32Array, visible: number, heads: number, d: number): Float64Array {
  const s = new Float64Array(visible);
  for (let j = 0; j < visible; j++) {
    let acc = 0;
    for (let h = 0; h < heads; h++) {
      let dot = 0;
      const qo = qOff + h * d;
      const ko = j * d;
      for (let c = 0; c < d; c++) dot += q[qo + c]! * keys[ko + c]!;
      if (dot > 0) acc += dot * w[wOff + h]!;
    }
    s[j] = acc;
  }
  return s;
}
