/**
 * The header-only full-scale replicas of DeepSeek-V4-Flash and V4-Pro (fixtures/dsv4-replica.ts) plan
 * as llama.cpp's converter writes them: the Flash deepseek4 GGUF has the published files' 1328 tensors
 * (129 MXFP4 expert tensors) and size (~156 GB), in seconds.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { DSV4_REAL, planDsv4Replica, type V4Variant } from "../fixtures/dsv4-replica.js";
import { planDeepseek4Gguf } from "../src/convert/gguf-plan-deepseek4.js";
import { planGgufOutput } from "../src/convert/gguf-output.js";
import type { HfModelFiles } from "../src/convert/hf-model-files.js";
import { planGgufLayout } from "../src/io/gguf-layout.js";
import { FIXTURE, tempDir } from "./helpers.js";
import { writeDsv4Replica } from "../fixtures/dsv4-replica.js";
import { planToGguf } from "../src/convert/to-gguf.js";
import { LocalSource } from "../src/io/source.js";
import { stat } from "node:fs/promises";
import { join } from "node:path";

function replicaFiles(variant: V4Variant): HfModelFiles {
  const plan = planDsv4Replica({ variant });
  return {
    dirName: variant === "flash" ? "DeepSeek-V4-Flash" : "DeepSeek-V4-Pro",
    config: JSON.parse(plan.configJson) as Record<string, unknown>,
    configText: plan.configJson,
    shards: plan.shards.map((s) => ({ file: s.file, tensors: s.tensors })),
    tokenizer: JSON.parse(readFileSync(`${FIXTURE}/tokenizer.json`, "utf8")),
    tokenizerConfig: JSON.parse(readFileSync(`${FIXTURE}/tokenizer_config.json`, "utf8")),
  };
}

const kvValue = (kvs: { key: string; value: unknown }[], key: string) => kvs.find((k) => k.key === key)?.value;

describe("DeepSeek-V4 full-scale replicas (headers only)", () => {
  it("V4-Flash: 46 shards of 159.6 GB, planned as the published MXFP4 GGUF: 1328 tensors (129 MXFP4), ~156 GB, 256x8.4B, in seconds", () => {
    const t0 = performance.now();
    const files = replicaFiles("flash");
    expect(files.shards).toHaveLength(DSV4_REAL.flash.shards);
    const ckptBytes = planDsv4Replica({ variant: "flash" }).totalSize;
    expect(ckptBytes / 1e9).toBeCloseTo(159.6, 1); // spec §1.3: 159.6 GB = 148.6 GiB
    const model = planDeepseek4Gguf(files);
    const out = planGgufOutput(model, { ftype: "BF16" });
    const layout = planGgufLayout("/nowhere/x.gguf", out.kvs, out.tensors.map((t) => ({ name: t.name, ne: t.ne, type: t.type })), { style: "gguf-py" });
    const seconds = (performance.now() - t0) / 1000;
    expect(layout.tensorCount).toBe(DSV4_REAL.flash.ggufTensors);
    expect(out.tensors.filter((t) => t.type.name === "MXFP4")).toHaveLength(DSV4_REAL.flash.ggufExpertTensors);
    // published: 6ms/DeepSeek-V4-Flash-MXFP4-GGUF (native FP8 layout) 156.1 GB; the spec's calculation 156.4 GB
    expect(layout.totalBytes / 1e9).toBeGreaterThan(155.5);
    expect(layout.totalBytes / 1e9).toBeLessThan(157);
    expect(kvValue(out.kvs, "general.size_label")).toBe("256x8.4B");
    expect(kvValue(out.kvs, "general.file_type")).toBe(38);
    expect(kvValue(out.kvs, "deepseek4.block_count")).toBe(43);
    expect(kvValue(out.kvs, "deepseek4.attention.compress_ratios")).toHaveLength(44);
    // every expert tensor: ne {4096|2048, 2048|4096, 256}, 17 bytes per 32 values
    for (const t of out.tensors.filter((x) => x.name.includes("_exps."))) {
      expect(t.type.name).toBe("MXFP4");
      expect(t.ne[2]).toBe(256);
    }
    expect(seconds).toBeLessThan(30);
  });

  it("V4-Pro: 1894 tensors, 384x30B", () => {
    const model = planDeepseek4Gguf(replicaFiles("pro"));
    const out = planGgufOutput(model, { ftype: "BF16" });
    expect(out.tensors).toHaveLength(DSV4_REAL.pro.ggufTensors);
    expect(kvValue(out.kvs, "general.size_label")).toBe("384x30B");
    expect(kvValue(out.kvs, "deepseek4.block_count")).toBe(61);
  });

  it("on disk: 46 sparse shards the loader validates; to-gguf's dry run plans the Flash GGUF (1328 tensors) and its MXFP4_MOE requantization in seconds", async () => {
    const dir = join(await tempDir("deepcast-dsv4-replica-"), "DeepSeek-V4-Flash");
    const plan = await writeDsv4Replica(dir, { variant: "flash" });
    const first = await stat(join(dir, plan.shards[0]!.file));
    expect(first.size).toBe(plan.shards[0]!.fileSize);
    expect(first.blocks * 512).toBeLessThan(first.size / 100); // a hole, not data
    const t0 = performance.now();
    const convert = await planToGguf(new LocalSource(dir), join(dir, "out.gguf"), { ftype: "BF16", dryRun: true });
    expect(convert.layout.tensorCount).toBe(DSV4_REAL.flash.ggufTensors);
    expect(convert.layout.totalBytes / 1e9).toBeGreaterThan(155.5);
    expect(convert.layout.totalBytes / 1e9).toBeLessThan(157);
    const mxfp4 = await planToGguf(new LocalSource(dir), join(dir, "out-mxfp4.gguf"), { ftype: "MXFP4_MOE", dryRun: true });
    // llama-quantize MXFP4_MOE: experts stay MXFP4, everything else Q8_0 (the BF16/F32 tensors shrink)
    expect(mxfp4.output.tensors.filter((t) => t.type.name === "MXFP4")).toHaveLength(129);
    expect(mxfp4.layout.totalBytes).toBeLessThan(convert.layout.totalBytes);
    expect((performance.now() - t0) / 1000).toBeLessThan(30);
  }, 120_000);
});
