/**
 * Issue 8 item 6: config.json is checked against the tensor shapes before anything is written, in
 * every command. One CLI run per lie, built from the real FP8 fixture (see hostile-input.test.ts).
 */
import { join } from "node:path";
import { describe, it } from "vitest";
import { patchConfig, replaceFile, runCase, type Case, type Command } from "./hostile.js";

const cfgCase = (command: Command, patch: Record<string, unknown>, mentions: (string | RegExp)[]): Case => ({
  name: `${command}: config.json ${JSON.stringify(patch)}`,
  command,
  build: (d) => patchConfig(d, patch),
  code: "CONFIG_MISMATCH",
  mentions: ["config.json", ...mentions],
});

describe("6. config.json is checked against the tensors before anything is written, in every command", () => {
  const cases: Case[] = [
    cfgCase("to-gguf", { vocab_size: 1e18 }, ["vocab_size"]),
    cfgCase("to-gguf", { vocab_size: 1e7 }, ["vocab_size", "model.embed_tokens.weight"]),
    cfgCase("to-gguf", { hidden_size: 250 }, ["hidden_size", "model.embed_tokens.weight"]),
    cfgCase("to-gguf", { num_attention_heads: 0 }, ["num_attention_heads"]),
    cfgCase("to-gguf", { n_group: 0 }, ["n_group"]),
    cfgCase("to-gguf", { num_attention_heads: 8, num_key_value_heads: 8 }, ["num_attention_heads", "q_b_proj"]),
    cfgCase("to-gguf", { num_key_value_heads: 8 }, ["num_key_value_heads"]),
    cfgCase("to-gguf", { qk_rope_head_dim: 8 }, ["qk_rope_head_dim"]),
    cfgCase("to-gguf", { kv_lora_rank: 64 }, ["kv_lora_rank", "kv_a_proj_with_mqa"]),
    cfgCase("to-gguf", { q_lora_rank: null }, ["q_lora_rank", "q_a_proj"]),
    cfgCase("to-gguf", { v_head_dim: 16 }, ["v_head_dim"]),
    cfgCase("to-gguf", { num_hidden_layers: 3 }, ["num_hidden_layers", "model.layers.4"]),
    cfgCase("to-gguf", { num_hidden_layers: 6 }, ["num_hidden_layers", "no tensors of layer 5"]),
    cfgCase("to-gguf", { n_routed_experts: 8 }, ["n_routed_experts", "mlp.gate.weight"]),
    cfgCase("to-gguf", { num_experts_per_tok: 17 }, ["num_experts_per_tok"]),
    cfgCase("to-gguf", { first_k_dense_replace: 2 }, ["first_k_dense_replace", "layer 1"]),
    cfgCase("to-gguf", { intermediate_size: 1024 }, ["intermediate_size", "mlp.gate_proj"]),
    cfgCase("to-gguf", { moe_intermediate_size: 128 }, ["moe_intermediate_size", "experts.0"]),
    cfgCase("to-gguf", { n_shared_experts: 2 }, ["n_shared_experts", "shared_experts"]),
    cfgCase("to-demo", { hidden_size: -256 }, ["hidden_size"]),
    cfgCase("to-demo", { vocab_size: 4096 }, ["vocab_size"]),
    cfgCase("to-demo", { topk_group: 5 }, ["topk_group"]),
    cfgCase("fp8-to-bf16", { hidden_size: 250 }, ["hidden_size"]),
    cfgCase("fp8-to-bf16", { vocab_size: "2048" }, ["vocab_size"]),
    cfgCase("validate", { num_hidden_layers: 3 }, ["num_hidden_layers"]),
    cfgCase("validate", { hidden_size: 512 }, ["hidden_size"]),
  ];
  it.each(cases.map((c) => [c.name, c] as const))("%s", async (_n, c) => runCase(c));

  it("a config that is not a JSON object is refused by fp8-to-bf16 too", async () =>
    runCase({ name: "", command: "fp8-to-bf16", build: (d) => replaceFile(join(d, "config.json"), "[1, 2]"), code: "CONFIG_MISMATCH", mentions: ["config.json"] }));
});

