/** ImatrixCollector: llama-imatrix's naming, layout and counting rules on hand-made inputs. */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseModelConfig } from "../src/model/config.js";
import { ImatrixCollector } from "../src/model/imatrix-collect.js";
import { FIXTURE } from "./helpers.js";

describe("ImatrixCollector", () => {
  it("names by GGUF tensor, sums x² per column, one count per dense weight, per expert for _exps; unrouted experts stay zero", async () => {
    const cfg = parseModelConfig(JSON.parse(await readFile(join(FIXTURE, "config.json"), "utf8")));
    const c = new ImatrixCollector(cfg);
    const x = Float32Array.from({ length: 2 * cfg.dim }, (_, i) => (i % 7) - 3);
    c.input("model.layers.1.mlp.experts.3.gate_proj.weight", x, 2, cfg.dim);
    c.input("model.layers.1.mlp.experts.3.gate_proj.weight", x.subarray(0, cfg.dim), 1, cfg.dim);
    c.input("model.layers.1.mlp.gate.weight", x, 2, cfg.dim);
    c.input("model.layers.0.self_attn.kv_b_proj.weight", x, 2, cfg.dim); // collected as attn_k_b / attn_v_b instead
    c.input("lm_head.weight", x, 2, cfg.dim); // only with processOutput
    expect([...c.stats.keys()]).toEqual(["blk.1.ffn_gate_exps.weight", "blk.1.ffn_gate_inp.weight"]);
    const e = c.stats.get("blk.1.ffn_gate_exps.weight")!;
    expect(e.sums).toHaveLength(cfg.nRoutedExperts * cfg.dim);
    expect(Array.from(e.counts)).toEqual(Array.from({ length: cfg.nRoutedExperts }, (_, k) => (k === 3 ? 3 : 0)));
    const col = (j: number) => 2 * (((j % 7) - 3) ** 2) + (((cfg.dim + j) % 7) - 3) ** 2;
    expect(e.sums[3 * cfg.dim + 5]).toBe(col(5));
    expect(e.sums.subarray(0, 3 * cfg.dim).every((v) => v === 0)).toBe(true);
    expect(Array.from(c.stats.get("blk.1.ffn_gate_inp.weight")!.counts)).toEqual([2]);
    expect(c.chunkCount(2)).toBe(1);

    const H = cfg.nHeads;
    const q = Float32Array.from({ length: 3 * H * cfg.qkNopeHeadDim }, (_, i) => i % 5);
    const lat = new Float32Array(3 * H * cfg.kvLoraRank).fill(2);
    c.absorbedMla(0, q, lat, 3);
    const kb = c.stats.get("blk.0.attn_k_b.weight")!;
    expect(kb.sums).toHaveLength(H * cfg.qkNopeHeadDim);
    expect(Array.from(kb.counts)).toEqual([3]);
    expect(Array.from(c.stats.get("blk.0.attn_v_b.weight")!.sums.subarray(0, 4))).toEqual([12, 12, 12, 12]);

    const withOutput = new ImatrixCollector(cfg, { processOutput: true });
    withOutput.input("lm_head.weight", x, 2, cfg.dim);
    expect([...withOutput.stats.keys()]).toEqual(["output.weight"]);
  });
});
