/**
 * `deepcast validate` (perplexity, llama protocol) against llama.cpp's `llama-perplexity` on the same
 * GGUF, text, context and threads, in one run: wall clock of each process, best of --repeat, and
 * the ratio deepcast / llama-perplexity per GGUF type.
 *
 *   npm run build        # addon + dist/ (the CLI runs dist/)
 *   npx tsx bench/validate-perplexity.ts [--llama-perplexity PATH] [--types BF16,Q8_0,Q4_K_M,IQ2_XXS] [--ctx 256]
 *                                        [--threads 2] [--repeat 5] [--text FILE] [--dir DIR]
 *                                        [--llama-env NAME=VALUE] [--no-agreement]
 *
 * The GGUFs are made once per --dir from fixtures/tiny-dsv3 with the project's own converter
 * (planToGguf/runToGguf, what `deepcast to-gguf` runs); IQ2_XXS with llama-imatrix's importance
 * matrix of the fixture (fixtures/llama-cpp-tiny-dsv3/tiny-dsv3.imatrix.gguf), as it requires one. The text defaults to the fixture's eval text
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
 *
 * Agreement (unless --no-agreement; needs llama-perplexity): once per GGUF, llama-perplexity writes its
 * log-probabilities of every scored position (`--kl-divergence-base`, 16-bit, as llama.cpp's KLD mode
 * reads them) and `deepcast validate --dump-logits` its float32 logits of the same chunks; the table
 * gets llama.cpp's KLD statistics of deepcast against llama.cpp on that same file (KL(P_llama || P_deepcast),
 * computed with llama-perplexity's own formulas: base log-probs below -16 skipped, same top = argmax equal)
 * and the token ids of both tokenizers are compared.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, rm } from "node:fs/promises";
import { availableParallelism, cpus, loadavg } from "node:os";
import { join, resolve } from "node:path";
import { planToGguf, runToGguf } from "../src/convert/to-gguf.js";
import { parseImatrix } from "../src/io/imatrix.js";
import { LocalSource } from "../src/io/source.js";
import { loadTokenizer } from "../src/model/tokenize.js";
import { kernels } from "../src/quant/kernels.js";

const ROOT = resolve(import.meta.dirname, "..");
const FIXTURE = join(ROOT, "fixtures", "tiny-dsv3");
const argv = process.argv.slice(2);
const opt = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1]! : fallback);
const llamaPpl = opt("--llama-perplexity", "/tmp/llama.cpp-bench/build/bin/llama-perplexity");
const types = opt("--types", "BF16,Q8_0,Q4_K_M,IQ2_XXS").split(",");
const agreement = !argv.includes("--no-agreement");
const IMATRIX = join(ROOT, "fixtures", "llama-cpp-tiny-dsv3", "tiny-dsv3.imatrix.gguf");
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
    // The IQ types need an importance matrix: llama-imatrix's of this fixture.
    const imatrix = type.startsWith("IQ") ? parseImatrix(await readFile(IMATRIX), IMATRIX) : undefined;
    const plan = await planToGguf(new LocalSource(FIXTURE), out, { ftype: type as never, ...(imatrix ? { imatrix } : {}) });
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

const deepcast = (path: string, extra: string[] = []) =>
  run(process.execPath, [join(ROOT, "bin", "deepcast.js"), "validate", path, "--text", text, "--tokenizer", FIXTURE,
    "--ctx", String(ctx), "--threads", String(threads), "--json", ...extra]);
const llama = (path: string, extra: string[] = []) =>
  run(llamaPpl, ["-m", path, "-f", text, "-c", String(ctx), "-b", String(Math.max(ctx, 2048)), "-t", String(threads), "-tb", String(threads), ...extra], llamaEnv);

interface Agreement { positions: number; meanKld: number; kld99: number; maxKld: number; sameTop: number; tokenMismatches: number }

/**
 * llama-perplexity's KLD statistics of deepcast against llama.cpp on one GGUF: llama.cpp's 16-bit
 * log-probs of every scored position (--kl-divergence-base) as the base, deepcast's float32 logits
 * (--dump-logits) as the candidate, llama-perplexity's formulas (perplexity.cpp log_softmax with a base).
 */
