/**
 * The forward pass's weights from DeepSeek's inference-demo shards (`model{i}-mp{N}.safetensors`
 * plus the demo's `config.json`, i.e. ModelArgs — what `deepcast to-demo` and DeepSeek's
 * `inference/convert.py` write). HF names are renamed with convert.py's table
 * (formats/demo-names.json, through demo-plan's `demoName`) and each read reassembles the full
 * tensor from the rank files:
 *
 *  - split along dim 0 (embed, head, wq_b, wkv_b, w1, w3, ...): rank r holds rows [r*R/N, (r+1)*R/N);
 *    only the ranks holding the requested rows are read;
 *  - split along dim 1 (wo, w2): every rank holds all rows of a column block; the requested rows
 *    are read from each rank and their columns interleaved;
 *  - routed expert E: whole, in rank floor(E / (n_routed_experts / N)) under its global index;
 *  - everything else: whole in every rank (read from rank 0).
 *
 * FP8 shards (`--dtype keep`) carry `<weight>.scale` [ceil(rows/128), ceil(cols/128)] per rank,
 * split like the weight; each rank's part is dequantized with its own scales (`kernels().fp8ToF32`,
 * optionally BF16-rounded as fp8_cast_bf16.py would), which is exact because rank boundaries fall on
 * 128-block edges (to-demo refuses FP8 splits where they do not).
 */
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { DeepcastError } from "../errors.js";
import { numel } from "../io/dtypes.js";
import { SafetensorsFile, type TensorEntry } from "../io/safetensors.js";
import { demoName, routedExpertIndex } from "../formats/demo-names.js";
import { FP8_BLOCK, scaleNameOf, scaleShape } from "../formats/fp8.js";
import { fp8NanError, kernels } from "../quant/kernels.js";
import { parseModelConfig, type ModelConfig } from "./config.js";
import type { WeightSource } from "./weights.js";

/** Tensors smaller than this (elements) are converted on one thread. */
const PARALLEL_MIN = 1 << 22;
const RANK_FILE = /^model(\d+)-mp(\d+)\.safetensors$/;

export interface DemoWeightSourceOptions {
  /** Threads for dequantization (default 1). */
  threads?: number;
  /** Round each dequantized FP8 value to BF16, as fp8_cast_bf16.py does (default false: exact float32). */
  bf16Round?: boolean;
}

/** One rank's copy (or part) of a tensor. */
interface Part {
  rank: number;
  entry: TensorEntry;
  scale?: TensorEntry;
}

type Resolved =
  | { kind: "whole"; part: Part; shape: number[] }
  | { kind: "split"; dim: 0 | 1; parts: Part[]; shape: number[] };

/** inference/model.py's ModelArgs defaults (the demo's configs rely on them for max_seq_len and YaRN). */
const MODEL_ARGS_DEFAULTS: Record<string, number | string> = {
  max_seq_len: 4096 * 4,
  vocab_size: 102400, dim: 2048, inter_dim: 10944, moe_inter_dim: 1408, n_layers: 27, n_dense_layers: 1, n_heads: 16,
  n_routed_experts: 64, n_shared_experts: 2, n_activated_experts: 6, n_expert_groups: 1, n_limited_groups: 1,
  score_func: "softmax", route_scale: 1,
  q_lora_rank: 0, kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128,
  original_seq_len: 4096, rope_theta: 10000, rope_factor: 40, beta_fast: 32, beta_slow: 1, mscale: 1,
};

/**
 * The ModelConfig model.py builds from a demo config.json (ModelArgs): its defaults for absent keys,
 * YaRN (frequencies and the softmax mscale, which is ModelArgs.mscale = HF mscale_all_dim) only when
 * max_seq_len > original_seq_len, RMSNorm eps 1e-6, top-k weights normalized iff sigmoid scoring.
 */
