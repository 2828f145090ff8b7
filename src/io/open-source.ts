/** Turns the user's input argument into a checkpoint source: a local folder or a Hugging Face repo id. */
import { stat } from "node:fs/promises";
import { DeepcastError } from "../errors.js";
import type { OnEvent } from "../events.js";
import { HubSource, isHubRepoId } from "./hub.js";
import { LocalSource, type CheckpointSource } from "./source.js";

export async function openSource(
  spec: string,
  opts: { revision?: string; fetch?: typeof fetch; cacheDir?: string; onEvent?: OnEvent } = {},
): Promise<CheckpointSource> {
  const s = await stat(spec).catch(() => null);
  if (s?.isDirectory()) return new LocalSource(spec);
  if (s) throw new DeepcastError("input is not a folder: give the checkpoint folder or a Hugging Face repo id", { file: spec });
  if (isHubRepoId(spec)) return new HubSource(spec, opts);
  throw new DeepcastError(
    "input folder not found and not a Hugging Face repo id (owner/name, like deepseek-ai/DeepSeek-V3)",
    { file: spec },
  );
}
