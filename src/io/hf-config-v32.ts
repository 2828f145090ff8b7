/**
 * DeepSeek-V3.2's addition to the V3 layout: the lightning indexer of every layer (MTP included),
 * checked against the config's index_n_heads / index_head_dim (spec §1.2). The rest of a V3.2
 * checkpoint is checked as V3 (./hf-config.ts, which calls this).
 */
import { DeepcastError } from "../errors.js";

/** The lightning indexer of DeepSeek Sparse Attention (config.json index_*). */
export interface IndexerConfig {
  /** index_n_heads */
  nHeads: number;
  /** index_head_dim (the first qk_rope_head_dim of them carry RoPE) */
  headDim: number;
  /** index_topk: keys each query attends to, at most */
  topk: number;
}

/** The indexer's hyper-parameters from a V3.2 config.json; every key is required and positive. */
export function parseV32Indexer(raw: Record<string, unknown>, file: string): IndexerConfig {
  const need = (key: string): number => {
    const v = raw[key];
    if (v === undefined || v === null) throw new DeepcastError(`config.json has no ${key} (DeepSeek-V3.2's indexer)`, { file, code: "CONFIG_MISMATCH" });
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) throw new DeepcastError(`config.json: ${key} must be a positive integer, got ${JSON.stringify(v)}`, { file, code: "CONFIG_MISMATCH" });
    return v;
  };
  const c = { nHeads: need("index_n_heads"), headDim: need("index_head_dim"), topk: need("index_topk") };
  const rope = raw.qk_rope_head_dim;
  if (typeof rope === "number" && rope > c.headDim) {
    throw new DeepcastError(`config.json: qk_rope_head_dim ${rope} is larger than index_head_dim ${c.headDim} (the indexer ropes its first qk_rope_head_dim dims)`, { file, code: "CONFIG_MISMATCH" });
  }
  return c;
}

export function checkV32Indexer(raw: Record<string, unknown>, tensors: { names(): Iterable<string>; shape(n: string): readonly number[] | undefined }, file: string): void {
  const bad = (msg: string, tensor?: string) => new DeepcastError(`config.json: ${msg}`, { file, tensor, code: "CONFIG_MISMATCH" });
  const dim = (key: string): number | undefined => {
    const v = raw[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) throw bad(`${key} must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const heads = dim("index_n_heads");
  const headDim = dim("index_head_dim");
  dim("index_topk");
  const hidden = dim("hidden_size");
  const qLora = dim("q_lora_rank");
  const expect = (name: string, want: (number | undefined)[], keys: string[]) => {
    const s = tensors.shape(name);
    if (!s) return;
    if (s.length !== want.length) throw bad(`tensor ${name} has shape ${JSON.stringify(s)}, expected ${want.length} dimension(s) (${keys.join(", ")})`, name);
    for (const [i, w] of want.entries()) {
      if (w !== undefined && s[i] !== w) throw bad(`${keys[i]} = ${w}, but tensor ${name} has ${s[i]} in dimension ${i} (shape ${JSON.stringify(s)})`, name);
    }
  };
  const layers = new Set<string>();
  for (const n of tensors.names()) {
    const m = /^(model\.layers\.\d+\.self_attn\.)indexer\./.exec(n);
    if (m) layers.add(m[1]!);
  }
  for (const a of layers) {
    const i = `${a}indexer.`;
    const hd = heads !== undefined && headDim !== undefined ? heads * headDim : undefined;
    expect(`${i}wq_b.weight`, [hd, qLora], ["index_n_heads * index_head_dim", "q_lora_rank"]);
    expect(`${i}wk.weight`, [headDim, hidden], ["index_head_dim", "hidden_size"]);
    expect(`${i}k_norm.weight`, [headDim], ["index_head_dim"]);
    expect(`${i}k_norm.bias`, [headDim], ["index_head_dim"]);
    expect(`${i}weights_proj.weight`, [heads, hidden], ["index_n_heads", "hidden_size"]);
  }
}
