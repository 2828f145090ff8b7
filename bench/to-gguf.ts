/**
 * to-gguf throughput (FP8 -> Q4_K_M, FP8 -> Q8_0) against two peers measured in the same run:
 *  (a) `dd` reading every input shard and writing the same number of output bytes (conv=fsync);
 *  (b) llama.cpp's `llama-quantize` BF16 GGUF -> the same type, same thread count, followed by
 *      `sync OUT` (deepcast fsyncs its output before renaming it; llama-quantize does not).
 *
 *   npx tsx bench/to-gguf.ts [--llama-quantize PATH] [--repeat 3] [--threads 2] [--dir /tmp/deepcast-bench-gguf]
 *                            [--experts 64] [--layers 4] [--hidden 2048] [--quants Q4_K_M,Q8_0] [--keep] [--imatrix]
 *                            [--baseline OTHER/bin/deepcast.js]
 *
 * --quants takes any output type of `to-gguf -q` (Q8_0,Q4_0,BF16 are the ones bound by the disk).
 * --baseline: another deepcast build (e.g. the integration branch's bin/deepcast.js) timed the same way
 * right before this one on every repeat, so a change is measured before and after in one run.
 * The load average (`uptime`) is printed before each contestant: the machine may be shared.
 *
 * --imatrix: both tools quantize with the same made-up importance matrix (deterministic positive
 * column weights for every weight matrix, per expert), as the IQ mixes need one: e.g.
 * `--imatrix --quants IQ2_XXS,IQ4_XS,IQ1_S --hidden 1024 --experts 16 --layers 2`.
 *
 * The input is a generated DeepSeek-V3-architecture checkpoint that to-gguf loads like the real one:
 * config.json is fixtures/tiny-dsv3's with the sizes scaled up (hidden 2048, 64 routed experts of 2048,
 * 4 layers of which the first is dense: about 2.6 GB of FP8 with the defaults), the fixture's
 * tokenizer files, real tensor names and dtypes (FP8 e4m3 weights + F32 128x128 `weight_scale_inv`,
 * BF16 norms/embeddings/gate, F32 `e_score_correction_bias`), sharded ~1 GB with an index. Tensor data
 * are random (not sparse): FP8 codes drawn from a normal distribution (std ~110, so a 128x128 block
 * spans most of the e4m3 range, as in DeepSeek's checkpoint; no NaN codes), scales ~2e-4.
 *
 * llama-quantize needs a BF16 GGUF of the same model: it is made once with `deepcast to-gguf -q BF16`
 * (byte-identical to llama.cpp's convert_hf_to_gguf.py, tested) and kept for the run. Its time is
 * reported once (not best-of) because the llama.cpp path needs that intermediate on disk and deepcast
 * does not. Without --llama-quantize that peer is skipped.
 *
 * On the first repeat the two Q4_K_M (and Q8_0) files are compared by sha256 and, if they differ,
 * tensor by tensor (tensor infos and data read with @huggingface/gguf).
 *
 * Every timed run starts with `sync` (no dirty pages left by the previous run); inputs are normally
 * in the page cache (they were just written or read). Times are wall clock of the whole process
 * (spawn to exit), for every contestant; GB/s = bytes / that time. Best of --repeat per contestant.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash, randomFillSync } from "node:crypto";
import { copyFile, mkdir, open, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { createReadStream, existsSync, readFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { gguf } from "@huggingface/gguf";
import { DTYPE_SIZE, numel, safetensorsOrder, type Dtype } from "../src/io/dtypes.js";
import { encodeHeader, type TensorSpec } from "../src/io/safetensors.js";
import { planToGguf } from "../src/convert/to-gguf.js";
import { writeImatrix, type ImatrixEntryData } from "../src/io/imatrix-write.js";
import { LocalSource } from "../src/io/source.js";

const { values } = parseArgs({
  options: {
    dir: { type: "string", default: "/tmp/deepcast-bench-gguf" },
    keep: { type: "boolean", default: false },
    repeat: { type: "string", default: "3" },
    threads: { type: "string", default: "2" },
    experts: { type: "string", default: "64" },
    layers: { type: "string", default: "4" },
    hidden: { type: "string", default: "2048" },
    quants: { type: "string", default: "Q4_K_M,Q8_0" },
    "llama-quantize": { type: "string" },
    imatrix: { type: "boolean", default: false },
    baseline: { type: "string" },
  },
});
const root = resolve(values.dir!);
const input = join(root, "fp8-dsv3");
const bf16Gguf = join(root, "bf16.gguf");
const ddOut = join(root, "dd.out");
const imatrixFile = join(root, "made-up.imatrix.gguf");
const imatrixArgs = (flag: string, quant: string) => (values.imatrix && !["F32", "F16", "BF16"].includes(quant) ? [flag, imatrixFile] : []);
const bin = resolve(import.meta.dirname, "..", "bin", "deepcast.js");
const fixture = resolve(import.meta.dirname, "..", "fixtures", "tiny-dsv3");
const threads = Number(values.threads);
const repeat = Number(values.repeat);
const quants = values.quants!.split(",").map((s) => s.trim()).filter(Boolean);
const baselineBin = values.baseline !== undefined ? resolve(values.baseline) : undefined;
if (baselineBin !== undefined && !existsSync(baselineBin)) throw new Error(`--baseline: no such file ${baselineBin}`);
const llamaQuantize = values["llama-quantize"] !== undefined ? resolve(values["llama-quantize"]) : undefined;
if (llamaQuantize !== undefined && !existsSync(llamaQuantize)) throw new Error(`--llama-quantize: no such file ${llamaQuantize}`);

// ---------------------------------------------------------------------------------------------
// The generated checkpoint
// ---------------------------------------------------------------------------------------------

interface Dims {
  hidden: number;
  inter: number;
  moeInter: number;
  experts: number;
  layers: number;
  denseLayers: number;
  qLora: number;
  kvLora: number;
  heads: number;
  nope: number;
  rope: number;
  vHead: number;
  vocab: number;
}

const dims: Dims = {
  hidden: Number(values.hidden),
  inter: 4 * Number(values.hidden),
  moeInter: 2048,
  experts: Number(values.experts),
  layers: Number(values.layers),
  denseLayers: 1,
  qLora: 1536,
  kvLora: 512,
  heads: 16,
  nope: 128,
  rope: 64,
  vHead: 128,
  vocab: 2048, // the fixture tokenizer's
};

/** Every tensor in module order (an FP8 weight followed by its scale), as in DeepSeek-V3's checkpoint (no MTP layer). */
function tensorList(d: Dims): TensorSpec[] {
  const out: TensorSpec[] = [];
  const t = (name: string, dtype: Dtype, shape: number[]) => out.push({ name, dtype, shape });
  const fp8 = (name: string, shape: number[]) => {
    t(`${name}.weight`, "F8_E4M3", shape);
    t(`${name}.weight_scale_inv`, "F32", shape.map((n) => Math.ceil(n / 128)));
  };
  const mlp = (p: string, inter: number) => {
    fp8(`${p}.gate_proj`, [inter, d.hidden]);
    fp8(`${p}.up_proj`, [inter, d.hidden]);
    fp8(`${p}.down_proj`, [d.hidden, inter]);
  };
  t("model.embed_tokens.weight", "BF16", [d.vocab, d.hidden]);
  for (let L = 0; L < d.layers; L++) {
    const p = `model.layers.${L}`;
    fp8(`${p}.self_attn.q_a_proj`, [d.qLora, d.hidden]);
    t(`${p}.self_attn.q_a_layernorm.weight`, "BF16", [d.qLora]);
    fp8(`${p}.self_attn.q_b_proj`, [d.heads * (d.nope + d.rope), d.qLora]);
    fp8(`${p}.self_attn.kv_a_proj_with_mqa`, [d.kvLora + d.rope, d.hidden]);
    t(`${p}.self_attn.kv_a_layernorm.weight`, "BF16", [d.kvLora]);
    fp8(`${p}.self_attn.kv_b_proj`, [d.heads * (d.nope + d.vHead), d.kvLora]);
    fp8(`${p}.self_attn.o_proj`, [d.hidden, d.heads * d.vHead]);
    if (L < d.denseLayers) mlp(`${p}.mlp`, d.inter);
    else {
      for (let e = 0; e < d.experts; e++) mlp(`${p}.mlp.experts.${e}`, d.moeInter);
      t(`${p}.mlp.gate.weight`, "BF16", [d.experts, d.hidden]);
      t(`${p}.mlp.gate.e_score_correction_bias`, "F32", [d.experts]);
      mlp(`${p}.mlp.shared_experts`, d.moeInter);
    }
    t(`${p}.input_layernorm.weight`, "BF16", [d.hidden]);
    t(`${p}.post_attention_layernorm.weight`, "BF16", [d.hidden]);
  }
  t("model.norm.weight", "BF16", [d.hidden]);
  t("lm_head.weight", "BF16", [d.vocab, d.hidden]);
  return out;
}

