/**
 * The sparse full-scale replica of deepseek-ai/DeepSeek-V3 (fixtures/dsv3-replica.ts): the real
 * tensor inventory and totals, 163 shards, an index the loader accepts, real-size files that take
 * almost no disk, and GGUF plans whose sizes agree with published llama.cpp quantizations.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdir, readdir, readFile, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import {
  DSV3_REAL,
  DSV3_SHARD_CAP,
  PINNED_SPLIT_AFTER,
  dsv3TensorList,
  planDsv3Replica,
  writeDsv3Replica,
  type ReplicaPlan,
} from "../fixtures/dsv3-replica.js";
import { planDeepseek2Gguf } from "../src/convert/gguf-plan.js";
import { planGgufOutput } from "../src/convert/gguf-output.js";
import { loadHfModelFiles } from "../src/convert/hf-model-files.js";
import { loadCheckpoint, type Checkpoint } from "../src/io/checkpoint.js";
import { safetensorsOrder } from "../src/io/dtypes.js";
import { planGgufLayout } from "../src/io/gguf-layout.js";
import { LocalSource } from "../src/io/source.js";
import { ftypeNames, planQuantMix } from "../src/quant/mix.js";
import { ROOT, tempDir } from "./helpers.js";
import { fmtBytes } from "../src/units.js";
import { planTargetGguf } from "../src/convert/target-plan.js";
import { planToGguf } from "../src/convert/to-gguf.js";
import type { Imatrix } from "../src/io/imatrix.js";
import { kernels } from "../src/quant/kernels.js";

const SHARD_RE = /^model-(\d{5})-of-(\d{6})\.safetensors$/;

describe("replica plan (no files)", () => {
  let plan: ReplicaPlan;
  beforeAll(() => {
    plan = planDsv3Replica();
  });

  it("has every real tensor: 91,991 tensors, 688,574,839,360 bytes, 45,808 FP8 weights with scales", () => {
    expect(plan.tensors).toHaveLength(DSV3_REAL.tensors);
    expect(plan.totalSize).toBe(DSV3_REAL.totalBytes);
    expect(new Set(plan.tensors.map((t) => t.name)).size).toBe(DSV3_REAL.tensors);
    const scales = plan.tensors.filter((t) => t.name.endsWith(".weight_scale_inv"));
    const fp8 = plan.tensors.filter((t) => t.dtype === "F8_E4M3");
    expect(scales).toHaveLength(DSV3_REAL.scaleTensors);
    expect(fp8).toHaveLength(DSV3_REAL.fp8Tensors);
    expect(scales.reduce((s, t) => s + t.bytes, 0)).toBe(166_161_984);
    expect(fp8.reduce((s, t) => s + t.bytes, 0)).toBe(680_571_043_840);
    const byName = new Map(plan.tensors.map((t) => [t.name, t]));
    for (const w of fp8) {
      const s = byName.get(`${w.name}_scale_inv`)!;
      expect(s.dtype).toBe("F32");
      expect(s.shape).toEqual(w.shape.map((d) => Math.ceil(d / 128)));
    }
    // Without MTP layer 61: the main model.
    const main = plan.tensors.filter((t) => !t.name.startsWith("model.layers.61."));
    expect(main).toHaveLength(DSV3_REAL.mainTensors);
    expect(main.reduce((s, t) => s + t.bytes, 0)).toBe(DSV3_REAL.mainBytes);
  });

  it("spot-checks shapes and dtypes of spec §6", () => {
    const byName = new Map(plan.tensors.map((t) => [t.name, t]));
    const check = (name: string, dtype: string, shape: number[]) => {
      expect(byName.get(name), name).toMatchObject({ dtype, shape });
    };
    check("model.embed_tokens.weight", "BF16", [129280, 7168]);
    check("lm_head.weight", "BF16", [129280, 7168]);
    check("model.norm.weight", "BF16", [7168]);
    check("model.layers.0.mlp.gate_proj.weight", "F8_E4M3", [18432, 7168]);
    check("model.layers.2.mlp.down_proj.weight_scale_inv", "F32", [56, 144]);
    check("model.layers.5.self_attn.kv_a_proj_with_mqa.weight_scale_inv", "F32", [5, 56]);
    check("model.layers.5.self_attn.q_b_proj.weight", "F8_E4M3", [24576, 1536]);
    check("model.layers.5.self_attn.kv_b_proj.weight", "F8_E4M3", [32768, 512]);
    check("model.layers.5.self_attn.o_proj.weight", "F8_E4M3", [7168, 16384]);
    check("model.layers.60.mlp.experts.255.down_proj.weight", "F8_E4M3", [7168, 2048]);
    check("model.layers.60.mlp.gate.weight", "BF16", [256, 7168]);
    check("model.layers.60.mlp.gate.e_score_correction_bias", "F32", [256]);
    check("model.layers.61.eh_proj.weight", "BF16", [7168, 14336]);
    check("model.layers.61.shared_head.head.weight", "BF16", [129280, 7168]);
    check("model.layers.61.mlp.experts.0.gate_proj.weight_scale_inv", "F32", [16, 56]);
    expect(byName.has("model.layers.2.mlp.gate.weight")).toBe(false);
    expect(byName.has("model.layers.3.mlp.gate_proj.weight")).toBe(false);
    expect(byName.has("model.layers.62.input_layernorm.weight")).toBe(false);
  });

  it("packs into 163 shards with the real names, in layer order, MTP last", () => {
    expect(plan.shards).toHaveLength(DSV3_REAL.shards);
    plan.shards.forEach((s, i) => {
      const m = SHARD_RE.exec(s.file);
      expect(m, s.file).not.toBeNull();
      expect(Number(m![1])).toBe(i + 1);
      expect(m![2]).toBe("000163");
      expect(s.dataBytes).toBeLessThanOrEqual(DSV3_SHARD_CAP);
      expect([...s.tensors].sort(safetensorsOrder)).toEqual(s.tensors);
    });
    expect(plan.shards[0]!.file).toBe("model-00001-of-000163.safetensors");
    expect(plan.shards[162]!.file).toBe("model-00163-of-000163.safetensors");
    expect(plan.shards.reduce((s, x) => s + x.dataBytes, 0)).toBe(DSV3_REAL.totalBytes);
    expect(plan.weightMap.get("model.embed_tokens.weight")).toBe("model-00001-of-000163.safetensors");
    expect(plan.weightMap.get("model.layers.61.shared_head.head.weight")).toBe("model-00163-of-000163.safetensors");
    // MTP holds the last shards (160-163 in the real checkpoint, reportedly).
    const mtpShards = new Set([...plan.weightMap].filter(([n]) => n.startsWith("model.layers.61.")).map(([, f]) => f));
    expect([...mtpShards].sort()).toEqual(["00160", "00161", "00162", "00163"].map((i) => `model-${i}-of-000163.safetensors`));
  });

  it("keeps the real straddling pair: layer 39 expert 92 gate_proj weight and scale in different shards", () => {
    const w = plan.weightMap.get(PINNED_SPLIT_AFTER)!;
    const s = plan.weightMap.get(`${PINNED_SPLIT_AFTER}_scale_inv`)!;
    expect(w).not.toBe(s);
    expect(Number(SHARD_RE.exec(s)![1])).toBe(Number(SHARD_RE.exec(w)![1]) + 1);
  });

  it("the real config.json", () => {
    const c = JSON.parse(plan.configJson) as Record<string, unknown>;
    expect(c).toMatchObject({
      architectures: ["DeepseekV3ForCausalLM"], model_type: "deepseek_v3",
      hidden_size: 7168, num_hidden_layers: 61, num_nextn_predict_layers: 1, first_k_dense_replace: 3,
      n_routed_experts: 256, num_experts_per_tok: 8, n_group: 8, topk_group: 4, n_shared_experts: 1,
      q_lora_rank: 1536, kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128,
      vocab_size: 129280, intermediate_size: 18432, moe_intermediate_size: 2048, num_attention_heads: 128,
      num_key_value_heads: 128, max_position_embeddings: 163840, rope_theta: 10000, routed_scaling_factor: 2.5,
      scoring_func: "sigmoid", topk_method: "noaux_tc", norm_topk_prob: true, rms_norm_eps: 1e-6,
      tie_word_embeddings: false, torch_dtype: "bfloat16", bos_token_id: 0, eos_token_id: 1,
      rope_scaling: { type: "yarn", factor: 40, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1, mscale: 1, mscale_all_dim: 1 },
      quantization_config: { activation_scheme: "dynamic", fmt: "e4m3", quant_method: "fp8", weight_block_size: [128, 128] },
    });
    const keys = Object.keys(c);
    expect([...keys].sort()).toEqual(keys); // transformers writes sort_keys=True
    expect(plan.configJson).toContain('"mscale": 1.0,'); // Python float formatting, verbatim
    expect(plan.configJson.endsWith("}\n")).toBe(true);
  });

  it("a smaller model with --layers: same patterns, same cap, MTP as the last layer", () => {
    const small = planDsv3Replica({ layers: 5 });
    const c = JSON.parse(small.configJson) as Record<string, unknown>;
    expect(c.num_hidden_layers).toBe(5);
    expect(c.num_nextn_predict_layers).toBe(1);
    expect(c.first_k_dense_replace).toBe(3);
    // embed + 3 dense (20) + 2 MoE (1,558) + norm + head + MTP (1,558 + 6)
    expect(small.tensors).toHaveLength(1 + 3 * 20 + 2 * 1558 + 2 + 1558 + 6);
    expect(small.tensors.some((t) => t.name === "model.layers.5.enorm.weight")).toBe(true);
    expect(small.tensors.some((t) => t.name.startsWith("model.layers.6."))).toBe(false);
    for (const s of small.shards) expect(SHARD_RE.exec(s.file)![2]).toBe(String(small.shards.length).padStart(6, "0"));
    const noMtp = planDsv3Replica({ mtp: false });
    expect(noMtp.tensors).toHaveLength(DSV3_REAL.mainTensors);
    expect(noMtp.totalSize).toBe(DSV3_REAL.mainBytes);
    expect(JSON.parse(noMtp.configJson).num_nextn_predict_layers).toBe(0);
    const tiny = dsv3TensorList({ layers: 1 });
    expect(tiny.some((t) => t.name === "model.layers.1.mlp.experts.255.up_proj.weight")).toBe(true);
    expect(JSON.parse(planDsv3Replica({ layers: 1 }).configJson).first_k_dense_replace).toBe(1);
    expect(() => dsv3TensorList({ layers: 62 })).toThrow();
  });
});

describe("replica on disk", () => {
  let dir: string;
  let plan: ReplicaPlan;
  let ckpt: Checkpoint;
  beforeAll(async () => {
    dir = join(await tempDir("deepcast-replica-"), "DeepSeek-V3");
    plan = await writeDsv3Replica(dir);
    ckpt = await loadCheckpoint(new LocalSource(dir));
  }, 60_000);

  it("loads: 163 shards, every header valid against its file size, index consistent", async () => {
    expect(ckpt.shards).toEqual(plan.shards.map((s) => s.file));
    expect(ckpt.weightMap.size).toBe(DSV3_REAL.tensors);
    expect(ckpt.index!.metadata).toEqual({ total_size: DSV3_REAL.totalBytes });
    expect(Object.keys(ckpt.index!.weight_map)).toHaveLength(DSV3_REAL.tensors);
    let count = 0;
    let bytes = 0;
    for (const s of plan.shards) {
      const h = ckpt.headers.get(s.file)!;
      expect(h.metadata).toEqual({ format: "pt" });
      expect(h.tensors.map((t) => t.name)).toEqual(s.tensors.map((t) => t.name));
      count += h.tensors.length;
      for (const t of h.tensors) bytes += t.end - t.begin;
      expect((await stat(join(dir, s.file))).size).toBe(h.dataStart + h.tensors.at(-1)!.end);
    }
    expect(count).toBe(DSV3_REAL.tensors);
    expect(bytes).toBe(DSV3_REAL.totalBytes);
    expect(ckpt.config).toEqual(JSON.parse(plan.configJson));
    expect(await readFile(join(dir, "config.json"), "utf8")).toBe(plan.configJson);
  });

  it("is sparse: 642 GiB of files in a few MB of disk", async () => {
    let apparent = 0;
    let allocated = 0;
    for (const name of await readdir(dir)) {
      const s = await stat(join(dir, name));
      apparent += s.size;
      allocated += s.blocks * 512;
    }
    expect(apparent).toBeGreaterThan(DSV3_REAL.totalBytes);
    // headers (~11.5 MB), index (~8.9 MB), tokenizer: well under 64 MB
    expect(allocated).toBeLessThan(64 * 1024 * 1024);
  });

  it("has the small files: generation config, and the tiny fixture's tokenizer as a stand-in", async () => {
    const names = await readdir(dir);
    for (const f of ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"]) expect(names).toContain(f);
    expect(JSON.parse(await readFile(join(dir, "generation_config.json"), "utf8"))).toMatchObject({ bos_token_id: 0, eos_token_id: 1, temperature: 0.3, top_p: 0.95 });
    expect(await readFile(join(dir, "tokenizer.json"))).toEqual(await readFile(join(ROOT, "fixtures/tiny-dsv3/tokenizer.json")));
  });

  it("--target-size 180G --dry-run with a made-up imatrix: within 3% below 180 GB; routed experts at ~2 bits, the rest higher", async () => {
    const src = new LocalSource(dir);
    const base = await planToGguf(src, "/nowhere/x.gguf", { ftype: "Q8_0", dryRun: true });
    const entries = new Map<string, { values: Float32Array; nMat: number }>();
    for (const t of base.output.tensors) {
      if (t.type !== t.inputType) entries.set(t.name, { values: new Float32Array((t.ne[0] ?? 1) * (t.ne[2] ?? 1)).fill(1), nMat: t.ne[2] ?? 1 });
    }
    const imatrix: Imatrix = { file: "made-up.imatrix", format: "gguf", entries, datasets: ["made-up"], chunkCount: 1, chunkSize: 512, sha256: "" };
    const p = await planTargetGguf(src, "/nowhere/x.gguf", { target: { bytes: 180e9 }, kernels: kernels(), imatrix, dryRun: true });
    const t = p.target;
    expect(p.layout.totalBytes).toBeLessThanOrEqual(180e9);
    expect(p.layout.totalBytes).toBeGreaterThanOrEqual(180e9 * 0.97);
    expect(t.seconds).toBeLessThan(180); // about 25 s on a busy 2-core machine; reading the sparse rows dominates
    // no real data: every estimate is the stand-in, and the plan says so
    expect(t.analyticTensors).toBe(t.plannedTensors);
    const bpw = (x: { bytes: number; ne: number[] }) => (8 * x.bytes) / x.ne.reduce((a, b) => a * b, 1);
    const of = (re: RegExp) => t.tensors.filter((x) => re.test(x.name));
    for (const x of of(/_exps\.weight$/)) expect(bpw(x)).toBeLessThan(2.6);
    for (const x of of(/(_shexp|attn_kv_a_mqa|attn_q_a|attn_v_b)\.weight$/)) expect(bpw(x)).toBeGreaterThan(4);
    expect(bpw(of(/^output\.weight$/)[0]!)).toBeGreaterThan(4);
  }, 300_000);

  it("plans GGUFs of the published sizes (bartowski's DeepSeek-V3-0324: Q4_K_M 404.43 GB, Q8_0 713.29 GB)", async () => {
    const model = planDeepseek2Gguf(await loadHfModelFiles(new LocalSource(dir)));
    expect(model.hparams.blockCount).toBe(61);
    // 3 dense blocks x 13 + 58 MoE blocks x 19 + token_embd, output_norm, output (kv_b split into k_b/v_b; MTP skipped)
    expect(model.tensors).toHaveLength(1086);
    const size = (ftype: string) => {
      const out = planGgufOutput(model, { ftype });
      return planGgufLayout("/nowhere/x.gguf", out.kvs, out.tensors.map((t) => ({ name: t.name, ne: t.ne, type: t.type }))).totalBytes;
    };
    // Within 0.1 GB; the remaining gap is explained in bench/full-scale-plan.ts.
    expect(Math.abs(size("Q4_K_M") / 1e9 - 404.43)).toBeLessThan(0.1);
    expect(Math.abs(size("Q8_0") / 1e9 - 713.29)).toBeLessThan(0.1);
  });

  it("chooses every ftype's per-tensor types as llama.cpp's own snapshot of DeepSeek-V3.1 (tests/snapshots/deepseek-v3.1.schema)", async () => {
    const model = planDeepseek2Gguf(await loadHfModelFiles(new LocalSource(dir)));
    const sections = parseQuantSchema(readFileSync(join(ROOT, "fixtures/llama-cpp-quant-schema/deepseek-v3.1.schema"), "utf8"));
    const input = model.tensors.map((t) => ({ name: t.name, ne: t.ne, type: "F32" }));
    const known = new Set(ftypeNames());
    const checked: string[] = [];
    for (const sec of sections) {
      if (!known.has(sec.ftype)) continue; // Q1_0, Q2_0, NVFP4: not written by deepcast
      const plan = planQuantMix(input, { ftype: sec.ftype, nLayer: 61, nExpert: 256, nHead: 128, nHeadKv: 1, dryRun: true });
      const upper = (ggmlName: string) => ggmlName.toUpperCase();
      expect(plan.ftype.defaultType.name, sec.ftype).toBe(upper(sec.defaultType));
      const differing = plan.tensors.filter((t) => t.quantizable && t.type.name !== upper(sec.defaultType)).map((t) => `${t.name} ${t.type.name}`);
      expect(differing, sec.ftype).toEqual(sec.tensors.map((l) => upper(l.split(" ")[1]!)).map((ty, i) => `${sec.tensors[i]!.split(" ")[0]} ${ty}`));
      checked.push(sec.ftype);
    }
    expect(checked).toEqual(expect.arrayContaining(["Q4_K_M", "Q2_K_S", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M",
      "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0"]));
    expect(checked).toHaveLength(ftypeNames().length);
  });

  it("the README quick start's commands run (--dry-run) on the replica as the cached deepseek-ai/DeepSeek-V3-0324, with the sizes it states", async () => {
    const readme = await readFile(join(ROOT, "README.md"), "utf8");
    const commands = [...readme.matchAll(/```sh\n([\s\S]*?)```/g)]
      .flatMap((m) => m[1]!.replace(/\\\n/g, " ").split("\n"))
      .map((l) => l.replace(/\s+#.*$/, "").trim().split(/\s+/))
      .filter((w) => w[0] === "node" && w[1] === "bin/deepcast.js" && w.includes("deepseek-ai/DeepSeek-V3-0324"));
    expect(commands.map((w) => w[2])).toEqual(["to-gguf", "to-gguf", "fp8-to-bf16", "to-demo"]);

    // the replica as the Hugging Face cache's snapshot of the repo, used offline
    const work = await tempDir("deepcast-readme-");
    const sha = "0123456789abcdef0123456789abcdef01234567";
    const repo = join(work, "hub", "models--deepseek-ai--DeepSeek-V3-0324");
    await mkdir(join(repo, "snapshots", sha), { recursive: true });
    await mkdir(join(repo, "refs"));
    await writeFile(join(repo, "refs", "main"), sha);
    for (const f of await readdir(dir)) await symlink(join(dir, f), join(repo, "snapshots", sha, f));
    // 15 copies of the eval text: over 200 chunks of 512 with the replica's stand-in tokenizer
    await writeFile(join(work, "calibration.txt"), (await readFile(join(ROOT, "fixtures", "tiny-dsv3-golden", "eval", "kjv_eval.txt"), "utf8")).repeat(15));
    const env = { ...process.env, HF_HUB_CACHE: join(work, "hub"), HF_HUB_OFFLINE: "1", HF_TOKEN: "" };
    const results: { json: { outputBytes: number; files?: unknown[] }; stderr: string }[] = [];
    for (const w of commands) {
      const r = await promisify(execFile)(process.execPath, [join(ROOT, "bin", "deepcast.js"), ...w.slice(2), "--dry-run", "--json"], { cwd: work, env, maxBuffer: 64 << 20 });
      results.push({ json: JSON.parse(r.stdout), stderr: r.stderr });
    }
    const [q4, iq2, bf16, demo] = results;
    // the figures the README states
    expect(fmtBytes(q4!.json.outputBytes)).toBe("404.49 GB");
    expect(q4!.json.files).toHaveLength(9);
    expect(fmtBytes(iq2!.json.outputBytes)).toBe("174.58 GB");
    expect(iq2!.json.files).toHaveLength(4);
    expect(iq2!.stderr).toMatch(/over 200 chunks of 512 .* in 1 pass\(es\) .*estimated peak 58\.96 GB/);
    expect(fmtBytes(bf16!.json.outputBytes)).toBe("1.37 TB");
    expect(fmtBytes(demo!.json.outputBytes)).toBe("690.24 GB");
    for (const figure of ["404.49 GB", "174.58 GB", "59.0 GB", "1.37 TB", "690.24 GB", "Q4_K_M-00001-of-00009.gguf", "IQ2_XXS-00001-of-00004.gguf"]) {
      expect(readme).toContain(figure);
    }
  }, 300_000);
});

/** The snapshot format of llama.cpp's test-quant-type-selection: `[FTYPE] default` then `name type` lines that differ. */
function parseQuantSchema(text: string): { ftype: string; defaultType: string; tensors: string[] }[] {
  const out: { ftype: string; defaultType: string; tensors: string[] }[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim() || line.startsWith("#")) continue;
    const head = /^\[(\w+)\] (\w+)$/.exec(line);
    if (head) out.push({ ftype: head[1]!, defaultType: head[2]!, tensors: [] });
    else out.at(-1)!.tensors.push(line.trim());
  }
  return out;
}

describe("CLI", () => {
  it("npx tsx fixtures/dsv3-replica.ts OUT --layers N", async () => {
    const out = join(await tempDir("deepcast-replica-cli-"), "r");
    const { stdout } = await promisify(execFile)(process.execPath, ["--import", "tsx", join(ROOT, "fixtures/dsv3-replica.ts"), out, "--layers", "2", "--no-mtp"], { cwd: ROOT });
    const plan = planDsv3Replica({ layers: 2, mtp: false });
    expect(stdout).toContain(`${plan.shards.length} shards, ${plan.tensors.length} tensors`);
    const ckpt = await loadCheckpoint(new LocalSource(out));
    expect(ckpt.weightMap.size).toBe(plan.tensors.length);
    expect(ckpt.config?.num_hidden_layers).toBe(2);
  });
});
