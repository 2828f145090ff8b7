import yargs, { type CommandModule } from "yargs";
import { hideBin } from "yargs/helpers";
import { DeepcastError, usageError } from "../errors.js";
import { VERSION } from "../version.js";

/**
 * The command modules, in the order help lists them. Only the one a command line starts with is
 * loaded (each pulls in its own part of the library; loading them all is start-up time spent for
 * nothing); a line that names none (--help, --version, a typo) loads them all.
 */
const COMMANDS = {
  "fp8-to-bf16": () => import("./fp8-to-bf16.js"),
  imatrix: () => import("./imatrix.js"),
  "to-demo": () => import("./to-demo.js"),
  "to-gguf": () => import("./to-gguf.js"),
  validate: () => import("./validate.js"),
  inspect: () => import("./inspect.js"),
} as const;

async function commandModules(argv: string[]) {
  const named = Object.entries(COMMANDS).find(([name]) => name === argv[0]);
  return Promise.all((named ? [named] : Object.entries(COMMANDS)).map(([, load]) => load()));
}

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
  const y = yargs(argv)
    .scriptName("deepcast")
    .usage("$0 <command> [options]\n\nConvert and quantize DeepSeek-V3-class FP8 checkpoints.");
  for (const m of await commandModules(argv)) y.command(m as unknown as CommandModule);
  // yargs renders the command's whole help text after starting its handler, on every run, in case a
  // later failure wants it (~0.1 s of start-up for validate's); the fail handler below renders it
  // itself when it is needed.
  const usage = (y as unknown as { getInternalMethods?: () => { getUsageInstance?: () => { cacheHelpMessage?: () => void } } })
    .getInternalMethods?.().getUsageInstance?.();
  if (usage?.cacheHelpMessage) usage.cacheHelpMessage = () => undefined;
  await y
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