/** fixtures/tiny-dsv3/config.json with the sizes of `d`. */
async function configJson(d: Dims): Promise<string> {
  const cfg = JSON.parse(await readFile(join(fixture, "config.json"), "utf8")) as Record<string, unknown>;
  Object.assign(cfg, {
    hidden_size: d.hidden,
    intermediate_size: d.inter,
    moe_intermediate_size: d.moeInter,
    n_routed_experts: d.experts,
    num_experts_per_tok: 8,
    // llama.cpp asserts n_group < n_routed_experts.
    n_group: d.experts >= 16 ? 8 : 2,
    topk_group: d.experts >= 16 ? 4 : 1,
    num_hidden_layers: d.layers,
    first_k_dense_replace: d.denseLayers,
    num_nextn_predict_layers: 0,
    q_lora_rank: d.qLora,
    kv_lora_rank: d.kvLora,
    num_attention_heads: d.heads,
    num_key_value_heads: d.heads,
    qk_nope_head_dim: d.nope,
    qk_rope_head_dim: d.rope,
    v_head_dim: d.vHead,
    vocab_size: d.vocab,
  });
  return JSON.stringify(cfg, null, 2) + "\n";
}

/** Acklam's rational approximation of the standard normal quantile (relative error < 1.2e-9). */
function normalQuantile(p: number): number {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const e = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const [a0, a1, a2, a3, a4, a5] = a as [number, number, number, number, number, number];
  const [b0, b1, b2, b3, b4] = b as [number, number, number, number, number];
  const [c0, c1, c2, c3, c4, c5] = c as [number, number, number, number, number, number];
  const [d0, d1, d2, d3] = e as [number, number, number, number];
  const tail = (q: number) => (((((c0 * q + c1) * q + c2) * q + c3) * q + c4) * q + c5) / ((((d0 * q + d1) * q + d2) * q + d3) * q + 1);
  if (p < 0.02425) return tail(Math.sqrt(-2 * Math.log(p)));
  if (p > 1 - 0.02425) return -tail(Math.sqrt(-2 * Math.log(1 - p)));
  const q = p - 0.5;
  const r = q * q;
  return ((((((a0 * r + a1) * r + a2) * r + a3) * r + a4) * r + a5) * q) / (((((b0 * r + b1) * r + b2) * r + b3) * r + b4) * r + 1);
}

