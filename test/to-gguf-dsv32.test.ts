/**
 * to-gguf on DeepSeek-V3.2 (fixtures/tiny-dsv32) writes llama.cpp's deepseek32 GGUF: V3's conversion
 * plus the lightning indexer (indexer.proj forced to F32) and the MTP block kept as blk.N with its
 * nextn.* tensors (block_count = layers + 1) unless --no-mtp; --mtp keeps only that block. Quantized
 * outputs equal llama-quantize on the converted file (its listings in fixtures/llama-cpp-dsv4/, made by
 * make.ts there), and the bundled llama.cpp loads and runs them.
 */
import { join } from "node:path";
import { getLlama } from "node-llama-cpp";
import { beforeAll, describe, expect, it } from "vitest";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { GgufReader } from "../src/io/gguf-reader.js";
import { LocalSource } from "../src/io/source.js";
import { kernels } from "../src/quant/kernels.js";
import { loadNative } from "../src/quant/native.js";
import { V32_TYPES, v32Listing } from "../fixtures/llama-cpp-dsv4/make.js";
import { lacking, ROOT, tempDir } from "./helpers.js";
import { llamaQuantizeListingTests } from "./llama-cpp-dsv4.js";
import { expectProbeDistributions, probeProbabilities } from "./engine-harness.js";

const FIX = join(ROOT, "fixtures", "tiny-dsv32");
const noNative = lacking(loadNative() !== null, "the native addon did not load (quantizers)");

let dir: string;

async function convert(ftype: string, name: string, extra: Record<string, unknown> = {}): Promise<string> {
  const out = join(dir, name);
  const plan = await planToGguf(new LocalSource(FIX), out, { ftype, ...extra });
  await runToGguf(plan, { kernels: kernels(), threads: 2, force: true, skipSpaceCheck: true });
  return out;
}

async function header(path: string) {
  const r = await GgufReader.open(path);
  const out = { kvs: r.kvs.map((k) => ({ key: k.key, value: k.value })), tensors: r.tensors.map((t) => ({ name: t.name, type: t.type.name, ne: t.ne })) };
  await r.close();
  return out;
}

let bf16: string;
beforeAll(async () => {
  dir = await tempDir("deepcast-dsv32-gguf-");
  bf16 = await convert("BF16", "v32-bf16.gguf");
}, 120_000);

describe("to-gguf of DeepSeek-V3.2 (deepseek32)", () => {
  it("keeps the MTP block (block_count 5), writes the indexer and nextn KVs, the indexer tensors with indexer.proj in F32", async () => {
    const h = await header(bf16);
    const kv = (k: string) => h.kvs.find((x) => x.key === k)?.value;
    expect(kv("general.architecture")).toBe("deepseek32");
    expect(kv("deepseek32.block_count")).toBe(5);
    expect(kv("deepseek32.nextn_predict_layers")).toBe(1);
    expect([kv("deepseek32.attention.indexer.head_count"), kv("deepseek32.attention.indexer.key_length"), kv("deepseek32.attention.indexer.top_k")]).toEqual([4, 128, 32]);
    // DeepseekV32Model's KVs come after DeepseekV2Model's, before the quantization version
    const keys = h.kvs.map((x) => x.key);
    expect(keys.indexOf("deepseek32.nextn_predict_layers")).toBeGreaterThan(keys.indexOf("deepseek32.rope.dimension_count"));
    expect(keys.indexOf("deepseek32.attention.indexer.top_k")).toBeLessThan(keys.indexOf("general.quantization_version"));
    const type = (n: string) => h.tensors.find((t) => t.name === n)?.type;
    for (let b = 0; b < 5; b++) {
      expect(type(`blk.${b}.indexer.proj.weight`)).toBe("F32");
      expect(type(`blk.${b}.indexer.attn_q_b.weight`)).toBe("BF16");
      expect(type(`blk.${b}.indexer.attn_k.weight`)).toBe("BF16");
      expect(type(`blk.${b}.indexer.k_norm.weight`)).toBe("F32");
      expect(type(`blk.${b}.indexer.k_norm.bias`)).toBe("F32");
    }
    for (const n of ["eh_proj", "embed_tokens", "shared_head_head"]) expect(type(`blk.4.nextn.${n}.weight`)).toBe("BF16");
    for (const n of ["enorm", "hnorm", "shared_head_norm"]) expect(type(`blk.4.nextn.${n}.weight`)).toBe("F32");
    expect(type("blk.4.ffn_gate_exps.weight")).toBe("BF16");
    expect(h.tensors).toHaveLength(119);
  });

  it("--no-mtp drops the block and nextn_predict_layers; --mtp keeps only it plus token_embd, output_norm, output", async () => {
    const none = await header(await convert("BF16", "v32-nomtp.gguf", { mtp: "none" }));
    expect(none.kvs.find((x) => x.key === "deepseek32.block_count")?.value).toBe(4);
    expect(none.kvs.some((x) => x.key === "deepseek32.nextn_predict_layers")).toBe(false);
    expect(none.tensors.some((t) => t.name.startsWith("blk.4."))).toBe(false);
    const only = await header(await convert("BF16", "v32-mtp.gguf", { mtp: "only" }));
    expect(only.kvs.find((x) => x.key === "deepseek32.block_count")?.value).toBe(5);
    expect(only.tensors.filter((t) => !t.name.startsWith("blk.4.")).map((t) => t.name)).toEqual(["token_embd.weight", "output.weight", "output_norm.weight"]);
  });

  describe.skipIf(noNative)("quantized outputs equal llama-quantize on the converted file (fixtures/llama-cpp-dsv4 listings)", () => {
    llamaQuantizeListingTests({ input: "v32-bf16.gguf", converted: () => bf16, types: V32_TYPES, listing: (t) => v32Listing(t), convert: (t) => convert(t, `v32-${t}.gguf`) });
  });

  it("the bundled llama.cpp (node-llama-cpp) loads our deepseek32 GGUFs (BF16, Q4_K_M) and evaluates: peaked, finite distributions", async () => {
    const llama = await getLlama({ gpu: false, build: "never", skipDownload: true, logLevel: "error" as never });
    try {
      for (const file of [bf16, await convert("Q4_K_M", "v32-load-q4km.gguf")]) {
        expectProbeDistributions(await probeProbabilities(llama, file), file, 2048, { lengths: false, peaked: true });
      }
    } finally {
      await llama.dispose();
    }
  }, 180_000);
});
