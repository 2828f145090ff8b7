/**
 * llama-imatrix's statistics (llama.cpp v0.4.0 tools/imatrix/imatrix.cpp, collect_imatrix), gathered
 * from the forward pass's MatmulObserver and named by the GGUF tensor each input multiplies:
 *
 *  - per weight matrix: in_sum2[j] = Σ over the tokens that reached it of x[j]², for every input
 *    column j, and counts = how many tokens that was;
 *  - dense weights (attention projections, dense FFN, shared experts, the router `ffn_gate_inp`):
 *    one matrix, one count;
 *  - routed experts (`ffn_{gate,up,down}_exps`): one matrix and one count per expert, in_sum2
 *    [experts × columns]; an expert no token was routed to keeps zeros;
 *  - MLA as llama.cpp runs it: `attn_k_b` multiplies q_nope per head and `attn_v_b` the latent
 *    attention output per head; one flattened [heads × columns] sum and ONE count (tokens), as
 *    llama.cpp collects a 3-D MUL_MAT;
 *  - DeepSeek-V3.2 (deepseek32 names): the lightning indexer's `indexer.attn_q_b`, `indexer.attn_k`
 *    and `indexer.proj`, which deepseek32.cpp multiplies with ggml_mul_mat like any weight;
 *  - `output.weight` only with processOutput; `token_embd` never (a row lookup, not a matmul);
 *  - DeepSeek-V4 (a config with its `v4` part) by its own names: ./imatrix-names-deepseek4.ts.
 *
 * Sums are float64 here (llama.cpp adds float32 in token order; the difference is ~1e-6 relative)
 * and are written as float32.
 */
import { DeepcastError } from "../errors.js";
import { deepseek2Format, deepseek32Format, fillBid, namePattern } from "../formats/deepseek2-names.js";
import type { ModelConfig } from "./config.js";
import type { MatmulObserver } from "./forward.js";
import { deepseek4ImatrixTarget, type ImatrixTarget } from "./imatrix-names-deepseek4.js";
import { loadNative, type NativeAddon } from "../quant/native.js";

export interface ImatrixStat {
  /** Σ x² per input column, matrix after matrix: [nMat × cols]. */
  sums: Float64Array;
  /** Tokens per matrix: one count for a dense weight, one per expert for `_exps`. */
  counts: Float64Array;
  /** Input columns of one matrix (ne0 of the GGUF tensor). */
  cols: number;
}

type Target = ImatrixTarget;

interface Rule {
  re: RegExp;
  gguf: string;
  stack: boolean;
}

const rulesCache = new Map<boolean, Rule[]>();
/** The HF -> GGUF name rules of deepseek2, or of deepseek32 for a V3.2 model. */
function rules(v32: boolean): Rule[] {
  let r = rulesCache.get(v32);
  if (r) return r;
  r = (v32 ? deepseek32Format() : deepseek2Format()).tensors
    .filter((e) => (e.kind === "copy" || e.kind === "stack") && e.gguf !== undefined)
    .map((e) => ({
      re: namePattern(e.hf),
      gguf: e.gguf!,
      stack: e.kind === "stack",
    }));
  rulesCache.set(v32, r);
  return r;
}

export class ImatrixCollector implements MatmulObserver {
  /** By GGUF tensor name. */
  readonly stats = new Map<string, ImatrixStat>();
  private readonly targets = new Map<string, Target | null>();

  constructor(
    readonly config: ModelConfig,
    readonly opts: { processOutput?: boolean } = {},
  ) {}