/** Value of a non-negative e4m3fn code 0..0x7E. */
function e4m3Value(code: number): number {
  const exp = code >> 3;
  const man = code & 7;
  return exp === 0 ? (man / 8) * 2 ** -6 : (1 + man / 8) * 2 ** (exp - 7);
}

/** 65,536 e4m3 codes of N(0, 110) quantiles: indexing it with a random u16 draws a normal FP8 weight. */
function fp8NormalTable(): Uint8Array {
  const pos = Array.from({ length: 0x7f }, (_, c) => e4m3Value(c));
  const table = new Uint8Array(65536);
  for (let i = 0; i < 65536; i++) {
    const v = normalQuantile((i + 0.5) / 65536) * 110;
    const a = Math.min(Math.abs(v), 448);
    let best = 0;
    for (let c = 1; c < pos.length; c++) if (Math.abs(pos[c]! - a) < Math.abs(pos[best]! - a)) best = c;
    table[i] = (v < 0 ? 0x80 : 0) | best;
  }
  return table;
}

const CHUNK = 32 << 20;

/** Fills `out` with the data of one tensor (random, plausible for its role). */
function fillTensor(t: TensorSpec, out: Uint8Array, table: Uint8Array, rnd: Uint16Array): void {
  if (t.dtype === "F8_E4M3") {
    const r = rnd.subarray(0, out.length);
    randomFillSync(r);
    for (let i = 0; i < out.length; i++) out[i] = table[r[i]!]!;
    return;
  }
  const n = out.length / DTYPE_SIZE[t.dtype];
  const f = new Float32Array(n);
  const isNorm = t.name.endsWith("norm.weight");
  const isScale = t.name.endsWith("weight_scale_inv");
  const isBias = t.name.endsWith("e_score_correction_bias");
  for (let i = 0; i < n; i++) {
    const u = Math.random();
    f[i] = isNorm ? 1 + (u - 0.5) * 0.2 : isScale ? 2e-4 * (0.5 + u) : isBias ? (u - 0.5) * 0.1 : normalQuantile((i % 65536 + u) / 65537) * 0.02;
  }
  if (t.dtype === "F32") out.set(new Uint8Array(f.buffer));
  else if (t.dtype === "BF16") {
    const u32 = new Uint32Array(f.buffer);
    const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
    for (let i = 0; i < n; i++) {
      const x = u32[i]!;
      dv.setUint16(2 * i, (x + 0x7fff + ((x >>> 16) & 1)) >>> 16, true);
    }
  } else throw new Error(`unexpected dtype ${t.dtype}`);
}

