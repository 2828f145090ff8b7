import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { DeepcastError, usageError } from "../errors.js";
import { VERSION } from "../version.js";
import * as fp8ToBf16 from "./fp8-to-bf16.js";
import * as inspect from "./inspect.js";
import * as imatrix from "./imatrix.js";
import * as toDemo from "./to-demo.js";
import * as toGguf from "./to-gguf.js";
import * as validate from "./validate.js";

/** Options that may be repeated (their value is a list); any other given twice is a usage error. */
const REPEATABLE = new Set(["_", "$0", "tensor-type", "tensorType"]);

/** `-o a -o b` would leave an array where one value is expected: refuse it, naming the option. */
function refuseRepeatedOptions(argv: Record<string, unknown>): void {
  for (const [key, value] of Object.entries(argv)) {
    if (REPEATABLE.has(key) || !Array.isArray(value)) continue;
    const flag = key.length === 1 ? `-${key}` : `--${key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase())}`;
    throw usageError(`option ${flag} was given ${value.length} times; give it once`);
  }
}

/** A file-system error that escaped the code that should have named it: reported without a stack. */
function fsErrorAsDeepcast(e: unknown): DeepcastError | null {
  const err = e as NodeJS.ErrnoException;
  if (!err || typeof err.code !== "string" || typeof err.syscall !== "string") return null;
  const writes = new Set(["write", "open", "mkdir", "rename", "ftruncate", "fsync", "copyfile", "unlink", "rmdir", "symlink"]);
  return new DeepcastError(`${err.syscall} failed: ${err.message}`, {
    ...(typeof err.path === "string" ? { file: err.path } : {}),
    code: err.code === "ENOENT" ? "NOT_FOUND" : writes.has(err.syscall) ? "WRITE_FAILED" : "INVALID_INPUT",
  });
}

export async function main(argv: string[]): Promise<void> {
  // Output piped into `head` and closed early: stop quietly, as other Unix tools do.
  process.stdout.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code === "EPIPE") process.exit(0);
    throw e;
  });
  await yargs(argv)
    .scriptName("deepcast")
    .usage("$0 <command> [options]\n\nConvert and quantize DeepSeek-V3-class FP8 checkpoints.")
    .command(fp8ToBf16)
    .command(imatrix)
    .command(toDemo)
    .command(toGguf)
    .command(validate)
    .command(inspect)
    .middleware((a) => refuseRepeatedOptions(a as Record<string, unknown>), true)
    .demandCommand(1, "Choose a command (see --help)")
    .strict()
    .help()
    .version("version", "Show the deepcast version", VERSION)
    .fail((msg, err, y) => {
      if (err) throw err;
      process.stderr.write(`${y.help()}\n\n${msg}\n`);
      process.exit(2);
    })
    .parseAsync();
}

main(hideBin(process.argv)).catch((e: unknown) => {
  e = fsErrorAsDeepcast(e) ?? e;
  if (e instanceof DeepcastError) {
    process.stderr.write(`deepcast: error: ${e.message} [${e.code}]\n`);
    process.exitCode = e.exitStatus;
    return;
  }
  process.stderr.write(`deepcast: unexpected error: ${(e as Error)?.stack ?? String(e)}\n`);
  process.exitCode = 1;
});