export function demoModelConfig(args: Record<string, unknown>, file = "config.json"): ModelConfig {
  const a = (k: string): unknown => args[k] ?? MODEL_ARGS_DEFAULTS[k];
  if (args.index_topk !== undefined || args.index_n_heads !== undefined) {
    // V3.2 demo shards: their indexer names are not mapped here, and a dense pass would be wrong past index_topk
    throw new DeepcastError("demo config has DeepSeek-V3.2's index_* keys: the forward pass reads V3.2 from the HF checkpoint or its GGUF, not from demo shards", { file, code: "UNSUPPORTED" });
  }
  const maxSeqLen = a("max_seq_len");
  const orig = a("original_seq_len");
  const yarn = typeof maxSeqLen === "number" && typeof orig === "number" && maxSeqLen > orig;
  const raw: Record<string, unknown> = {
    vocab_size: a("vocab_size"),
    hidden_size: a("dim"),
    intermediate_size: a("inter_dim"),
    moe_intermediate_size: a("moe_inter_dim"),
    num_hidden_layers: a("n_layers"),
    first_k_dense_replace: a("n_dense_layers"),
    num_attention_heads: a("n_heads"),
    n_routed_experts: a("n_routed_experts"),
    n_shared_experts: a("n_shared_experts"),
    num_experts_per_tok: a("n_activated_experts"),
    n_group: a("n_expert_groups"),
    topk_group: a("n_limited_groups"),
    scoring_func: a("score_func"),
    routed_scaling_factor: a("route_scale"),
    norm_topk_prob: false,
    q_lora_rank: a("q_lora_rank"),
    kv_lora_rank: a("kv_lora_rank"),
    qk_nope_head_dim: a("qk_nope_head_dim"),
    qk_rope_head_dim: a("qk_rope_head_dim"),
    v_head_dim: a("v_head_dim"),
    rope_theta: a("rope_theta"),
    rms_norm_eps: 1e-6,
    max_position_embeddings: maxSeqLen,
    rope_scaling: yarn
      ? { type: "yarn", factor: a("rope_factor"), original_max_position_embeddings: orig, beta_fast: a("beta_fast"), beta_slow: a("beta_slow"), mscale: a("mscale"), mscale_all_dim: a("mscale") }
      : null,
  };
  try {
    return parseModelConfig(raw);
  } catch (e) {
    if (e instanceof DeepcastError) {
      throw new DeepcastError(`demo config (ModelArgs): ${e.message.replace(/^config\.json: /, "").replace(/ \(file config\.json\)$/, "")}`, { file });
    }
    throw e;
  }
}

export class DemoWeightSource implements WeightSource {
  private readonly cache = new Map<string, Resolved | null>();
  private readonly nLocalExperts: number;

  private constructor(
    readonly dir: string,
    readonly config: ModelConfig,
    /** Rank files, rank order. */
    readonly files: SafetensorsFile[],
    private readonly opts: Required<DemoWeightSourceOptions>,
  ) {
    this.nLocalExperts = config.nRoutedExperts / files.length;
  }

  /** The model-parallel degree. */
  get mp(): number {
    return this.files.length;
  }

  /** The `model{i}-mp{N}.safetensors` files of a folder: N and the names in rank order, or null when there are none. */
  static async findRankFiles(dir: string): Promise<{ mp: number; names: string[] } | null> {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (e) {
      throw new DeepcastError(`cannot read folder: ${(e as Error).message}`, { file: dir });
    }
    const byMp = new Map<number, Map<number, string>>();
    for (const n of names) {
      const m = RANK_FILE.exec(n);
      if (!m) continue;
      const mp = Number(m[2]);
      const ranks = byMp.get(mp) ?? new Map<number, string>();
      byMp.set(mp, ranks);
      ranks.set(Number(m[1]), n);
    }
    if (byMp.size === 0) return null;
    if (byMp.size > 1) {
      throw new DeepcastError(`the folder holds demo shards for several model-parallel degrees (${[...byMp.keys()].sort((x, y) => x - y).map((n) => `mp${n}`).join(", ")}): keep one set`, { file: dir });
    }
    const [mp, ranks] = [...byMp][0]!;
    const missing = Array.from({ length: mp }, (_, i) => i).filter((i) => !ranks.has(i));
    if (mp < 1 || missing.length) {
      throw new DeepcastError(`demo shards for mp${mp} are incomplete: missing ${missing.map((i) => `model${i}-mp${mp}.safetensors`).join(", ")}`, { file: dir });
    }
    if (ranks.size !== mp) throw new DeepcastError(`demo shards for mp${mp}: rank files beyond ${mp - 1}`, { file: dir });
    return { mp, names: Array.from({ length: mp }, (_, i) => ranks.get(i)!) };
  }