async function generate(dir: string, d: Dims): Promise<void> {
  const tensors = tensorList(d);
  const bytesOf = (t: TensorSpec) => numel(t.shape) * DTYPE_SIZE[t.dtype];
  const total = tensors.reduce((s, t) => s + bytesOf(t), 0);
  const nShards = Math.max(1, Math.round(total / 1e9));
  const cap = Math.ceil(total / nShards);
  const groups: TensorSpec[][] = [[]];
  let bytes = 0;
  for (const t of tensors) {
    if (bytes > 0 && bytes + bytesOf(t) > cap && groups.length < nShards) {
      groups.push([]);
      bytes = 0;
    }
    groups[groups.length - 1]!.push(t);
    bytes += bytesOf(t);
  }
  await mkdir(dir, { recursive: true });
  const table = fp8NormalTable();
  const rnd = new Uint16Array(CHUNK);
  const weightMap: Record<string, string> = {};
  for (const [i, group] of groups.entries()) {
    const file = `model-${String(i + 1).padStart(5, "0")}-of-${String(groups.length).padStart(5, "0")}.safetensors`;
    const specs = [...group].sort(safetensorsOrder);
    const { bytes: header } = encodeHeader(specs, { format: "pt" });
    const fh = await open(join(dir, file), "w");
    try {
      let pos = 0;
      await fh.write(header, 0, header.length, pos);
      pos += header.length;
      for (const t of specs) {
        weightMap[t.name] = file;
        let left = bytesOf(t);
        // FP8 data in 32 MiB pieces; F32/BF16 tensors are small and written whole.
        while (left > 0) {
          const n = t.dtype === "F8_E4M3" ? Math.min(left, CHUNK) : left;
          const buf = new Uint8Array(n);
          fillTensor(t, buf, table, rnd);
          await fh.write(buf, 0, n, pos);
          pos += n;
          left -= n;
        }
      }
    } finally {
      await fh.close();
    }
    process.stderr.write(`  wrote ${file}\n`);
  }
  const names = Object.keys(weightMap).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const index = { metadata: { total_size: total }, weight_map: Object.fromEntries(names.map((n) => [n, weightMap[n]])) };
  await writeFile(join(dir, "model.safetensors.index.json"), JSON.stringify(index, null, 2) + "\n");
  await writeFile(join(dir, "config.json"), await configJson(d));
  for (const f of ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]) await copyFile(join(fixture, f), join(dir, f));
}

