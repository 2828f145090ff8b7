import { spawnSync } from "node:child_process";
import { cp, readdir, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it, vi } from "vitest";
import { planFp8ToBf16, runFp8ToBf16 } from "../src/convert/fp8-to-bf16.js";
import { MANIFEST } from "../src/convert/run-state.js";
import { planToDemo, runToDemo, type DemoDtype, type ToDemoRunOptions } from "../src/convert/to-demo.js";
import { loadCheckpoint } from "../src/io/checkpoint.js";
import { DTYPE_SIZE, numel } from "../src/io/dtypes.js";
import { SafetensorsFile, safetensorsFileSize } from "../src/io/safetensors.js";
import { partialPath } from "../src/io/write.js";
import { LocalSource } from "../src/io/source.js";
import { kernels } from "../src/quant/kernels.js";
import { writeDsv3Replica } from "../fixtures/dsv3-replica.js";
import { writeSyntheticCheckpoint } from "../fixtures/synthetic.js";
import { FIXTURE, GOLDEN, ROOT, sha256, tempDir } from "./helpers.js";

interface GoldenTensor { name: string; dtype: string; shape: number[]; data_offsets: [number, number]; sha256: string }
interface GoldenFile { file: string; bytes: number; header_metadata: unknown; tensors: GoldenTensor[] }
interface GoldenRun { command: string; returncode: number; error?: string; files?: GoldenFile[]; copied_non_weight_files?: string[] }

const listing = async (p: string) => JSON.parse(await readFile(join(GOLDEN, p), "utf8")) as GoldenRun;
const MP1_FP8 = await listing("demo-mp1/from-fp8.json");
const MP1_BF16 = await listing("demo-mp1/from-bf16.json");
const MP2_BF16 = await listing("demo-mp2/from-bf16.json");
const MP2_FP8 = await listing("demo-mp2/from-fp8.json");
const MODEL_ARGS = JSON.parse(await readFile(join(GOLDEN, "model_args.json"), "utf8")) as Record<string, unknown>;

async function toDemo(input: string, out: string, o: { mp: number; dtype: DemoDtype; nExperts?: number }, extra: Partial<ToDemoRunOptions> = {}) {
  const ckpt = await loadCheckpoint(new LocalSource(input));
  const plan = planToDemo(ckpt, { modelParallel: o.mp, dtype: o.dtype, nExperts: o.nExperts });
  return runToDemo(ckpt, plan, { out, kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true, ...extra });
}

async function hashTree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).sort()) if (f !== MANIFEST) out[f] = sha256(await readFile(join(dir, f)));
  return out;
}

/** Every rank file equals the golden listing of convert.py: names, dtypes, shapes, offsets, bytes. Returns the tensor count. */
async function expectGolden(out: string, golden: GoldenRun): Promise<number> {
  const files = (await readdir(out)).filter((f) => f.endsWith(".safetensors")).sort();
  expect(files).toEqual(golden.files!.map((g) => g.file).sort());
  let n = 0;
  for (const g of golden.files!) {
    const f = await SafetensorsFile.open(join(out, g.file));
    try {
      expect(f.header.metadata).toBe(null);
      expect(f.size).toBe(g.bytes);
      // Same tensors in the same data order (the safetensors library's layout) proves the same header.
      expect(f.tensors.map((t) => t.name)).toEqual([...g.tensors].sort((a, b) => a.data_offsets[0] - b.data_offsets[0]).map((t) => t.name));
      expect(safetensorsFileSize(f.tensors, null)).toBe(g.bytes);
      for (const gt of g.tensors) {
        const t = f.entry(gt.name);
        expect([t.dtype, t.shape, [t.begin, t.end]], gt.name).toEqual([gt.dtype, gt.shape, gt.data_offsets]);
        const buf = new Uint8Array(t.end - t.begin);
        await f.read(gt.name, buf);
        expect(sha256(buf), gt.name).toBe(gt.sha256);
        n++;
      }
    } finally {
      await f.close();
    }
  }
  return n;
}

let bf16Input: string;
beforeAll(async () => {
  // The BF16 checkpoint convert.py was fed for the from-bf16 listings is fp8_cast_bf16.py's output;
  // ours is byte-identical to it (test/fp8-to-bf16.test.ts).
  bf16Input = join(await tempDir(), "bf16");
  const ckpt = await loadCheckpoint(new LocalSource(FIXTURE));
  await runFp8ToBf16(ckpt, planFp8ToBf16(ckpt), { out: bf16Input, kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true });
});

