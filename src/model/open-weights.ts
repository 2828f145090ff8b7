/**
 * Opens whatever the user points `validate` (or any forward-pass command) at as a WeightSource:
 *
 *  - a `.gguf` file (or any file starting with the GGUF magic): GgufWeightSource; for a split model
 *    any of its `-0000i-of-0000N.gguf` files;
 *  - a folder with `model0-mp<N>.safetensors`: DemoWeightSource (the demo's shards and config.json);
 *  - a folder holding no safetensors but one GGUF model (a single file or one split set): that GGUF;
 *  - anything else: an HF checkpoint (FP8 or BF16), a local folder or a Hugging Face repo id
 *    (through openSource).
 */
import { open as openFile, readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { DeepcastError } from "../errors.js";
import type { OnEvent } from "../events.js";
import { GGUF_MAGIC } from "../io/gguf-layout.js";
import { parseSplitPath } from "../io/gguf-reader.js";
import { checkModelConfig, hfConfigOf } from "../io/hf-config.js";
import { checkV32Indexer } from "../io/hf-config-v32.js";
import { openSource } from "../io/open-source.js";
import { isMoeLayer, type ModelConfig } from "./config.js";
import { indexerTensorNames } from "./indexer-v32.js";
import { DemoWeightSource } from "./demo-weights.js";
import { GgufWeightSource } from "./gguf-weights.js";
import { checkDeepseek4Gguf } from "./gguf-weights-deepseek4.js";
import { HfWeightSource, type WeightSource } from "./weights.js";

export type WeightsKind = "gguf" | "demo" | "hf";

export interface OpenWeightsOptions {
  /** Threads for dequantization (default 1). */
  threads?: number;
  /** FP8 sources (HF, demo --dtype keep): round each dequantized value to BF16 (default false). GGUF values are what the file holds. */
  bf16Round?: boolean;
  /** Hub: revision of a repo id. */
  revision?: string;
  /** Hub: fetch implementation (tests). */
  fetch?: typeof fetch;
  /** Hub: cache folder. */
  cacheDir?: string;
  /** Hub: download progress (src/events.ts). */
  onEvent?: OnEvent;
}

async function startsWithGgufMagic(path: string): Promise<boolean> {
  const fh = await openFile(path, "r").catch(() => null);
  if (!fh) return false;
  try {
    const b = Buffer.alloc(4);
    const { bytesRead } = await fh.read(b, 0, 4, 0);
    return bytesRead === 4 && b.readUInt32LE(0) === GGUF_MAGIC;
  } finally {
    await fh.close();
  }
}

/** The one GGUF model in a folder without safetensors (a file, or the first of one split set), or null. */
async function lonelyGguf(dir: string, names: string[]): Promise<string | null> {
  if (names.some((n) => n.endsWith(".safetensors"))) return null;
  const ggufs = names.filter((n) => n.toLowerCase().endsWith(".gguf") && !n.startsWith("."));
  if (ggufs.length === 0) return null;
  const models = new Set(ggufs.map((n) => {
    const s = parseSplitPath(n);
    return s ? `${s.prefix}\0${s.count}` : n;
  }));
  if (models.size > 1) {
    throw new DeepcastError(`the folder holds ${models.size} GGUF models (${ggufs.slice(0, 4).join(", ")}${ggufs.length > 4 ? ", ..." : ""}): give the file`, { file: dir });
  }
  return join(dir, [...ggufs].sort()[0]!);
}

/** What `spec` is, and the path to open for GGUF and demo shards. */
export async function detectWeights(spec: string): Promise<{ kind: WeightsKind; path: string }> {
  const s = await stat(spec).catch(() => null);
  if (s?.isFile()) {
    if (spec.toLowerCase().endsWith(".gguf") || (await startsWithGgufMagic(spec))) return { kind: "gguf", path: spec };
    throw new DeepcastError("input is a file but not a GGUF: give a .gguf file, a checkpoint folder, demo shards or a Hugging Face repo id", { file: spec });
  }
  if (!s && spec.toLowerCase().endsWith(".gguf")) throw new DeepcastError("GGUF file not found", { file: spec });
  if (s?.isDirectory()) {
    if (await DemoWeightSource.findRankFiles(spec)) return { kind: "demo", path: spec };
    const gguf = await lonelyGguf(spec, await readdir(spec));
    if (gguf) return { kind: "gguf", path: gguf };
  }
  return { kind: "hf", path: spec };
}

/** Opens `spec` (GGUF file, demo-shard folder, HF folder or repo id) as a WeightSource. */
export async function openWeights(spec: string, opts: OpenWeightsOptions = {}): Promise<WeightSource> {
  const { kind, path } = await detectWeights(spec);
  const threads = opts.threads ?? 1;
  switch (kind) {
    case "gguf": {
      const src = await GgufWeightSource.open(path, { threads });
      if (!src.config.v4) return checkedSource(src, path, "GGUF metadata");
      try {
        checkDeepseek4Gguf(src);
      } catch (e) {
        await src.close();
        throw e;
      }
      return src;
    }
    case "demo":
      return checkedSource(await DemoWeightSource.open(path, { threads, bf16Round: opts.bf16Round ?? false }), join(path, "config.json"), "demo config (ModelArgs)");
    case "hf": {
      const hub = {
        ...(opts.revision !== undefined ? { revision: opts.revision } : {}),
        ...(opts.fetch !== undefined ? { fetch: opts.fetch } : {}),
        ...(opts.cacheDir !== undefined ? { cacheDir: opts.cacheDir } : {}),
        ...(opts.onEvent !== undefined ? { onEvent: opts.onEvent } : {}),
      };
      return HfWeightSource.open(await openSource(spec, hub), { threads, bf16Round: opts.bf16Round ?? false });
    }
  }
}

/**
 * A GGUF's metadata or a demo config must agree with the tensors present, as an HF config.json must
 * (checkModelConfig): the layer count, the dimensions, the experts. Closes the source when not.
 */
async function checkedSource(src: WeightSource, file: string, what: string): Promise<WeightSource> {
  try {
    const c = src.config;
    const has = (n: string) => src.has(n);
    const names = forwardTensorNames(c, has).filter(has);
    // Layers beyond the configured count, which the forward pass would never read.
    for (let l = c.nLayers; l < c.nLayers + 4; l++) if (has(`model.layers.${l}.input_layernorm.weight`)) names.push(`model.layers.${l}.input_layernorm.weight`);
    const shape = (n: string) => {
      try {
        return src.has(n) ? src.shape(n) : undefined;
      } catch {
        return undefined;
      }
    };
    try {
      const tensors = { names: () => names, shape };
      checkModelConfig(hfConfigOf(c), tensors, file, "full");
      if (c.indexer) checkV32Indexer(hfConfigOf(c), tensors, file);
    } catch (e) {
      if (e instanceof DeepcastError) {
        throw new DeepcastError(`${what} disagrees with the tensors: ${e.message.replace(/^config\.json: /, "").replace(/ \(file [^)]*\)$/, "")}`, { file, code: e.code });
      }
      throw e;
    }
    return src;
  } catch (e) {
    await src.close();
    throw e;
  }
}

/**
 * The HF names of every tensor the forward pass may read for `cfg`, in the order it reads them
 * (optional ones — q_proj vs the q LoRA trio, the selection bias, lm_head under tied embeddings —
 * listed as `has` decides; without `has`, as a DeepSeek-V3 checkpoint has them).
 */
export function forwardTensorNames(cfg: ModelConfig, has: (name: string) => boolean = () => true): string[] {
  const out = ["model.embed_tokens.weight"];
  const proj = (p: string) => ["gate_proj.weight", "up_proj.weight", "down_proj.weight"].map((n) => p + n);
  for (let l = 0; l < cfg.nLayers; l++) {
    const p = `model.layers.${l}.`;
    const a = `${p}self_attn.`;
    out.push(`${p}input_layernorm.weight`);
    if (cfg.qLoraRank > 0) out.push(`${a}q_a_proj.weight`, `${a}q_a_layernorm.weight`, `${a}q_b_proj.weight`);
    else out.push(`${a}q_proj.weight`);
    out.push(`${a}kv_a_proj_with_mqa.weight`, `${a}kv_a_layernorm.weight`, `${a}kv_b_proj.weight`, `${a}o_proj.weight`);
    if (cfg.indexer) out.push(...indexerTensorNames(l));
    out.push(`${p}post_attention_layernorm.weight`);
    if (!isMoeLayer(cfg, l)) {
      out.push(...proj(`${p}mlp.`));
      continue;
    }
    out.push(`${p}mlp.gate.weight`);
    if (has(`${p}mlp.gate.e_score_correction_bias`)) out.push(`${p}mlp.gate.e_score_correction_bias`);
    for (let e = 0; e < cfg.nRoutedExperts; e++) out.push(...proj(`${p}mlp.experts.${e}.`));
    if (cfg.nSharedExperts > 0) out.push(...proj(`${p}mlp.shared_experts.`));
  }
  out.push("model.norm.weight");
  if (!cfg.tieWordEmbeddings || has("lm_head.weight")) out.push("lm_head.weight");
  return out;
}
