/**
 * to-demo on DeepSeek-V3.2 (tiny-dsv32) as its inference/convert.py: V3's names and splits plus the
 * lightning indexer (wq_b, wk, k_norm, weights_proj) replicated on every rank, the MTP layer dropped,
 * ModelArgs with index_n_heads / index_head_dim / index_topk. Values are checked against the
 * fp8-to-bf16 output of the same checkpoint (itself checked against an independent decode).
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";

import { planFp8ToBf16, runFp8ToBf16 } from "../src/convert/fp8-to-bf16.js";
import { planToDemo, runToDemo, type DemoDtype } from "../src/convert/to-demo.js";
import { DeepcastError } from "../src/errors.js";
import { loadCheckpoint } from "../src/io/checkpoint.js";
import { checkCheckpointConfig } from "../src/io/hf-config.js";
import { SafetensorsFile } from "../src/io/safetensors.js";
import { LocalSource } from "../src/io/source.js";
import { kernels } from "../src/quant/kernels.js";
import { ROOT, tempDir } from "./helpers.js";

const V32 = join(ROOT, "fixtures", "tiny-dsv32");

async function demo(mp: number, dtype: DemoDtype): Promise<string> {
  const ckpt = await loadCheckpoint(new LocalSource(V32));
  checkCheckpointConfig(ckpt, "full", { accept: ["deepseek-v32"] });
  const out = join(await tempDir(), `mp${mp}-${dtype}`);
  await runToDemo(ckpt, planToDemo(ckpt, { modelParallel: mp, dtype }), { out, kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true });
  return out;
}

async function tensors(file: string): Promise<Map<string, { dtype: string; shape: number[]; data: Buffer }>> {
  const st = await SafetensorsFile.open(file);
  const m = new Map<string, { dtype: string; shape: number[]; data: Buffer }>();
  for (const t of st.tensors) {
    const b = Buffer.alloc(t.end - t.begin);
    await st.read(t.name, b);
    m.set(t.name, { dtype: t.dtype, shape: t.shape, data: b });
  }
  await st.close();
  return m;
}

describe("to-demo on tiny-dsv32", () => {
  let bf16: Map<string, { dtype: string; shape: number[]; data: Buffer }>;
  beforeAll(async () => {
    const ckpt = await loadCheckpoint(new LocalSource(V32));
    const out = join(await tempDir(), "bf16");
    await runFp8ToBf16(ckpt, planFp8ToBf16(ckpt), { out, kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true });
    bf16 = new Map();
    for (const f of ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]) {
      for (const [k, v] of await tensors(join(out, f))) bf16.set(k, v);
    }
  });

  it("--model-parallel 2 --dtype bf16: the indexer whole on every rank, q_b_proj split by rows, MTP dropped, index_* ModelArgs", async () => {
    const out = await demo(2, "bf16");
    const ranks = [await tensors(join(out, "model0-mp2.safetensors")), await tensors(join(out, "model1-mp2.safetensors"))];
    for (const [r, t] of ranks.entries()) {
      expect([...t.keys()].some((n) => n.startsWith("layers.4.")), "MTP layer").toBe(false);
      for (let l = 0; l < 4; l++) {
        const hf = `model.layers.${l}.self_attn.indexer.`;
        const dm = `layers.${l}.attn.indexer.`;
        for (const [h, d] of [["wq_b.weight", "wq_b.weight"], ["wk.weight", "wk.weight"], ["k_norm.weight", "k_norm.weight"], ["k_norm.bias", "k_norm.bias"], ["weights_proj.weight", "weights_proj.weight"]]) {
          const got = t.get(dm + d)!;
          expect(got, `rank ${r} ${dm}${d}`).toBeDefined();
          expect(got.data.equals(bf16.get(hf + h)!.data), `rank ${r} ${dm}${d}`).toBe(true);
        }
        // The attention's own q_b_proj ([192, 128]) is column-parallel: rank r holds rows 96r..96r+95.
        const wq = bf16.get(`model.layers.${l}.self_attn.q_b_proj.weight`)!;
        const half = wq.data.length / 2;
        expect(t.get(`layers.${l}.attn.wq_b.weight`)!.data.equals(wq.data.subarray(r * half, (r + 1) * half))).toBe(true);
      }
    }
    const cfg = JSON.parse(await readFile(join(out, "config.json"), "utf8"));
    expect(cfg).toMatchObject({ dtype: "bf16", index_n_heads: 4, index_head_dim: 128, index_topk: 32, n_layers: 4 });
  });

  it("--dtype keep: the indexer's FP8 weights and F32 scales as stored", async () => {
    const out = await demo(1, "keep");
    const t = await tensors(join(out, "model0-mp1.safetensors"));
    const src = new Map<string, { dtype: string; shape: number[]; data: Buffer }>();
    for (const f of ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors"]) for (const [k, v] of await tensors(join(V32, f))) src.set(k, v);
    for (const [d, h] of <[string, string][]>[["layers.1.attn.indexer.wq_b.weight", "model.layers.1.self_attn.indexer.wq_b.weight"], ["layers.1.attn.indexer.wq_b.scale", "model.layers.1.self_attn.indexer.wq_b.weight_scale_inv"], ["layers.2.attn.indexer.wk.scale", "model.layers.2.self_attn.indexer.wk.weight_scale_inv"]]) {
      expect(t.get(d)!.dtype).toBe(src.get(h)!.dtype);
      expect(t.get(d)!.data.equals(src.get(h)!.data), d).toBe(true);
    }
    const cfg = JSON.parse(await readFile(join(out, "config.json"), "utf8"));
    expect(cfg).toMatchObject({ dtype: "fp8", scale_fmt: "ue8m0", index_topk: 32 });
  });

  it("the commands that do not implement V3.2's indexer refuse it; V4 is refused where only V3.2 is accepted (to-demo plans V4 with its own planner)", async () => {
    const ckpt = await loadCheckpoint(new LocalSource(V32));
    expect(() => checkCheckpointConfig(ckpt, "full")).toThrow(DeepcastError);
    expect(() => checkCheckpointConfig(ckpt, "full")).toThrow(/DeepSeek-V3\.2 checkpoints are not supported by this command yet/);
    const v4 = await loadCheckpoint(new LocalSource(join(ROOT, "fixtures", "tiny-dsv4")));
    expect(() => checkCheckpointConfig(v4, "full", { accept: ["deepseek-v32"] })).toThrow(/DeepSeek-V4 checkpoints are not supported/);
  });
});