  static async open(dir: string, opts: DemoWeightSourceOptions = {}): Promise<DemoWeightSource> {
    const found = await DemoWeightSource.findRankFiles(dir);
    if (!found) throw new DeepcastError("no demo shards (model0-mp<N>.safetensors) in the folder", { file: dir });
    const cfgPath = join(dir, "config.json");
    let args: unknown;
    try {
      args = JSON.parse(await readFile(cfgPath, "utf8"));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new DeepcastError(code === "ENOENT" ? "demo shards need their config.json (the demo's ModelArgs)" : `cannot read config.json: ${(e as Error).message}`, { file: cfgPath });
    }
    if (!args || typeof args !== "object" || Array.isArray(args)) throw new DeepcastError("config.json is not a JSON object", { file: cfgPath });
    const config = demoModelConfig(args as Record<string, unknown>, cfgPath);
    if (config.nRoutedExperts % found.mp !== 0) {
      throw new DeepcastError(`n_routed_experts ${config.nRoutedExperts} is not divisible by the ${found.mp} ranks`, { file: cfgPath });
    }
    const files: SafetensorsFile[] = [];
    try {
      for (const n of found.names) files.push(await SafetensorsFile.open(join(dir, n)));
    } catch (e) {
      for (const f of files) await f.close();
      throw e;
    }
    return new DemoWeightSource(dir, config, files, { threads: Math.max(1, opts.threads ?? 1), bf16Round: opts.bf16Round ?? false });
  }

  get description(): string {
    return this.dir;
  }

  private part(rank: number, demo: string, scaleName: string, hfName: string): Part | undefined {
    const f = this.files[rank]!;
    const entry = f.header.byName.get(demo);
    if (!entry) return undefined;
    if (entry.dtype !== "F8_E4M3") return { rank, entry };
    const scale = f.header.byName.get(scaleName);
    if (!scale) throw new DeepcastError(`FP8 weight has no ${scaleName}`, { file: f.path, tensor: demo });
    if (entry.shape.length !== 2) throw new DeepcastError("FP8 tensor is not 2-D", { file: f.path, tensor: demo });
    const want = scaleShape(entry.shape[0]!, entry.shape[1]!);
    if (scale.dtype !== "F32" || scale.shape.length !== 2 || scale.shape[0] !== want[0] || scale.shape[1] !== want[1]) {
      throw new DeepcastError(`${scaleName} is ${scale.dtype} [${scale.shape.join(", ")}], expected F32 [${want.join(", ")}] (HF ${hfName})`, { file: f.path, tensor: scaleName });
    }
    return { rank, entry, scale };
  }

  private resolve(name: string): Resolved | null {
    let r = this.cache.get(name);
    if (r !== undefined) return r;
    r = null;
    let demo: { name: string; split: number | null };
    let scaleName: string;
    let expert: number | null;
    try {
      demo = demoName(name);
      scaleName = demoName(scaleNameOf(name)).name;
      expert = routedExpertIndex(demo.name, name);
    } catch {
      this.cache.set(name, null);
      return null;
    }
    if (expert !== null) {
      const rank = Math.floor(expert / this.nLocalExperts);
      const part = rank < this.mp ? this.part(rank, demo.name, scaleName, name) : undefined;
      if (part) r = { kind: "whole", part, shape: [...part.entry.shape] };
    } else {
      const parts = this.files.map((_, i) => this.part(i, demo.name, scaleName, name));
      const present = parts.filter((p) => p !== undefined);
      if (present.length > 0) {
        if (present.length !== parts.length) {
          throw new DeepcastError(`${demo.name} is in ${present.length} of the ${this.mp} rank files`, { file: this.dir, tensor: name });
        }
        const p0 = present[0]!;
        for (const p of present) {
          if (p.entry.dtype !== p0.entry.dtype || p.entry.shape.join() !== p0.entry.shape.join()) {
            throw new DeepcastError(`${demo.name} differs between rank 0 (${p0.entry.dtype} [${p0.entry.shape}]) and rank ${p.rank} (${p.entry.dtype} [${p.entry.shape}])`, { file: this.files[p.rank]!.path, tensor: name });
          }
        }
        const dim = demo.split;
        if (this.mp === 1 || dim === null) {
          r = { kind: "whole", part: p0, shape: [...p0.entry.shape] };
        } else {
          if (dim !== 0 && dim !== 1) throw new DeepcastError(`split along dim ${dim} is not supported`, { file: this.dir, tensor: name });
          if (dim >= p0.entry.shape.length || (dim === 1 && p0.entry.shape.length !== 2)) {
            throw new DeepcastError(`${demo.name} [${p0.entry.shape}] cannot be split along dim ${dim}`, { file: this.dir, tensor: name });
          }
          const shape = p0.entry.shape.map((d, i) => (i === dim ? d * this.mp : d));
          r = { kind: "split", dim, parts: present, shape };
        }
      }
    }
    this.cache.set(name, r);
    return r;
  }

