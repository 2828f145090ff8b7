/**
 * Issue 10 item 4, what matters to users: a low-bit GGUF quantized with our imatrix and one quantized
 * with llama-imatrix's give the same KL divergence against the original within 5% (`validate`,
 * llama-perplexity's protocol, ctx 256, the eval text).
 *
 *   npx tsx test/e2e/imatrix-kld.ts [--type IQ2_XXS] [--threads 2]
 *
 * IQ2_XXS is the type; `--type Q2_K_S` runs the same comparison with a K-quant. Steps:
 * deepcast imatrix on the FP8 fixture (ctx 256, the eval text); to-gguf -q TYPE with our imatrix and with llama-imatrix's (fixtures/llama-cpp-tiny-dsv3/tiny-dsv3.imatrix.gguf);
 * validate each against the FP8 fixture; compare the mean KLDs.
 */
import { spawnSync } from "node:child_process";
import { copyFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dirname, "..", "..");
const BIN = join(ROOT, "bin", "deepcast.js");
const FIXTURE = join(ROOT, "fixtures", "tiny-dsv3");
const TEXT = join(ROOT, "fixtures", "tiny-dsv3-golden", "eval", "kjv_eval.txt");
const GOLD = join(ROOT, "fixtures", "llama-cpp-tiny-dsv3", "tiny-dsv3.imatrix.gguf");
const opt = (name: string, fallback: string) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1]! : fallback);
const type = opt("--type", "IQ2_XXS");
const threads = opt("--threads", "2");

const dir = await mkdtemp(join(tmpdir(), "deepcast-imatrix-kld-"));
const run = (...args: string[]) => {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", cwd: dir, maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`deepcast ${args.join(" ")}: exit ${r.status}\n${r.stderr}`);
  return r.stdout;
};
try {
  await copyFile(TEXT, join(dir, "text.txt"));
  await copyFile(GOLD, join(dir, "llama.imatrix.gguf"));
  run("imatrix", FIXTURE, "-f", "text.txt", "-c", "256", "-o", "ours.imatrix.gguf", "--threads", threads);
  const kld: Record<string, number> = {};
  for (const who of ["ours", "llama"]) {
    run("to-gguf", FIXTURE, "-q", type, "--imatrix", `${who}.imatrix.gguf`, "-o", `${who}.gguf`, "--threads", threads);
    const v = JSON.parse(run("validate", `${who}.gguf`, "--reference", FIXTURE, "--tokenizer", FIXTURE, "--text", "text.txt", "--ctx", "256", "--json", "--threads", threads));
    kld[who] = v.kld.meanKld.value;
    console.log(`${type} with ${who === "ours" ? "deepcast imatrix" : "llama-imatrix"}: mean KLD ${kld[who]!.toFixed(6)}, PPL ${v.ppl.toFixed(4)} (base ${v.pplBase.toFixed(4)}), same top ${v.kld.sameTopPPercent.value.toFixed(3)}%`);
  }
  const rel = Math.abs(kld.ours! - kld.llama!) / kld.llama!;
  const ok = rel <= 0.05;
  console.log(`mean KLD differs by ${(100 * rel).toFixed(2)}% (limit 5%): ${ok ? "OK" : "FAIL"}`);
  process.exitCode = ok ? 0 : 1;
} finally {
  await rm(dir, { recursive: true, force: true });
}
