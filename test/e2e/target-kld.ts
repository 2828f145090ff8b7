/**
 * Issue 12 item 3, as a user checks it: at the exact file size of a fixed mix (IQ2_XXS, Q4_K_M) made
 * with the shared imatrix, `to-gguf --target-size SIZE --target-measure CALIBRATION` makes a file that is
 * no larger, at most 3% smaller, and whose mean KLD against the FP8 checkpoint (`validate`, the eval
 * text, llama-perplexity's protocol, ctx 256) is at most 0.9x the fixed mix's. The calibration text is
 * the World English Bible excerpt in fixtures/calibration/, never the eval text.
 *
 *   npm run build:ts && npx tsx test/e2e/target-kld.ts [--mixes IQ2_XXS,Q4_K_M] [--chunks 4] [--threads 2]
 *
 * --chunks: chunks of 256 tokens of the calibration text per measurement (the CLI's default is 16;
 * 4 keeps this check near a minute per mix on 2 cores). Exit code 1 when a mix misses the goal.
 */
import { spawnSync } from "node:child_process";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dirname, "..", "..");
const BIN = join(ROOT, "bin", "deepcast.js");
const FIXTURE = join(ROOT, "fixtures", "tiny-dsv3");
const EVAL = join(ROOT, "fixtures", "tiny-dsv3-golden", "eval", "kjv_eval.txt");
const CALIBRATION = join(ROOT, "fixtures", "calibration", "web-jonah-micah-colossians-james.txt");
const IMATRIX = join(ROOT, "fixtures", "llama-cpp-tiny-dsv3", "tiny-dsv3.imatrix.gguf");
const opt = (name: string, fallback: string) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1]! : fallback);
const mixes = opt("--mixes", "IQ2_XXS,Q4_K_M").split(",");
const chunks = opt("--chunks", "4");
const threads = opt("--threads", "2");

const dir = await mkdtemp(join(tmpdir(), "deepcast-target-kld-"));
const run = (...args: string[]) => {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", cwd: dir, maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`deepcast ${args.join(" ")}: exit ${r.status}\n${r.stderr}`);
  return r.stdout;
};
const kld = (gguf: string) =>
  JSON.parse(run("validate", gguf, "--reference", FIXTURE, "--tokenizer", FIXTURE, "--text", EVAL, "--ctx", "256", "--json", "--threads", threads)).kld.meanKld.value as number;
let failed = 0;
try {
  for (const mix of mixes) {
    const t0 = performance.now();
    run("to-gguf", FIXTURE, "-q", mix, "--imatrix", IMATRIX, "-o", "fixed.gguf", "--threads", threads, "--force");
    const size = (await stat(join(dir, "fixed.gguf"))).size;
    run("to-gguf", FIXTURE, "--target-size", String(size), "--imatrix", IMATRIX, "--target-measure", CALIBRATION,
      "--target-measure-ctx", "256", "--target-measure-chunks", chunks, "-o", "target.gguf", "--threads", threads, "--force");
    const tsize = (await stat(join(dir, "target.gguf"))).size;
    const fixed = kld("fixed.gguf");
    const target = kld("target.gguf");
    const ok = target <= 0.9 * fixed && tsize <= size && tsize >= 0.97 * size;
    if (!ok) failed++;
    console.log(`${mix}: ${size} B, mean KLD ${fixed.toFixed(5)}; --target-size ${size} --target-measure: ${tsize} B, mean KLD ${target.toFixed(5)} ` +
      `(${(target / fixed).toFixed(2)}x, goal <= 0.90x): ${ok ? "OK" : "FAIL"} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  }
  process.exitCode = failed ? 1 : 0;
} finally {
  await rm(dir, { recursive: true, force: true });
}