async function ensureInput(): Promise<string[]> {
  const marker = join(input, "bench-dims.json");
  const want = JSON.stringify({ dims, config: await configJson(dims) });
  const have = await readFile(marker, "utf8").catch(() => "");
  if (have !== want) {
    process.stderr.write(`generating a random FP8 DeepSeek-V3-architecture checkpoint in ${input}\n`);
    await rm(input, { recursive: true, force: true });
    await removeGguf(bf16Gguf);
    await generate(input, dims);
    await writeFile(marker, want);
  }
  return (await readdir(input)).filter((f) => f.endsWith(".safetensors")).sort();
}

// ---------------------------------------------------------------------------------------------
// Contestants
// ---------------------------------------------------------------------------------------------

/** Flushes dirty pages left by the previous run, so each run pays only for its own writes. */
function settle(): void {
  execFileSync("sync");
}

function seconds(f: () => void): number {
  const t0 = performance.now();
  f();
  return (performance.now() - t0) / 1000;
}

interface Deepcast { seconds: number; ownSeconds: number; bytesRead: number; bytesWritten: number; peakRssBytes: number }

/** The 1-minute load average, as `uptime` prints it. */
function load(): string {
  return readFileSync("/proc/loadavg", "utf8").split(" ")[0]!;
}

function deepcast(quant: string, out: string, program = bin): Deepcast {
  settle();
  let r!: ReturnType<typeof spawnSync>;
  const s = seconds(() => {
    r = spawnSync(process.execPath, [program, "to-gguf", input, "-q", quant, "-o", out, "--json", "--force", "--threads", String(threads), ...imatrixArgs("--imatrix", quant)], { encoding: "utf8", maxBuffer: 64 << 20 });
  });
  if (r.status !== 0) throw new Error(`deepcast to-gguf ${quant} failed: ${String(r.stderr)}`);
  const j = JSON.parse(String(r.stdout)) as { seconds: number; bytesRead: number; bytesWritten: number; peakRssBytes: number };
  return { seconds: s, ownSeconds: j.seconds, bytesRead: j.bytesRead, bytesWritten: j.bytesWritten, peakRssBytes: j.peakRssBytes };
}

function dd(shards: string[], outBytes: number): number {
  settle();
  const s = seconds(() => {
    for (const f of shards) execFileSync("dd", [`if=${join(input, f)}`, "of=/dev/null", "bs=16M"], { stdio: "ignore" });
    const bs = 16 * 1024 * 1024;
    execFileSync("dd", ["if=/dev/zero", `of=${ddOut}`, `bs=${bs}`, `count=${Math.ceil(outBytes / bs)}`, "conv=fsync"], { stdio: "ignore" });
  });
  return s;
}

interface Llama { seconds: number; bytesRead: number; bytesWritten: number; peakRssBytes: number }

function llama(quant: string, out: string): Llama {
  settle();
  let r!: ReturnType<typeof spawnSync>;
  const s = seconds(() => {
    r = spawnSync("/usr/bin/time", ["-v", llamaQuantize!, ...imatrixArgs("--imatrix", quant), bf16Gguf, out, quant, String(threads)], { encoding: "utf8", maxBuffer: 64 << 20 });
    if (r.status === 0) execFileSync("sync", [out]);
  });
  if (r.status !== 0) throw new Error(`llama-quantize ${quant} failed: ${String(r.stderr).slice(-4000)}`);
  const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(String(r.stderr));
  return { seconds: s, bytesRead: 0, bytesWritten: 0, peakRssBytes: m ? Number(m[1]) * 1024 : NaN };
}

/** Removes a GGUF output and the run manifest deepcast keeps next to it. */
async function removeGguf(path: string): Promise<void> {
  await rm(path, { force: true });
  await rm(join(dirname(path), `.${basename(path)}.deepcast-run.json`), { force: true });
}