describe("to-demo matches DeepSeek's convert.py on the tiny fixture", () => {
  it("FP8 checkpoint, --dtype keep, mp1: every tensor of demo-mp1/from-fp8; tokenizer copied; MTP dropped", async () => {
    const out = join(await tempDir(), "demo");
    const s = await toDemo(FIXTURE, out, { mp: 1, dtype: "keep" });
    expect(await expectGolden(out, MP1_FP8)).toBe(377);
    expect(s).toMatchObject({ ranks: 1, resumedFiles: 0, resumedShards: 0, tensors: 377, fp8Dequantized: 0 });
    for (const f of MP1_FP8.copied_non_weight_files!) {
      expect((await readFile(join(out, f))).equals(await readFile(join(FIXTURE, f))), f).toBe(true);
    }
    expect((await readdir(out)).sort()).toEqual([MANIFEST, "config.json", "model0-mp1.safetensors", ...MP1_FP8.copied_non_weight_files!].sort());
    const { max_batch_size: _, ...args } = MODEL_ARGS;
    expect(JSON.parse(await readFile(join(out, "config.json"), "utf8"))).toEqual({ ...args, dtype: "fp8" });
  });

  it("--dtype bf16 on the FP8 checkpoint equals convert.py on fp8_cast_bf16.py's output, mp1 and mp2; so does keep on our BF16 output", async () => {
    let n = 0;
    for (const [mp, golden] of [[1, MP1_BF16], [2, MP2_BF16]] as const) {
      const fromFp8 = join(await tempDir(), "demo");
      const s = await toDemo(FIXTURE, fromFp8, { mp, dtype: "bf16" });
      n += await expectGolden(fromFp8, golden);
      expect(s.fp8Dequantized).toBe(176);
      const fromBf16 = join(await tempDir(), "demo");
      await toDemo(bf16Input, fromBf16, { mp, dtype: "keep" });
      n += await expectGolden(fromBf16, golden);
      expect(await hashTree(fromBf16)).toEqual(await hashTree(fromFp8));
      const { max_batch_size: _, ...args } = MODEL_ARGS;
      expect(JSON.parse(await readFile(join(fromFp8, "config.json"), "utf8"))).toEqual(args);
    }
    expect(n).toBe(2 * (201 + 258));
  });

  it("refuses --model-parallel 2 with --dtype keep on the FP8 checkpoint, as convert.py does, naming the straddling block", async () => {
    expect(MP2_FP8.returncode).toBe(1);
    const out = join(await tempDir(), "demo");
    await expect(toDemo(FIXTURE, out, { mp: 2, dtype: "keep" })).rejects.toThrow(
      /cannot split FP8 weight layers\.0\.attn\.wo\.weight \[256,128\] into 2 ranks along dim 1 with --dtype keep: each rank would get 64, not a multiple of the 128-wide scale blocks, so a block would straddle ranks.*tensor model\.layers\.0\.self_attn\.o_proj\.weight/);
    expect(await readdir(out).catch(() => null)).toBeNull();
  });

  it("mp4: the rank slices put back together are the mp1 tensors; experts whole under their global index", async () => {
    const one = join(await tempDir(), "demo");
    const four = join(await tempDir(), "demo");
    await toDemo(FIXTURE, one, { mp: 1, dtype: "bf16" });
    await toDemo(FIXTURE, four, { mp: 4, dtype: "bf16" });
    const whole = await SafetensorsFile.open(join(one, "model0-mp1.safetensors"));
    const ranks = await Promise.all([0, 1, 2, 3].map((r) => SafetensorsFile.open(join(four, `model${r}-mp4.safetensors`))));
    const read = async (f: SafetensorsFile, name: string) => {
      const t = f.entry(name);
      const b = new Uint8Array(t.end - t.begin);
      await f.read(name, b);
      return b;
    };
    try {
      let split = 0;
      for (const t of whole.tensors) {
        const expert = /\.experts\.(\d+)\./.exec(t.name);
        const holders = ranks.filter((f) => f.header.byName.has(t.name));
        if (expert) {
          expect(holders).toEqual([ranks[Math.floor(Number(expert[1]) / 4)]]);
          expect(sha256(await read(holders[0]!, t.name))).toBe(sha256(await read(whole, t.name)));
          continue;
        }
        expect(holders.length, t.name).toBe(4);
        const parts = await Promise.all(ranks.map((f) => read(f, t.name)));
        const shapes = ranks.map((f) => f.entry(t.name).shape);
        const dim = shapes[0]!.findIndex((d, i) => d !== t.shape[i]);
        let rebuilt: Uint8Array;
        if (dim < 0) {
          for (const p of parts) expect(sha256(p)).toBe(sha256(parts[0]!));
          rebuilt = parts[0]!;
        } else {
          split++;
          expect(shapes[0]![dim]! * 4).toBe(t.shape[dim]);
          const inner = numel(t.shape.slice(dim + 1)) * DTYPE_SIZE[t.dtype];
          const part = shapes[0]![dim]! * inner;
          const outer = numel(t.shape.slice(0, dim));
          rebuilt = new Uint8Array(outer * part * 4);
          for (let o = 0; o < outer; o++) for (let r = 0; r < 4; r++) rebuilt.set(parts[r]!.subarray(o * part, (o + 1) * part), (o * 4 + r) * part);
        }
        expect(sha256(rebuilt), t.name).toBe(sha256(await read(whole, t.name)));
      }
      // per layer wq_b, wkv_b, wo (+ w1, w2, w3 dense or shared), embed, head
      expect(split).toBe(4 * 3 + 4 * 3 + 2);
    } finally {
      await whole.close();
      for (const f of ranks) await f.close();
    }
  });

  it("reads every input tensor once, in full, and never the MTP layer", async () => {
    const spy = vi.spyOn(SafetensorsFile.prototype, "read");
    try {
      await toDemo(FIXTURE, join(await tempDir(), "demo"), { mp: 2, dtype: "bf16" });
      const bytes = new Map<string, number>();
      for (const [name, dst] of spy.mock.calls) bytes.set(name, (bytes.get(name) ?? 0) + dst.length);
      const ckpt = await loadCheckpoint(new LocalSource(FIXTURE));
      let n = 0;
      for (const [name, file] of ckpt.weightMap) {
        const e = ckpt.headers.get(file)!.byName.get(name)!;
        const mtp = name.startsWith("model.layers.4.");
        expect(bytes.get(name) ?? 0, name).toBe(mtp ? 0 : e.end - e.begin);
        if (!mtp) n++;
      }
      expect(n).toBe(377);
      expect(bytes.size).toBe(377);
    } finally {
      spy.mockRestore();
    }
  });
});