  /** Where the input of HF weight `weight` is counted, or null (not collected). */
  private target(weight: string): Target | null {
    let t = this.targets.get(weight);
    if (t !== undefined) return t;
    t = null;
    const v4 = deepseek4ImatrixTarget(weight, this.config, this.opts.processOutput === true);
    if (v4 !== undefined) {
      t = v4;
    } else if (weight === "lm_head.weight") {
      if (this.opts.processOutput) t = { gguf: "output.weight", mat: 0, nMat: 1, perMatrixCount: false };
    } else if (!weight.endsWith(".kv_b_proj.weight")) {
      // kv_b_proj is collected as attn_k_b / attn_v_b through absorbedMla
      for (const r of rules(this.config.indexer !== undefined)) {
        const m = r.re.exec(weight);
        if (!m) continue;
        const bid = m.groups?.bid;
        const gguf = fillBid(r.gguf, bid);
        if (!gguf.startsWith("blk.")) break;
        t = r.stack
          ? { gguf, mat: Number(m.groups!.xid), nMat: this.config.nRoutedExperts, perMatrixCount: true }
          : { gguf, mat: 0, nMat: 1, perMatrixCount: false };
        break;
      }
    }
    this.targets.set(weight, t);
    return t;
  }

  private entry(name: string, cols: number, nMat: number, nCounts: number): ImatrixStat {
    let e = this.stats.get(name);
    if (!e) {
      e = { sums: new Float64Array(cols * nMat), counts: new Float64Array(nCounts), cols };
      this.stats.set(name, e);
    } else if (e.cols !== cols || e.sums.length !== cols * nMat) {
      throw new DeepcastError(`internal: inconsistent input size for ${name} (${cols} x ${nMat} vs ${e.cols} x ${e.sums.length / e.cols})`, { tensor: name });
    }
    return e;
  }

  input(weight: string, x: Float32Array, rows: number, cols: number): void {
    const t = this.target(weight);
    if (!t) return;
    if (t.sideBySide) {
      // [rows, nMat * per]: matrix m's input is columns m*per.., as the flattened sums lay them out
      if (cols % t.nMat !== 0) throw new DeepcastError(`internal: ${weight} input of ${cols} columns does not split into ${t.nMat} matrices`, { tensor: t.gguf });
      const e = this.entry(t.gguf, cols / t.nMat, t.nMat, 1);
      addSquares(e.sums, 0, x, rows, cols, cols);
      e.counts[0]! += rows;
      return;
    }
    const e = this.entry(t.gguf, cols, t.nMat, t.perMatrixCount ? t.nMat : 1);
    addSquares(e.sums, t.mat * cols, x, rows, cols, cols);
    e.counts[t.perMatrixCount ? t.mat : 0]! += rows;
  }

  absorbedMla(layer: number, qNope: Float32Array, latent: Float32Array, rows: number): void {
    const H = this.config.nHeads;
    for (const [name, x, cols] of [
      [`blk.${layer}.attn_k_b.weight`, qNope, this.config.qkNopeHeadDim],
      [`blk.${layer}.attn_v_b.weight`, latent, this.config.kvLoraRank],
    ] as const) {
      const e = this.entry(name, cols, H, 1);
      // x is [rows, H, cols]: head h of every row adds to matrix h
      addSquares(e.sums, 0, x, rows, cols * H, cols * H);
      e.counts[0]! += rows;
    }
  }

  /** llama-imatrix's chunk count: the largest count divided by the chunk size (floor). */
  chunkCount(chunkSize: number): number {
    let max = 0;
    for (const e of this.stats.values()) for (const c of e.counts) max = Math.max(max, c);
    return Math.floor(max / chunkSize);
  }
}

let nativeSquares: NativeAddon["addSquares"] | null | undefined;

/** acc[off + j] += Σ_r x[r*stride + j]², j < cols: in the addon when built (the same bytes), else addSquaresTs. */
function addSquares(acc: Float64Array, off: number, x: Float32Array, rows: number, cols: number, stride: number): void {
  if (nativeSquares === undefined) {
    const n = loadNative();
    nativeSquares = n ? n.addSquares.bind(n) : null;
  }
  if (nativeSquares) nativeSquares(acc, off, x, rows, cols, stride);
  else addSquaresTs(acc, off, x, rows, cols, stride);
}

export function addSquaresTs(acc: Float64Array, off: number, x: Float32Array, rows: number, cols: number, stride: number): void {
  for (let r = 0; r < rows; r++) {
    const o = r * stride;
    for (let j = 0; j < cols; j++) {
      const v = x[o + j]!;
      acc[off + j] = acc[off + j]! + v * v;
    }
  }
}