async function agreementOf(path: string, type: string): Promise<Agreement> {
  const base = join(dir, `${type}.llama-logits`);
  const dump = join(dir, `${type}.deepcast-logits.f32`);
  await rm(dump, { force: true });
  await llama(path, ["--kl-divergence-base", base]);
  await deepcast(path, ["--dump-logits", dump]);
  try {
    const b = await readFile(base);
    if (b.toString("latin1", 0, 8) !== "_logits_") throw new Error(`${base}: not a llama-perplexity logits file`);
    const nCtx = b.readInt32LE(8), nVocab = b.readInt32LE(12), nChunk = b.readInt32LE(16);
    const tokens = new Int32Array(b.buffer.slice(b.byteOffset + 20, b.byteOffset + 20 + nChunk * nCtx * 4));
    const nv = 2 * Math.floor((nVocab + 1) / 2) + 4;
    const first = Math.floor(nCtx / 2);
    const perChunk = nCtx - 1 - first;
    const recBase = 20 + nChunk * nCtx * 4;
    const ours = new Float32Array((await readFile(dump)).buffer.slice(0));
    if (ours.length !== nChunk * nCtx * nVocab) throw new Error(`${dump}: ${ours.length} logits, expected ${nChunk} x ${nCtx} x ${nVocab}`);
    // Our tokenizer on the same text: llama.cpp's ids (BOS first) should be ours.
    const tok = await loadTokenizer(FIXTURE);
    const ids = [...(tok.addBos && tok.bosId !== null ? [tok.bosId] : []), ...tok.encode(await readFile(text, "utf8"))];
    let tokenMismatches = 0;
    for (let i = 0; i < tokens.length; i++) if (tokens[i] !== ids[i]) tokenMismatches++;
    const f = Math.fround;
    const klds: number[] = [];
    let same = 0;
    for (let c = 0; c < nChunk; c++) {
      for (let k = 0; k < perChunk; k++) {
        const o = (c * nCtx + first + k) * nVocab;
        let max = -Infinity, imax = 0;
        for (let j = 0; j < nVocab; j++) if (ours[o + j]! > max) { max = ours[o + j]!; imax = j; }
        let sumExp = 0;
        for (let j = 0; j < nVocab; j++) sumExp += Math.exp(ours[o + j]! - max);
        const maxLse = f(max + f(Math.log(sumExp)));
        const r = recBase + ((c * perChunk + k) * nv) * 2;
        const scale = b.readFloatLE(r), minLog = b.readFloatLE(r + 4);
        let kld = 0, imaxBase = -1, pMax = 0;
        for (let j = 0; j < nVocab; j++) {
          const pLog = f(f(scale * b.readUInt16LE(r + 8 + 2 * j)) + minLog);
          if (j === 0 || pLog > pMax) { pMax = pLog; imaxBase = j; }
          if (pLog > -16) kld += Math.exp(pLog) * (pLog - ours[o + j]! + maxLse);
        }
        klds.push(kld);
        if (imax === imaxBase) same++;
      }
    }
    const sorted = Float64Array.from(klds).sort();
    return {
      positions: klds.length,
      meanKld: klds.reduce((a, x) => a + x, 0) / klds.length,
      kld99: sorted[Math.min(sorted.length - 1, Math.floor(0.99 * (sorted.length - 1)))]!,
      maxKld: sorted[sorted.length - 1]!,
      sameTop: same / klds.length,
      tokenMismatches,
    };
  } finally {
    await rm(base, { force: true });
    await rm(dump, { force: true });
  }
}