describe("to-demo resume, atomic output, refusals", () => {
  it("continues after a crash from the last input shard made durable, and ends byte-identical", async () => {
    const ref = join(await tempDir(), "demo");
    await toDemo(FIXTURE, ref, { mp: 2, dtype: "bf16" });
    const out = join(await tempDir(), "demo");
    let shards = 0;
    let chunks = 0;
    await expect(toDemo(FIXTURE, out, { mp: 2, dtype: "bf16" }, {
      chunkBytes: 64 * 1024,
      onEvent: (e) => {
        if (e.kind === "shard") shards++;
        if (e.kind === "bytes" && shards === 1 && ++chunks === 20) throw new Error("simulated crash");
      },
    })).rejects.toThrow("simulated crash");
    const left = await readdir(out);
    expect(left.filter((f) => f.endsWith(".safetensors"))).toEqual([]);
    expect(JSON.parse(await readFile(join(out, MANIFEST), "utf8")).progress).toEqual({ shardsDone: 1 });
    for (const r of [0, 1]) expect(left).toContain(partialPath(`model${r}-mp2.safetensors`));

    const resumed = await toDemo(FIXTURE, out, { mp: 2, dtype: "bf16" }, { threads: 1 });
    expect(resumed).toMatchObject({ resumedShards: 1, resumedFiles: 0 });
    expect(await hashTree(out)).toEqual(await hashTree(ref));
    expect((await readdir(out)).some((f) => f.endsWith(".partial"))).toBe(false);
    // A finished run reruns as a no-op.
    expect(await toDemo(FIXTURE, out, { mp: 2, dtype: "bf16" })).toMatchObject({ resumedFiles: 2, tensors: 0, bytesRead: 0 });
  });

  it("starts over when a temporary rank file was damaged, and removes its temporary files after a failure with nothing durable", async () => {
    const ref = join(await tempDir(), "demo");
    await toDemo(FIXTURE, ref, { mp: 2, dtype: "bf16" });
    const out = join(await tempDir(), "demo");
    let shards = 0;
    const crash: Partial<ToDemoRunOptions> = { onEvent: (e) => { if (e.kind === "shard") shards++; if (e.kind === "bytes" && shards === 1) throw new Error("simulated crash"); } };
    await expect(toDemo(FIXTURE, out, { mp: 2, dtype: "bf16" }, crash)).rejects.toThrow("simulated crash");
    await truncate(join(out, partialPath("model1-mp2.safetensors")), 100);
    expect(await toDemo(FIXTURE, out, { mp: 2, dtype: "bf16" })).toMatchObject({ resumedShards: 0 });
    expect(await hashTree(out)).toEqual(await hashTree(ref));

    const out2 = join(await tempDir(), "demo");
    await expect(toDemo(FIXTURE, out2, { mp: 2, dtype: "bf16" }, { onEvent: (e) => { if (e.kind === "bytes") throw new Error("early crash"); } })).rejects.toThrow("early crash");
    expect((await readdir(out2)).filter((f) => f !== MANIFEST)).toEqual([]);
  });

  it("refuses other options on a resume, an unrelated output folder and the input folder", async () => {
    const out = join(await tempDir(), "demo");
    await toDemo(FIXTURE, out, { mp: 1, dtype: "bf16" });
    await expect(toDemo(FIXTURE, out, { mp: 2, dtype: "bf16" })).rejects.toThrow(/different inputs or options/);
    await expect(toDemo(FIXTURE, out, { mp: 2, dtype: "bf16" }, { force: true })).resolves.toBeTruthy();
    const d = await tempDir();
    await writeFile(join(d, "keep.txt"), "mine");
    await expect(toDemo(FIXTURE, d, { mp: 1, dtype: "keep" })).rejects.toThrow(/not empty; pass --force/);
    await expect(toDemo(FIXTURE, FIXTURE, { mp: 1, dtype: "keep" }, { force: true })).rejects.toThrow(/input folder/);
  });

  async function withConfig(patch: Record<string, unknown> | null): Promise<string> {
    const d = join(await tempDir(), "in");
    await cp(FIXTURE, d, { recursive: true });
    if (patch === null) await rm(join(d, "config.json"));
    else {
      const cfg = JSON.parse(await readFile(join(d, "config.json"), "utf8"));
      await writeFile(join(d, "config.json"), JSON.stringify({ ...cfg, ...patch }));
    }
    return d;
  }

  it("impossible splits and mismatched expert counts fail at planning with the reason and the tensor", async () => {
    const plan = async (input: string, mp: number, dtype: DemoDtype, nExperts?: number) =>
      planToDemo(await loadCheckpoint(new LocalSource(input)), { modelParallel: mp, dtype, nExperts });
    await expect(plan(FIXTURE, 3, "bf16")).rejects.toThrow(/cannot give 16 routed experts to 3 ranks/);
    await expect(plan(FIXTURE, 8, "bf16")).rejects.toThrow(/cannot split 4 attention heads over 8 ranks/);
    await expect(plan(FIXTURE, 2, "bf16", 32)).rejects.toThrow(/--n-experts 32 disagrees with n_routed_experts 16/);
    await expect(plan(FIXTURE, 4, "keep")).rejects.toThrow(/cannot split FP8 weight layers\.0\.attn\.wkv_b\.weight \[256,128\] into 4 ranks along dim 0.*straddle/);
    await expect(plan(await withConfig({ n_routed_experts: 48, num_attention_heads: 3 }), 3, "bf16")).rejects.toThrow(
      /cannot split embed\.weight \[2048,256\] into 3 ranks along dim 0: dim 0 has 2048, not divisible by 3.*tensor model\.embed_tokens\.weight/);
    await expect(plan(await withConfig({ n_routed_experts: 8 }), 1, "keep")).rejects.toThrow(
      /routed expert 8 is outside the 8 experts.*tensor model\.layers\.1\.mlp\.experts\.8\./);
    await expect(plan(await withConfig(null), 1, "keep")).rejects.toThrow(/no config\.json/);
    await expect(plan(await withConfig({ rope_scaling: { type: "linear", factor: 2 } }), 1, "keep")).rejects.toThrow(/YaRN only/);
  });
});

