/**
 * `deepcast validate` (perplexity, llama protocol) against llama.cpp's `llama-perplexity` on the same
 * GGUF, text, context and threads, in one run: wall clock of each process, best of --repeat, and
 * the ratio deepcast / llama-perplexity per GGUF type.
 *
 *   npm run build:ts     # the CLI runs dist/
 *   npx tsx bench/validate-perplexity.ts [--llama-perplexity PATH] [--types BF16,Q8_0,Q4_K_M] [--ctx 256]
 *                                        [--threads 2] [--repeat 5] [--text FILE] [--dir DIR]
 *                                        [--llama-env NAME=VALUE]
 *
 * The GGUFs are made once per --dir from fixtures/tiny-dsv3 with the project's own converter
 * (planToGguf/runToGguf, what `deepcast to-gguf` runs). The text defaults to the fixture's eval text
 * (fixtures/tiny-dsv3-golden/eval/kjv_eval.txt); both tools tokenize it themselves (deepcast with
 * fixtures/tiny-dsv3/tokenizer.json, llama.cpp with the vocabulary in the GGUF) and score the same
 * chunks: n_ctx tokens per chunk, the second half scored. Each contestant is one process timed from
 * spawn to exit (start-up, tokenization and model load included, as a user waits for them):
 *
 *  - `node bin/deepcast.js validate GGUF --text TEXT --tokenizer fixtures/tiny-dsv3 --ctx C --threads N --json`
 *  - `llama-perplexity -m GGUF -f TEXT -c C -b max(C, 2048) -t N -tb N` (CPU build; its default batch
 *    of 2048 runs 2048 / C chunks per decode, as our pass batches chunks)
 *
 * CPU time (user + system, from /usr/bin/time) is reported beside the wall clock: on a machine
 * shared with other jobs it is the steadier of the two. Both print their final PPL; the table shows them side by side (they differ in the 3rd-4th digit:
 * llama.cpp's activations are quantized to the weights' dot type, ours are float32).
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { availableParallelism, cpus, loadavg } from "node:os";
import { join, resolve } from "node:path";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { LocalSource } from "../src/io/source.js";
import { kernels } from "../src/quant/kernels.js";

const ROOT = resolve(import.meta.dirname, "..");
const FIXTURE = join(ROOT, "fixtures", "tiny-dsv3");
const argv = process.argv.slice(2);
const opt = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1]! : fallback);
const llamaPpl = opt("--llama-perplexity", "/tmp/llama.cpp-bench/build/bin/llama-perplexity");
const types = opt("--types", "BF16,Q8_0,Q4_K_M").split(",");
const ctx = Number(opt("--ctx", "256"));
const threads = Number(opt("--threads", String(Math.min(2, availableParallelism()))));
const repeat = Number(opt("--repeat", "5"));
const text = resolve(opt("--text", join(ROOT, "fixtures", "tiny-dsv3-golden", "eval", "kjv_eval.txt")));
const dir = resolve(opt("--dir", "/tmp/deepcast-bench-validate"));
// e.g. --llama-env OMP_WAIT_POLICY=passive: llama.cpp's OpenMP threads spin while they wait, which
// costs CPU time (and wall time) when other jobs share the cores.
const llamaEnv = argv.includes("--llama-env") ? Object.fromEntries([opt("--llama-env", "").split("=", 2) as [string, string]]) : {};

if (!existsSync(join(ROOT, "dist", "cli", "main.js"))) throw new Error("dist/ is not built: run npm run build:ts first");
const haveLlama = existsSync(llamaPpl);
if (!haveLlama) console.error(`${llamaPpl} not found: timing deepcast only (build it as bench/README.md says)`);

await mkdir(dir, { recursive: true });
const gguf = new Map<string, string>();
for (const type of types) {
  const out = join(dir, `tiny-dsv3-${type}.gguf`);
  if (!existsSync(out)) {
    const plan = await planToGguf(new LocalSource(FIXTURE), out, { ftype: type as never });
    await runToGguf(plan, { kernels: kernels(), threads: Math.min(2, availableParallelism()), force: true, skipSpaceCheck: true });
  }
  gguf.set(type, out);
}

interface Timed { seconds: number; cpu: number; out: string }

/**
 * Runs a command under /usr/bin/time; resolves with its wall time, its CPU time (user + system, s:
 * steadier than the wall clock on a shared machine) and its output; rejects on a non-zero exit.
 */
