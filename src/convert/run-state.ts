/**
 * Output folders that survive interruption. A manifest beside the outputs fingerprints the inputs
 * and options; each output file is recorded (size, mtime) only after it was renamed into place, so
 * a rerun skips exactly the files that are complete and still as written, and refuses to mix runs
 * with different inputs or options.
 */
import { createHash } from "node:crypto";
import { mkdir, readdir, readFile, realpath, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { DeepcastError } from "../errors.js";
import { writeFileAtomic } from "../io/write.js";

export const MANIFEST = ".deepcast-run.json";

export interface OutputRecord {
  size: number;
  mtimeMs: number;
}

export interface Manifest {
  tool: "deepcast";
  command: string;
  fingerprint: string;
  outputs: Record<string, OutputRecord>;
  /** Command-specific progress inside unfinished outputs (e.g. input shards already written). */
  progress?: Record<string, number>;
  complete: boolean;
}

export function fingerprint(value: unknown): string {
  return createHash("sha256").update(JSON.stringify(value)).digest("hex");
}

export interface RunStateOptions {
  command: string;
  fingerprint: string;
  force: boolean;
  inputDir?: string;
  /**
   * For outputs that are files beside others (a GGUF in a folder of other things): the file names
   * this run owns. Only those count as "something else would be overwritten", and the manifest is
   * kept as `.<first output>.deepcast-run.json`. Without it the whole folder belongs to the run.
   */
  outputs?: string[];
}

export class RunState {
  private constructor(
    readonly dir: string,
    readonly manifest: Manifest,
    /** True when the manifest was found and matched: some outputs may be reused. */
    readonly resumed: boolean,
    private readonly manifestName: string,
  ) {}

  /**
   * Opens OUT for a run. A matching manifest resumes; a different one, or a non-empty folder with
   * no manifest, is refused unless `force`. OUT must not be the input folder.
   */
  static async open(dir: string, opts: RunStateOptions): Promise<RunState> {
    const out = resolve(dir);
    const manifestName = opts.outputs?.length ? `.${opts.outputs[0]}.deepcast-run.json` : MANIFEST;
    if (opts.inputDir && (await sameDir(out, opts.inputDir))) {
      throw new DeepcastError("output folder is the input folder: inputs are never modified; choose another OUT", { file: out });
    }
    const fresh: Manifest = { tool: "deepcast", command: opts.command, fingerprint: opts.fingerprint, outputs: {}, complete: false };
    const entries = await readdir(out).catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return null;
      throw new DeepcastError(`cannot read output folder: ${e.message}`, { file: out });
    });
    if (entries === null) {
      await mkdir(out, { recursive: true });
      // Saved at once: temporary files of an interrupted first run then belong to a known run.
      const state = new RunState(out, fresh, false, manifestName);
      await state.save();
      return state;
    }
    const previous = await readManifest(join(out, manifestName));
    if (previous && previous.command === opts.command && previous.fingerprint === opts.fingerprint) {
      return new RunState(out, previous, true, manifestName);
    }
    const owned = opts.outputs ? entries.filter((e) => opts.outputs!.includes(e)) : entries;
    if (!opts.force) {
      if (previous) {
        const what = opts.outputs ? `${opts.outputs[0]} comes from` : "output folder holds";
        throw new DeepcastError(
          `${what} a ${previous.complete ? "finished" : "partial"} \`${previous.command}\` run with different inputs or options; ` +
            "rerun with the same ones to resume, or pass --force to start over", { file: opts.outputs ? join(out, opts.outputs[0]!) : out });
      }
      if (owned.length > 0) {
        throw new DeepcastError(
          opts.outputs ? `${owned[0]} already exists; pass --force to overwrite` : "output folder exists and is not empty; pass --force to overwrite",
          { file: opts.outputs ? join(out, owned[0]!) : out });
      }
    }
    const state = new RunState(out, fresh, false, manifestName);
    await state.save();
    return state;
  }

  /** True when `name` was completed by this run (or the run resumed) and is still as written. */
  async isDone(name: string): Promise<boolean> {
    const rec = this.manifest.outputs[name];
    if (!rec) return false;
    const s = await stat(join(this.dir, name)).catch(() => null);
    return !!s && s.isFile() && s.size === rec.size && Math.floor(s.mtimeMs) === rec.mtimeMs;
  }

  /** Records a file that was renamed into place. */
  async markDone(name: string): Promise<void> {
    const s = await stat(join(this.dir, name));
    this.manifest.outputs[name] = { size: s.size, mtimeMs: Math.floor(s.mtimeMs) };
    await this.save();
  }

  /** Records command-specific progress (saved with the manifest). */
  async setProgress(progress: Record<string, number>): Promise<void> {
    this.manifest.progress = progress;
    await this.save();
  }

  async markComplete(): Promise<void> {
    this.manifest.complete = true;
    delete this.manifest.progress;
    await this.save();
  }

  private async save(): Promise<void> {
    await writeFileAtomic(join(this.dir, this.manifestName), JSON.stringify(this.manifest, null, 1) + "\n");
  }
}

async function readManifest(path: string): Promise<Manifest | null> {
  const text = await readFile(path, "utf8").catch(() => null);
  if (text === null) return null;
  try {
    const m = JSON.parse(text) as Manifest;
    return m && m.tool === "deepcast" && typeof m.fingerprint === "string" && m.outputs ? m : null;
  } catch {
    return null;
  }
}

async function sameDir(a: string, b: string): Promise<boolean> {
  const ra = await realpath(a).catch(() => resolve(a));
  const rb = await realpath(b).catch(() => resolve(b));
  return ra === rb;
}