describe("to-demo at full scale and under a memory watch", () => {
  it("plans the 671B layout (sparse replica): mp16 FP8 as DeepSeek's README does it, config_671B, mp32 refused for FP8 only", async () => {
    const dir = join(await tempDir(), "dsv3");
    await writeDsv3Replica(dir);
    const ckpt = await loadCheckpoint(new LocalSource(dir));
    const plan = planToDemo(ckpt, { modelParallel: 16, dtype: "keep" });
    expect(plan.nExperts).toBe(256);
    expect(plan.inputs.length).toBe(90_427);
    expect(plan.skippedMtp).toBe(1_564);
    expect(plan.inputBytes).toBe(673_150_611_808);
    expect(plan.ranks.map((r) => r.name)).toEqual(Array.from({ length: 16 }, (_, i) => `model${i}-mp16.safetensors`));
    // 1,339 tensors outside the routed experts on every rank + 16 experts x 58 MoE layers x (3 weights + 3 scales).
    for (const r of plan.ranks) expect(r.tensors.length).toBe(1_339 + 16 * 58 * 6);
    const r1 = new Set(plan.ranks[1]!.tensors.map((t) => t.name));
    expect(r1.has("layers.3.ffn.experts.16.w1.weight") && r1.has("layers.60.ffn.experts.31.w2.scale")).toBe(true);
    expect(r1.has("layers.3.ffn.experts.15.w1.weight") || r1.has("layers.3.ffn.experts.32.w1.weight")).toBe(false);
    const spec = (n: string) => plan.ranks[5]!.tensors.find((t) => t.name === n);
    expect(spec("embed.weight")).toEqual({ name: "embed.weight", dtype: "BF16", shape: [8080, 7168] });
    expect(spec("layers.0.attn.wo.weight")).toEqual({ name: "layers.0.attn.wo.weight", dtype: "F8_E4M3", shape: [7168, 1024] });
    expect(spec("layers.0.attn.wo.scale")).toEqual({ name: "layers.0.attn.wo.scale", dtype: "F32", shape: [56, 8] });
    expect(spec("layers.5.ffn.shared_experts.w1.scale")).toEqual({ name: "layers.5.ffn.shared_experts.w1.scale", dtype: "F32", shape: [1, 56] });
    // inference/configs/config_671B.json, plus the YaRN fields at ModelArgs' defaults (max_seq_len 16384 keeps YaRN on).
    expect(plan.modelArgs).toEqual({
      vocab_size: 129280, dim: 7168, inter_dim: 18432, moe_inter_dim: 2048, n_layers: 61, n_dense_layers: 3, n_heads: 128,
      n_routed_experts: 256, n_shared_experts: 1, n_activated_experts: 8, n_expert_groups: 8, n_limited_groups: 4,
      route_scale: 2.5, score_func: "sigmoid", q_lora_rank: 1536, kv_lora_rank: 512, qk_nope_head_dim: 128,
      qk_rope_head_dim: 64, v_head_dim: 128, dtype: "fp8",
      max_seq_len: 16384, original_seq_len: 4096, rope_theta: 10000, rope_factor: 40, beta_fast: 32, beta_slow: 1, mscale: 1,
    });
    expect(() => planToDemo(ckpt, { modelParallel: 32, dtype: "keep" })).toThrow(/cannot split FP8 weight layers\.0\.ffn\.w2\.weight \[7168,18432\] into 32 ranks.*576/);
    const bf16 = planToDemo(ckpt, { modelParallel: 32, dtype: "bf16" });
    expect(bf16.modelArgs.dtype).toBe("bf16");
    expect(bf16.fp8Dequantized).toBe(45_032);
  });

  it("peak RSS stays far below the largest tensor (child process, default chunk size)", async () => {
    const dir = join(await tempDir(), "syn");
    // A 401 MB BF16 embedding (split by rows) and FP8 experts [2048, 7168], sparse on disk.
    const rows = 28_000;
    await writeSyntheticCheckpoint(dir, { shards: 2, shardBytes: 45e6, bf16Bytes: 2 * 7168 * rows, sparse: true });
    const cfg = JSON.parse(await readFile(join(dir, "config.json"), "utf8"));
    await writeFile(join(dir, "config.json"), JSON.stringify({
      ...cfg, vocab_size: rows, hidden_size: 7168, intermediate_size: 18432, moe_intermediate_size: 2048, num_hidden_layers: 4,
      first_k_dense_replace: 3, num_attention_heads: 128, n_routed_experts: 8, n_shared_experts: 1, num_experts_per_tok: 2,
      kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128, max_position_embeddings: 4096,
    }));
    const largest = 2 * 7168 * rows;
    const out = join(await tempDir(), "demo");
    const script = join(await tempDir(), "child.mts");
    await writeFile(script, `
      const { loadCheckpoint } = await import(${JSON.stringify(join(ROOT, "src/io/checkpoint.ts"))});
      const { LocalSource } = await import(${JSON.stringify(join(ROOT, "src/io/source.ts"))});
      const { kernels } = await import(${JSON.stringify(join(ROOT, "src/quant/kernels.ts"))});
      const { planToDemo, runToDemo } = await import(${JSON.stringify(join(ROOT, "src/convert/to-demo.ts"))});
      const rss = () => process.resourceUsage().maxRSS * 1024;
      const ckpt = await loadCheckpoint(new LocalSource(process.argv[2]));
      const plan = planToDemo(ckpt, { modelParallel: 2, dtype: "bf16" });
      const baseline = rss();
      const s = await runToDemo(ckpt, plan, { out: process.argv[3], kernels: kernels(), threads: 2, force: false, skipSpaceCheck: true });
      console.log(JSON.stringify({ baseline, peak: rss(), bytesRead: s.bytesRead, bytesWritten: s.bytesWritten }));
    `);
    const r = spawnSync(process.execPath, ["--import", "tsx", script, dir, out], { cwd: ROOT, encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    const m = JSON.parse(r.stdout.trim().split("\n").at(-1)!) as { baseline: number; peak: number; bytesRead: number; bytesWritten: number };
    expect(m.bytesRead).toBeGreaterThan(largest);
    expect(m.bytesWritten).toBeGreaterThan(largest);
    // The conversion itself (the pipeline's three chunk slots: 32 MB in + up to 64 MB out each) adds
    // about 230 MB whatever the tensor sizes; holding the 401 MB tensor, or a rank file, would not fit.
    expect(m.peak - m.baseline, JSON.stringify(m)).toBeLessThan(0.75 * largest);
    const f = await SafetensorsFile.open(join(out, "model1-mp2.safetensors"));
    expect(f.entry("embed.weight").shape).toEqual([rows / 2, 7168]);
    await f.close();
    expect((await stat(join(out, "model0-mp2.safetensors"))).size).toBeGreaterThan(largest / 2);
  });
});

describe("to-demo CLI", () => {
  const cli = (...args: string[]) =>
    spawnSync(process.execPath, ["--import", "tsx", join(ROOT, "src/cli/main.ts"), ...args], { cwd: ROOT, encoding: "utf8", env: { ...process.env, HF_HUB_OFFLINE: "1" } });

  it("--dry-run --json plans the rank files and writes nothing; an impossible FP8 split exits 1 with the reason", async () => {
    const out = join(await tempDir(), "never");
    const r = cli("to-demo", FIXTURE, out, "--model-parallel", "2", "--dtype", "bf16", "--dry-run", "--json");
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.ranks).toEqual(MP2_BF16.files!.map((f) => ({ file: f.file, tensors: f.tensors.length, bytes: f.bytes })));
    expect(j).toMatchObject({ command: "to-demo", modelParallel: 2, nExperts: 16, dtype: "bf16", skippedMtpTensors: 124, fits: true });
    expect(j.files).toEqual(["config.json", "tokenizer.json", "tokenizer_config.json"]);
    expect(await readdir(out).catch(() => null)).toBeNull();

    const bad = cli("to-demo", FIXTURE, out, "--model-parallel", "2");
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/^deepcast: error: cannot split FP8 weight .* straddle ranks/m);
    expect(await readdir(out).catch(() => null)).toBeNull();
  });
});