function deepcastPpl(out: string): string {
  const m = /"ppl"\s*:\s*([0-9.e+-]+)/.exec(out) ?? /PPL = ([0-9.]+)/.exec(out);
  return m ? Number(m[1]).toFixed(4) : "?";
}
function llamaPplOf(out: string): string {
  const m = /Final estimate: PPL = ([0-9.]+)/.exec(out);
  return m ? m[1]! : "?";
}

interface Row { type: string; ours: number; theirs: number | null; oursCpu: number; theirCpu: number | null; oursPpl: string; theirPpl: string; agree: Agreement | null }
const rows: Row[] = [];
const t0 = performance.now();
const load0 = loadavg()[0]!;
for (const type of types) {
  const path = gguf.get(type)!;
  // One untimed run of each (page cache, lazy loading), then --repeat alternating runs.
  const first = await deepcast(path);
  const firstLlama = haveLlama ? await llama(path) : null;
  let [ours, oursCpu, theirs, theirCpu] = [Infinity, Infinity, Infinity, Infinity];
  let theirPpl = firstLlama ? llamaPplOf(firstLlama.out) : "-";
  for (let r = 0; r < repeat; r++) {
    const a = await deepcast(path);
    [ours, oursCpu] = [Math.min(ours, a.seconds), Math.min(oursCpu, a.cpu)];
    if (haveLlama) {
      const b = await llama(path);
      [theirs, theirCpu] = [Math.min(theirs, b.seconds), Math.min(theirCpu, b.cpu)];
      if (theirPpl === "?") theirPpl = llamaPplOf(b.out);
    }
  }
  rows.push({ type, ours, theirs: haveLlama ? theirs : null, oursCpu, theirCpu: haveLlama ? theirCpu : null,
    oursPpl: deepcastPpl(first.out), theirPpl, agree: null });
  console.error(`${type}: deepcast ${ours.toFixed(3)} s${haveLlama ? `, llama-perplexity ${theirs.toFixed(3)} s` : ""}`);
}

// Agreement after all timed runs (its runs write large files and are not timed).
if (haveLlama && agreement) for (const r of rows) r.agree = await agreementOf(gguf.get(r.type)!, r.type);

console.log(`\n${cpus()[0]?.model ?? "?"}, ${availableParallelism()} CPUs, ${threads} threads, ctx ${ctx}, ` +
  `text ${text.replace(ROOT + "/", "")}, best of ${repeat}, load average ${load0.toFixed(1)} -> ${loadavg()[0]!.toFixed(1)}, ` +
  `total ${((performance.now() - t0) / 1000).toFixed(0)} s${argv.includes("--llama-env") ? `, llama.cpp env ${opt("--llama-env", "")}` : ""}\n`);
console.log("| GGUF | deepcast validate s | llama-perplexity s | wall deepcast / llama | CPU s deepcast | CPU s llama | CPU deepcast / llama | PPL deepcast | PPL llama.cpp |" +
  " mean KLD vs llama.cpp | 99% KLD | max KLD | same top % |");
console.log("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
const fmt = (x: number | null) => (x === null ? "-" : x.toFixed(3));
for (const r of rows) {
  const ratio = (a: number, b: number | null) => (b === null ? "-" : (a / b).toFixed(2));
  const a = r.agree;
  const agreeCols = a ? `${a.meanKld.toExponential(2)} | ${a.kld99.toExponential(2)} | ${a.maxKld.toExponential(2)} | ${(100 * a.sameTop).toFixed(2)} |` : "- | - | - | - |";
  console.log(`| ${r.type} | ${fmt(r.ours)} | ${fmt(r.theirs)} | ${ratio(r.ours, r.theirs)} | ${fmt(r.oursCpu)} | ${fmt(r.theirCpu)} | ${ratio(r.oursCpu, r.theirCpu)} | ${r.oursPpl} | ${r.theirPpl} | ${agreeCols}`);
}
for (const r of rows) {
  if (r.agree) console.log(`${r.type}: ${r.agree.positions} scored positions compared; token ids differing between llama.cpp's and deepcast's tokenizers: ${r.agree.tokenMismatches}`);
}