async function sha256(path: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: 8 << 20 })) h.update(chunk as Buffer);
  return h.digest("hex");
}

/** Tensors whose info (type, shape, offset) or data differ between two GGUF files; also whether the KV/header part differs. */
async function diffGguf(a: string, b: string): Promise<string[]> {
  const [ga, gb] = await Promise.all([gguf(a, { allowLocalFile: true }), gguf(b, { allowLocalFile: true })]);
  const lines: string[] = [];
  const ha = Buffer.from(await readRange(a, 0, Number(ga.tensorDataOffset)));
  const hb = Buffer.from(await readRange(b, 0, Number(gb.tensorDataOffset)));
  if (!ha.equals(hb)) {
    const ma = ga.metadata as Record<string, unknown>;
    const mb = gb.metadata as Record<string, unknown>;
    const json = (v: unknown) => JSON.stringify(v, (_, x: unknown) => (typeof x === "bigint" ? x.toString() : x));
    const kvDiff = [...new Set([...Object.keys(ma), ...Object.keys(mb)])].filter((k) => json(ma[k]) !== json(mb[k]));
    lines.push(`header differs (${ha.length} vs ${hb.length} bytes); KVs that differ: ${kvDiff.join(", ") || "none (tensor infos or padding)"}`);
  }
  const byName = new Map(gb.tensorInfos.map((t) => [t.name, t]));
  const infos = ga.tensorInfos;
  for (let i = 0; i < infos.length; i++) {
    const ta = infos[i]!;
    const tb = byName.get(ta.name);
    if (!tb) {
      lines.push(`${ta.name}: only in ours`);
      continue;
    }
    const nextA = infos[i + 1]?.offset;
    const idxB = gb.tensorInfos.indexOf(tb);
    const nextB = gb.tensorInfos[idxB + 1]?.offset;
    const sizeA = Number((nextA ?? BigInt((await stat(a)).size) - ga.tensorDataOffset) - ta.offset);
    const sizeB = Number((nextB ?? BigInt((await stat(b)).size) - gb.tensorDataOffset) - tb.offset);
    if (ta.dtype !== tb.dtype || ta.shape.join() !== tb.shape.join()) {
      lines.push(`${ta.name}: type ${ta.dtype} vs ${tb.dtype}, shape [${ta.shape.join(",")}] vs [${tb.shape.join(",")}]`);
      continue;
    }
    const da = await readRange(a, Number(ga.tensorDataOffset + ta.offset), sizeA);
    const db = await readRange(b, Number(gb.tensorDataOffset + tb.offset), sizeB);
    if (!Buffer.from(da).equals(Buffer.from(db))) {
      let first = 0;
      while (first < Math.min(da.length, db.length) && da[first] === db[first]) first++;
      let n = 0;
      for (let k = 0; k < Math.min(da.length, db.length); k++) if (da[k] !== db[k]) n++;
      lines.push(`${ta.name} (type ${ta.dtype}): data differ, ${n} of ${da.length} bytes, first at byte ${first}`);
    }
  }
  for (const tb of gb.tensorInfos) if (!infos.some((t) => t.name === tb.name)) lines.push(`${tb.name}: only in llama-quantize's`);
  return lines;
}

