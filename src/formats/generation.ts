/**
 * Which DeepSeek generation a Hugging Face checkpoint is, from its config.json (model_type,
 * architectures) or, without one, from its tensor names. Each generation's layout lives in its own
 * modules (V3: fp8.ts, deepseek2-names.ts; V3.2: the V3 layout plus the indexer; V4: block-scales.ts,
 * fp4.ts, e8m0.ts and io/hf-config-v4.ts).
 */
export type Generation = "deepseek-v3" | "deepseek-v32" | "deepseek-v4";

const BY_MODEL_TYPE: Record<string, Generation> = {
  deepseek_v2: "deepseek-v3",
  deepseek_v3: "deepseek-v3",
  deepseek_v32: "deepseek-v32",
  deepseek_v4: "deepseek-v4",
};

const BY_ARCHITECTURE: Record<string, Generation> = {
  DeepseekV2ForCausalLM: "deepseek-v3",
  DeepseekV3ForCausalLM: "deepseek-v3",
  DeepseekV32ForCausalLM: "deepseek-v32",
  DeepseekV4ForCausalLM: "deepseek-v4",
};

export function checkpointGeneration(config: Record<string, unknown> | null, names: Iterable<string>): Generation {
  const mt = config?.model_type;
  if (typeof mt === "string" && BY_MODEL_TYPE[mt]) return BY_MODEL_TYPE[mt];
  const arch = Array.isArray(config?.architectures) ? config.architectures[0] : undefined;
  if (typeof arch === "string" && BY_ARCHITECTURE[arch]) return BY_ARCHITECTURE[arch];
  let v32 = false;
  for (const n of names) {
    // V4 names carry no `model.` prefix: embed.weight, layers.N.*, mtp.N.*.
    if (n === "embed.weight" || n.startsWith("layers.") || n.startsWith("mtp.")) return "deepseek-v4";
    if (n.startsWith("model.layers.") && n.includes(".self_attn.indexer.")) v32 = true;
  }
  return v32 ? "deepseek-v32" : "deepseek-v3";
}

/** How the generation is named in messages. */
export const GENERATION_NAME: Record<Generation, string> = {
  "deepseek-v3": "DeepSeek-V3",
  "deepseek-v32": "DeepSeek-V3.2",
  "deepseek-v4": "DeepSeek-V4",
};