  private where(name: string): Resolved {
    const r = this.resolve(name);
    if (!r) throw new DeepcastError("tensor not found in the demo shards", { file: this.dir, tensor: name });
    return r;
  }

  has(name: string): boolean {
    return this.resolve(name) !== null;
  }

  shape(name: string): readonly number[] {
    return this.where(name).shape;
  }

  async read(name: string, start?: number, count?: number): Promise<Float32Array> {
    const r = this.where(name);
    const shape = r.shape;
    const rows = shape.length === 0 ? 1 : shape[0]!;
    const cols = shape.length <= 1 ? 1 : numel(shape.slice(1));
    const r0 = start ?? 0;
    const n = count ?? rows - r0;
    if (!Number.isInteger(r0) || !Number.isInteger(n) || r0 < 0 || n < 0 || r0 + n > rows) {
      throw new DeepcastError(`rows ${r0}..${r0 + n} out of range for shape [${shape.join(", ")}]`, { file: this.dir, tensor: name });
    }
    if (r.kind === "whole") return this.readPart(r.part, r0, n);
    if (r.dim === 0) {
      const local = rows / this.mp;
      const out = new Float32Array(n * cols);
      const reads: Promise<void>[] = [];
      for (let k = Math.floor(r0 / local); k < this.mp && k * local < r0 + n; k++) {
        const a = Math.max(r0, k * local);
        const b = Math.min(r0 + n, (k + 1) * local);
        if (b > a) reads.push(this.readPart(r.parts[k]!, a - k * local, b - a).then((v) => out.set(v, (a - r0) * cols)));
      }
      await Promise.all(reads);
      return out;
    }
    // dim 1: rank k holds columns [k*cl, (k+1)*cl) of every row.
    const cl = cols / this.mp;
    const pieces = await Promise.all(r.parts.map((p) => this.readPart(p, r0, n)));
    const out = new Float32Array(n * cols);
    for (const [k, v] of pieces.entries()) {
      for (let i = 0; i < n; i++) out.set(v.subarray(i * cl, (i + 1) * cl), i * cols + k * cl);
    }
    return out;
  }

  /** Rows [r0, r0+n) of one rank's tensor as float32. */
  private async readPart(p: Part, r0: number, n: number): Promise<Float32Array> {
    const f = this.files[p.rank]!;
    const { entry } = p;
    const cols = entry.shape.length <= 1 ? 1 : numel(entry.shape.slice(1));
    const k = kernels();
    const threads = n * cols >= PARALLEL_MIN ? this.opts.threads : 1;
    switch (entry.dtype) {
      case "F32": {
        const out = new Float32Array(n * cols);
        await f.read(entry.name, new Uint8Array(out.buffer), r0 * cols * 4);
        return out;
      }
      case "BF16":
      case "F16": {
        const raw = new Uint16Array(n * cols);
        await f.read(entry.name, new Uint8Array(raw.buffer), r0 * cols * 2);
        const out = new Float32Array(n * cols);
        if (entry.dtype === "BF16") k.bf16ToF32(raw, out, threads);
        else k.f16ToF32(raw, out, threads);
        return out;
      }
      case "F8_E4M3": {
        const scale = p.scale!;
        const scaleCols = scale.shape[1]!;
        // Whole 128-row blocks around the requested rows, so block scales line up.
        const a = Math.floor(r0 / FP8_BLOCK) * FP8_BLOCK;
        const b = r0 + n;
        const codes = new Uint8Array((b - a) * cols);
        await f.read(entry.name, codes, a * cols);
        const sRows = Math.ceil(b / FP8_BLOCK) - a / FP8_BLOCK;
        const s = new Float32Array(sRows * scaleCols);
        await f.read(scale.name, new Uint8Array(s.buffer), (a / FP8_BLOCK) * scaleCols * 4);
        const out = new Float32Array((b - a) * cols);
        const nan = k.fp8ToF32(codes, b - a, cols, s, out, threads, this.opts.bf16Round);
        if (nan > 0) throw fp8NanError(nan, codes, a, cols, { file: f.path, tensor: entry.name });
        return a === r0 ? out : out.subarray((r0 - a) * cols);
      }
      default:
        throw new DeepcastError(`unsupported dtype ${entry.dtype} for the forward pass`, { file: f.path, tensor: entry.name });
    }
  }

  async close(): Promise<void> {
    for (const f of this.files) await f.close();
  }
}