async function readRange(path: string, pos: number, len: number): Promise<Uint8Array> {
  const fh = await open(path, "r");
  try {
    const buf = new Uint8Array(len);
    let off = 0;
    while (off < len) {
      const { bytesRead } = await fh.read(buf, off, len - off, pos + off);
      if (bytesRead === 0) break;
      off += bytesRead;
    }
    return buf.subarray(0, off);
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Run
// ---------------------------------------------------------------------------------------------

const benchStart = performance.now();
await mkdir(root, { recursive: true });
const shards = await ensureInput();
let inBytes = 0;
for (const f of shards) inBytes += (await stat(join(input, f))).size;
const cpu = execFileSync("sh", ["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], { encoding: "utf8" }).trim();
process.stderr.write(`input ${(inBytes / 1e9).toFixed(2)} GB in ${shards.length} shards; cpu ${cpu} x${execFileSync("nproc", { encoding: "utf8" }).trim()}; threads ${threads}\n`);

if (values.imatrix) {
  // Every weight matrix of the GGUF, per expert / head: deterministic column weights in [0.5, 1.5).
  const plan = await planToGguf(new LocalSource(input), join(root, "plan.gguf"), { ftype: "BF16", dryRun: true });
  const entries = new Map<string, ImatrixEntryData>();
  let seed = 1;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  for (const t of plan.output.tensors) {
    if (t.ne.length < 2 || !t.name.endsWith(".weight") || t.name.includes("_norm") || !t.name.startsWith("blk.")) continue;
    const nMat = t.ne[2] ?? 1;
    entries.set(t.name, { sums: Float32Array.from({ length: t.ne[0]! * nMat }, () => 0.5 + rnd()), counts: new Float32Array(nMat).fill(1) });
  }
  await writeImatrix(imatrixFile, { entries, datasets: ["made-up"], chunkCount: 1, chunkSize: 512 }, "gguf");
  process.stderr.write(`made-up imatrix: ${entries.size} entries in ${imatrixFile}\n`);
}

let bf16Run: Deepcast | undefined;
let bf16Bytes = 0;
if (llamaQuantize !== undefined) {
  // The intermediate the llama.cpp path needs (made with our BF16 output, identical to convert_hf_to_gguf.py's).
  await removeGguf(bf16Gguf);
  bf16Run = deepcast("BF16", bf16Gguf);
  bf16Bytes = (await stat(bf16Gguf)).size;
  process.stderr.write(`BF16 GGUF intermediate: ${(bf16Bytes / 1e9).toFixed(2)} GB in ${bf16Run.seconds.toFixed(2)} s\n`);
}

interface Rows { deepcast: Deepcast[]; baseline: Deepcast[]; dd: number[]; llama: Llama[]; identity?: string }
const results = new Map<string, Rows>(quants.map((q) => [q, { deepcast: [], baseline: [], dd: [], llama: [] }]));
for (let rep = 0; rep < repeat; rep++) {
  for (const quant of quants) {
    const rows = results.get(quant)!;
    const ours = join(root, `deepcast-${quant}.gguf`);
    const theirs = join(root, `llama-${quant}.gguf`);
    let base = "";
    if (baselineBin !== undefined) {
      const l0 = load();
      await removeGguf(ours);
      const b = deepcast(quant, ours, baselineBin);
      rows.baseline.push(b);
      await removeGguf(ours);
      base = `baseline ${b.seconds.toFixed(2)} s (load ${l0}), `;
    }
    await removeGguf(ours);
    const l1 = load();
    const run = deepcast(quant, ours);
    rows.deepcast.push(run);
    const verify = rep === 0 && llamaQuantize !== undefined;
    if (!verify) await removeGguf(ours);
    const l2 = load();
    const ddSeconds = dd(shards, run.bytesWritten);
    await rm(ddOut, { force: true });
    rows.dd.push(ddSeconds);
    let line = `${quant} #${rep + 1}: ${base}deepcast ${run.seconds.toFixed(2)} s (load ${l1}; own ${run.ownSeconds.toFixed(2)} s, peak RSS ${(run.peakRssBytes / 1e6).toFixed(0)} MB), dd ${ddSeconds.toFixed(2)} s (load ${l2}), deepcast / dd ${(run.seconds / ddSeconds).toFixed(2)}`;
    if (llamaQuantize !== undefined) {
      await removeGguf(theirs);
      const l = llama(quant, theirs);
      l.bytesRead = bf16Bytes;
      l.bytesWritten = (await stat(theirs)).size;
      rows.llama.push(l);
      line += `, llama-quantize ${l.seconds.toFixed(2)} s (peak RSS ${(l.peakRssBytes / 1e6).toFixed(0)} MB)`;
      if (verify) {
        const [ha, hb] = await Promise.all([sha256(ours), sha256(theirs)]);
        if (ha === hb) rows.identity = `identical (${l.bytesWritten} bytes, sha256 ${ha})`;
        else {
          const diff = await diffGguf(ours, theirs);
          rows.identity = `DIFFERENT: deepcast sha256 ${ha} (${run.bytesWritten} bytes), llama-quantize ${hb} (${l.bytesWritten} bytes)\n` + diff.map((s) => `    ${s}`).join("\n");
        }
        process.stderr.write(`${quant} identity: ${rows.identity}\n`);
        await removeGguf(ours);
      }
      await removeGguf(theirs);
    }
    process.stderr.write(line + "\n");
  }
}

const gbps = (bytes: number, s: number) => (bytes / 1e9 / s).toFixed(2);
const mb = (b: number) => (Number.isFinite(b) ? (b / 1e6).toFixed(0) : "?");
console.log(`| quant | tool | s | GB/s in | GB/s out | peak RSS MB | deepcast / dd | deepcast / llama-quantize |`);
console.log(`|---|---|---|---|---|---|---|---|`);
for (const quant of quants) {
  const rows = results.get(quant)!;
  const d = [...rows.deepcast].sort((a, b) => a.seconds - b.seconds)[0]!;
  const ddBest = Math.min(...rows.dd);
  const l = [...rows.llama].sort((a, b) => a.seconds - b.seconds)[0];
  const rss = Math.max(...rows.deepcast.map((r) => r.peakRssBytes));
  console.log(`| ${quant} | deepcast (FP8 in) | ${d.seconds.toFixed(2)} | ${gbps(d.bytesRead, d.seconds)} | ${gbps(d.bytesWritten, d.seconds)} | ${mb(rss)} | ${(d.seconds / ddBest).toFixed(2)} | ${l ? (d.seconds / l.seconds).toFixed(2) : "-"} |`);
  const b = [...rows.baseline].sort((x, y) => x.seconds - y.seconds)[0];
  if (b) console.log(`| ${quant} | baseline deepcast (${values.baseline}) | ${b.seconds.toFixed(2)} | ${gbps(b.bytesRead, b.seconds)} | ${gbps(b.bytesWritten, b.seconds)} | ${mb(Math.max(...rows.baseline.map((r) => r.peakRssBytes)))} | ${(b.seconds / ddBest).toFixed(2)} | ${l ? (b.seconds / l.seconds).toFixed(2) : "-"} |`);
  console.log(`| ${quant} | dd (same bytes) | ${ddBest.toFixed(2)} | ${gbps(inBytes, ddBest)} | ${gbps(d.bytesWritten, ddBest)} | - | 1 | - |`);
  if (l) {
    const lrss = Math.max(...rows.llama.map((r) => r.peakRssBytes));
    console.log(`| ${quant} | llama-quantize (BF16 GGUF in) | ${l.seconds.toFixed(2)} | ${gbps(l.bytesRead, l.seconds)} | ${gbps(l.bytesWritten, l.seconds)} | ${mb(lrss)} | - | 1 |`);
  }
}
console.log("");
if (bf16Run) console.log(`llama.cpp path's BF16 GGUF intermediate (made once with deepcast to-gguf -q BF16, not best-of): ${(bf16Bytes / 1e9).toFixed(2)} GB written in ${bf16Run.seconds.toFixed(2)} s; llama-quantize reads it instead of the FP8 checkpoint.`);
for (const quant of quants) {
  const id = results.get(quant)!.identity;
  if (id) console.log(`${quant} deepcast vs llama-quantize output: ${id}`);
}
console.log(`\ninput ${(inBytes / 1e9).toFixed(2)} GB FP8 in ${shards.length} shards (hidden ${dims.hidden}, ${dims.layers} layers, ${dims.experts} experts x ${dims.moeInter}); ${cpu}; ${threads} threads; best of ${repeat} (wall clock per process; peak RSS is the max over runs); total bench ${((performance.now() - benchStart) / 1000).toFixed(0)} s`);
if (!values.keep) await rm(root, { recursive: true, force: true });
