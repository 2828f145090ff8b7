/**
 * DeepseekV32Model.set_gguf_parameters (llama.cpp v0.4.0): after DeepseekV2Model's KVs, the MTP layer
 * count (unless --no-mtp) and the lightning indexer's head count, key length and top-k.
 */
import { DeepcastError } from "../errors.js";
import { archKey, Keys } from "../formats/gguf-keys.js";
import type { KvBuilder } from "./gguf-kvs.js";

export function deepseek32Kvs(keepMtp: boolean): { name: string; kvs: (b: KvBuilder, h: Record<string, unknown>) => void } {
  const A = "deepseek32";
  return {
    name: A,
    kvs: (b, h) => {
      const nextn = h.num_nextn_predict_layers;
      if (keepMtp && nextn !== undefined && nextn !== null) b.u32(archKey(Keys.LLM.NEXTN_PREDICT_LAYERS, A), nextn);
      for (const [key, hk] of [[Keys.Indexer.HEAD_COUNT, "index_n_heads"], [Keys.Indexer.KEY_LENGTH, "index_head_dim"], [Keys.Indexer.TOP_K, "index_topk"]] as const) {
        if (!(hk in h)) throw new DeepcastError(`config.json has no ${hk}`, { file: "config.json", code: "CONFIG_MISMATCH" });
        b.u32(archKey(key, A), h[hk]);
      }
    },
  };
}