function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<Timed> {
  return new Promise((res, rej) => {
    const t0 = performance.now();
    const p = spawn("/usr/bin/time", ["-f", "BENCHTIME %e %U %S", cmd, ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
    let out = "";
    p.stdout.on("data", (d: Buffer) => (out += d.toString()));
    p.stderr.on("data", (d: Buffer) => (out += d.toString()));
    p.on("error", rej);
    p.on("close", (code) => {
      const seconds = (performance.now() - t0) / 1000;
      if (code !== 0) rej(new Error(`${cmd} ${args.join(" ")} exited with ${code}:\n${out.slice(-2000)}`));
      else {
        const m = /BENCHTIME ([0-9.]+) ([0-9.]+) ([0-9.]+)/.exec(out);
        res({ seconds, cpu: m ? Number(m[2]) + Number(m[3]) : NaN, out });
      }
    });
  });
}

const deepcast = (path: string) =>
  run(process.execPath, [join(ROOT, "bin", "deepcast.js"), "validate", path, "--text", text, "--tokenizer", FIXTURE,
    "--ctx", String(ctx), "--threads", String(threads), "--json"]);
const llama = (path: string) =>
  run(llamaPpl, ["-m", path, "-f", text, "-c", String(ctx), "-b", String(Math.max(ctx, 2048)), "-t", String(threads), "-tb", String(threads)], llamaEnv);

function deepcastPpl(out: string): string {
  const m = /"ppl"\s*:\s*([0-9.e+-]+)/.exec(out) ?? /PPL = ([0-9.]+)/.exec(out);
  return m ? Number(m[1]).toFixed(4) : "?";
}
function llamaPplOf(out: string): string {
  const m = /Final estimate: PPL = ([0-9.]+)/.exec(out);
  return m ? m[1]! : "?";
}

interface Row { type: string; ours: number; theirs: number | null; oursCpu: number; theirCpu: number | null; oursPpl: string; theirPpl: string }
const rows: Row[] = [];
const t0 = performance.now();
const load0 = loadavg()[0]!;
for (const type of types) {
  const path = gguf.get(type)!;
  // One untimed run of each (page cache, lazy loading), then --repeat alternating runs.
  const first = await deepcast(path);
  const firstLlama = haveLlama ? await llama(path) : null;
  let [ours, oursCpu, theirs, theirCpu] = [Infinity, Infinity, Infinity, Infinity];
  for (let r = 0; r < repeat; r++) {
    const a = await deepcast(path);
    [ours, oursCpu] = [Math.min(ours, a.seconds), Math.min(oursCpu, a.cpu)];
    if (haveLlama) {
      const b = await llama(path);
      [theirs, theirCpu] = [Math.min(theirs, b.seconds), Math.min(theirCpu, b.cpu)];
    }
  }
  rows.push({ type, ours, theirs: haveLlama ? theirs : null, oursCpu, theirCpu: haveLlama ? theirCpu : null,
    oursPpl: deepcastPpl(first.out), theirPpl: firstLlama ? llamaPplOf(firstLlama.out) : "-" });
  console.error(`${type}: deepcast ${ours.toFixed(3)} s${haveLlama ? `, llama-perplexity ${theirs.toFixed(3)} s` : ""}`);
}

console.log(`\n${cpus()[0]?.model ?? "?"}, ${availableParallelism()} CPUs, ${threads} threads, ctx ${ctx}, ` +
  `text ${text.replace(ROOT + "/", "")}, best of ${repeat}, load average ${load0.toFixed(1)} -> ${loadavg()[0]!.toFixed(1)}, ` +
  `total ${((performance.now() - t0) / 1000).toFixed(0)} s${argv.includes("--llama-env") ? `, llama.cpp env ${opt("--llama-env", "")}` : ""}\n`);
console.log("| GGUF | deepcast validate s | llama-perplexity s | wall deepcast / llama | CPU s deepcast | CPU s llama | CPU deepcast / llama | PPL deepcast | PPL llama.cpp |");
console.log("|---|---|---|---|---|---|---|---|---|");
const fmt = (x: number | null) => (x === null ? "-" : x.toFixed(3));
for (const r of rows) {
  const ratio = (a: number, b: number | null) => (b === null ? "-" : (a / b).toFixed(2));
  console.log(`| ${r.type} | ${fmt(r.ours)} | ${fmt(r.theirs)} | ${ratio(r.ours, r.theirs)} | ${fmt(r.oursCpu)} | ${fmt(r.theirCpu)} | ${ratio(r.oursCpu, r.theirCpu)} | ${r.oursPpl} | ${r.theirPpl} |`);
}
