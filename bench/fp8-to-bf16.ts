/**
 * fp8-to-bf16 throughput against `dd` moving the same bytes, measured in the same run.
 *
 *   npx tsx bench/fp8-to-bf16.ts [--gb 3] [--dir /tmp/deepcast-bench] [--keep]
 *
 * A random FP8 checkpoint (DeepSeek-V3 expert-shaped [2048, 7168] weights with scales, plus one
 * BF16 tensor) is generated once. The peer is dd reading every input shard and writing the same
 * number of output bytes, with conv=fsync because deepcast syncs each shard before renaming it.
 * Every run starts with the inputs in the page cache (the previous run read them) and no dirty pages
 * (sync before each run). Reported: the
 * ratio deepcast time / dd time, and GB/s of output, for scalar vs AVX2 and 1 vs 2 threads.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdir, readdir, rm, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { writeSyntheticCheckpoint } from "../fixtures/synthetic.js";

const { values } = parseArgs({
  options: { gb: { type: "string", default: "3" }, dir: { type: "string", default: "/tmp/deepcast-bench" }, keep: { type: "boolean", default: false }, repeat: { type: "string", default: "2" } },
});
const root = resolve(values.dir!);
const input = join(root, "fp8");
const out = join(root, "bf16");
const ddOut = join(root, "dd.out");
const bin = resolve(import.meta.dirname, "..", "bin", "deepcast.js");

async function ensureInput(): Promise<string[]> {
  const gb = Number(values.gb);
  const shards = Math.max(1, Math.round(gb));
  const existing = await readdir(input).catch(() => []);
  if (!existing.some((f) => f.endsWith(".safetensors"))) {
    process.stderr.write(`generating ${gb} GB random FP8 checkpoint in ${input}\n`);
    await rm(input, { recursive: true, force: true });
    await writeSyntheticCheckpoint(input, { shards, shardBytes: (gb * 1e9) / shards, bf16Bytes: 64e6 });
  }
  return (await readdir(input)).filter((f) => f.endsWith(".safetensors")).sort();
}

function seconds(f: () => void): number {
  const t0 = performance.now();
  f();
  return (performance.now() - t0) / 1000;
}

/** Flushes dirty pages left by the previous run, so each run pays only for its own writes. */
function settle(): void {
  execFileSync("sync");
}

function dd(shards: string[], outBytes: number): number {
  settle();
  return seconds(() => {
    for (const s of shards) execFileSync("dd", [`if=${join(input, s)}`, "of=/dev/null", "bs=16M"], { stdio: "ignore" });
    const bs = 16 * 1024 * 1024;
    execFileSync("dd", ["if=/dev/zero", `of=${ddOut}`, `bs=${bs}`, `count=${Math.ceil(outBytes / bs)}`, "conv=fsync"], { stdio: "ignore" });
  });
}

interface Run { simd: string; threads: number; seconds: number; peakRssBytes: number; bytesWritten: number }

function deepcast(simd: string, threads: number): Run {
  settle();
  const r = spawnSync(process.execPath, [bin, "fp8-to-bf16", input, out, "--json", "--force", "--simd", simd, "--threads", String(threads)], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`deepcast failed: ${r.stderr}`);
  const j = JSON.parse(r.stdout);
  return { simd, threads, seconds: j.seconds, peakRssBytes: j.peakRssBytes, bytesWritten: j.bytesWritten };
}

await mkdir(root, { recursive: true });
const shards = await ensureInput();
let inBytes = 0;
for (const s of shards) inBytes += (await stat(join(input, s))).size;
const configs: [string, number][] = [["avx2", 2], ["avx2", 1], ["scalar", 2], ["scalar", 1]];
const rows: (Run & { ddSeconds: number; ratio: number })[] = [];
const cpu = execFileSync("sh", ["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], { encoding: "utf8" }).trim();
process.stderr.write(`input ${(inBytes / 1e9).toFixed(2)} GB in ${shards.length} shards; cpu ${cpu}\n`);
for (let rep = 0; rep < Number(values.repeat); rep++) {
  for (const [simd, threads] of configs) {
    await rm(out, { recursive: true, force: true });
    const run = deepcast(simd, threads);
    await rm(out, { recursive: true, force: true });
    const ddSeconds = dd(shards, run.bytesWritten);
    await rm(ddOut, { force: true });
    rows.push({ ...run, ddSeconds, ratio: run.seconds / ddSeconds });
    process.stderr.write(`${simd} x${threads}: ${run.seconds.toFixed(2)} s (${(run.bytesWritten / 1e9 / run.seconds).toFixed(2)} GB/s out), dd ${ddSeconds.toFixed(2)} s, ratio ${(run.seconds / ddSeconds).toFixed(2)}, peak RSS ${(run.peakRssBytes / 1e6).toFixed(0)} MB\n`);
  }
}
// Best of the repeats per configuration, each against the dd run right after it.
const best = configs.map(([simd, threads]) => rows.filter((r) => r.simd === simd && r.threads === threads).sort((a, b) => a.ratio - b.ratio)[0]!);
console.log(`| kernels | threads | deepcast s | GB/s out | dd s | ratio | peak RSS MB |\n|---|---|---|---|---|---|---|`);
for (const r of best) {
  console.log(`| ${r.simd} | ${r.threads} | ${r.seconds.toFixed(2)} | ${(r.bytesWritten / 1e9 / r.seconds).toFixed(2)} | ${r.ddSeconds.toFixed(2)} | ${r.ratio.toFixed(2)} | ${(r.peakRssBytes / 1e6).toFixed(0)} |`);
}
console.log(`\ninput ${(inBytes / 1e9).toFixed(2)} GB FP8 in ${shards.length} shards -> ${(best[0]!.bytesWritten / 1e9).toFixed(2)} GB BF16; ${cpu}; best of ${values.repeat}`);
if (!values.keep) await rm(root, { recursive: true, force: true });
