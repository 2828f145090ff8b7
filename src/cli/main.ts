import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { DeepcastError } from "../errors.js";
import * as fp8ToBf16 from "./fp8-to-bf16.js";
import * as imatrix from "./imatrix.js";
import * as toDemo from "./to-demo.js";
import * as toGguf from "./to-gguf.js";
import * as validate from "./validate.js";

export async function main(argv: string[]): Promise<void> {
  await yargs(argv)
    .scriptName("deepcast")
    .usage("$0 <command> [options]\n\nConvert and quantize DeepSeek-V3-class FP8 checkpoints.")
    .command(fp8ToBf16)
    .command(imatrix)
    .command(toDemo)
    .command(toGguf)
    .command(validate)
    .demandCommand(1, "Choose a command (see --help)")
    .strict()
    .help()
    .version(false)
    .fail((msg, err, y) => {
      if (err) throw err;
      process.stderr.write(`${y.help()}\n\n${msg}\n`);
      process.exit(2);
    })
    .parseAsync();
}

main(hideBin(process.argv)).catch((e: unknown) => {
  if (e instanceof DeepcastError) {
    process.stderr.write(`deepcast: error: ${e.message} [${e.code}]\n`);
    process.exitCode = e.exitStatus;
    return;
  }
  process.stderr.write(`deepcast: unexpected error: ${(e as Error)?.stack ?? String(e)}\n`);
  process.exitCode = 1;
});
