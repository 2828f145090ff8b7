/**
 * Output folders that survive interruption. A manifest beside the outputs fingerprints the inputs
 * and options; each output file is recorded (size, mtime) only after it was renamed into place, so
 * a rerun skips exactly the files that are complete and still as written, and refuses to mix runs
 * with different inputs or options.
 */
import { createHash } from "node:crypto";
import { unlinkSync } from "node:fs";
import { lstat, open, readdir, readFile, realpath, stat, unlink } from "node:fs/promises";
import { hostname } from "node:os";
import { dirname, join, relative, resolve, sep, isAbsolute } from "node:path";
import { DeepcastError } from "../errors.js";
import { mkdirOutput, writeFileAtomic } from "../io/write.js";

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
  /** Names of the files the run will write in OUT: each must be a regular file if it exists (even with --force). */
  files?: string[];
  /** Where a note is written (taking over a stale lock); default stderr. */
  note?: (line: string) => void;
}

/** Suffix of the lock file beside the run record: `<record>.lock` holds the pid and host of the run that owns OUT. */
export const LOCK_SUFFIX = ".lock";

export class RunState {
  private constructor(
    readonly dir: string,
    readonly manifest: Manifest,
    /** True when the manifest was found and matched: some outputs may be reused. */
    readonly resumed: boolean,
    private readonly manifestName: string,
    private readonly lock: OutputLock,
  ) {}

  /**
   * Opens OUT for a run. A matching manifest resumes; a different one, or a non-empty folder with
   * no manifest, is refused unless `force`. OUT must not be the input folder.
   */
  static async open(dir: string, opts: RunStateOptions): Promise<RunState> {
    const out = resolve(dir);
    const manifestName = opts.outputs?.length ? `.${opts.outputs[0]}.deepcast-run.json` : MANIFEST;
    if (opts.inputDir) await refuseOutputInInput(out, opts.inputDir);
    const existing = await stat(out).catch(() => null);
    if (existing && !existing.isDirectory()) {
      throw new DeepcastError("the output folder is not a folder", { file: out, code: "NOT_A_FILE" });
    }
    const fresh: Manifest = { tool: "deepcast", command: opts.command, fingerprint: opts.fingerprint, outputs: {}, complete: false };
    if (!existing) await mkdirOutput(out);
    for (const name of [...(opts.outputs ?? []), ...(opts.files ?? [])]) {
      const s = await lstat(join(out, name)).catch(() => null);
      if (s && !s.isFile()) {
        throw new DeepcastError("the output name is taken by something that is not a regular file (a folder, link, FIFO or device); deepcast never replaces it, even with --force",
          { file: join(out, name), code: "NOT_A_FILE" });
      }
    }
    const lock = await OutputLock.take(join(out, manifestName + LOCK_SUFFIX), out, opts.note);
    try {
      const entries = await readdir(out).catch((e: NodeJS.ErrnoException) => {
        throw new DeepcastError(`cannot read output folder: ${e.message}`, { file: out });
      });
      const previous = await readManifest(join(out, manifestName));
      if (previous && previous.command === opts.command && previous.fingerprint === opts.fingerprint) {
        return new RunState(out, previous, true, manifestName, lock);
      }
      // What the run would overwrite: its own outputs, or (a folder run) anything but run records and temporaries.
      const owned = opts.outputs
        ? entries.filter((e) => opts.outputs!.includes(e))
        : entries.filter((e) => !isRunFile(e));
      // A run record left beside outputs that are gone (deleted, never written) describes nothing: start over.
      if (!opts.force && owned.length > 0) {
        if (previous) {
          const what = opts.outputs ? `${opts.outputs[0]} comes from` : "output folder holds";
          throw new DeepcastError(
            `${what} a ${previous.complete ? "finished" : "partial"} \`${previous.command}\` run with different inputs or options; ` +
              "rerun with the same ones to resume, or pass --force to start over",
            { file: opts.outputs ? join(out, owned[0]!) : out, code: "RESUME_MISMATCH" });
        }
        throw new DeepcastError(
          opts.outputs ? `${owned[0]} already exists; pass --force to overwrite` : "output folder exists and is not empty; pass --force to overwrite",
          { file: opts.outputs ? join(out, owned[0]!) : out, code: "OUTPUT_EXISTS" });
      }
      const state = new RunState(out, fresh, false, manifestName, lock);
      // Saved at once: temporary files of an interrupted first run then belong to a known run.
      await state.save();
      return state;
    } catch (e) {
      await lock.release();
      throw e;
    }
  }

  /** Gives up the lock on OUT (also done on exit and on signals). */
  async close(): Promise<void> {
    await this.lock.release();
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

/** Run records, locks and temporaries: files a run leaves in OUT that are not outputs. */
function isRunFile(name: string): boolean {
  return name === MANIFEST || name === MANIFEST + LOCK_SUFFIX || name.endsWith(".partial") ||
    (name.startsWith(".") && (name.endsWith(".deepcast-run.json") || name.endsWith(".deepcast-run.json" + LOCK_SUFFIX)));
}

/** The real path of `p`, or of its nearest existing parent with the rest appended. */
async function realOrNearest(p: string): Promise<string> {
  const abs = resolve(p);
  const r = await realpath(abs).catch(() => null);
  if (r) return r;
  const up = dirname(abs);
  return up === abs ? abs : join(await realOrNearest(up), abs.slice(up.length));
}

/** Refuses an output folder that is the input folder or lies inside it (inputs are never modified). */
export async function refuseOutputInInput(out: string, inputDir: string): Promise<void> {
  const [o, i] = [await realOrNearest(out), await realOrNearest(inputDir)];
  const rel = relative(i, o);
  if (rel === "" || (!rel.startsWith(".." + sep) && rel !== ".." && !isAbsolute(rel))) {
    throw new DeepcastError(
      rel === "" ? "output folder is the input folder: inputs are never modified; choose another OUT"
        : `the output lies inside the input folder ${inputDir}: inputs are never modified; choose another OUT`,
      { file: out, code: "OUTPUT_IN_INPUT" });
  }
}

/**
 * An exclusive lock file beside the run record, created with O_EXCL and holding the owner's pid and
 * host. A lock whose process is gone (same host) is taken over with a note; it is removed when the
 * run ends, and on exit or a signal.
 */
class OutputLock {
  private released = false;
  private readonly onExit = () => {
    try {
      unlinkSync(this.path);
    } catch {
      /* already gone */
    }
  };

  private constructor(readonly path: string) {
    process.once("exit", this.onExit);
  }

  static async take(path: string, out: string, note: (line: string) => void = (l) => process.stderr.write(l + "\n")): Promise<OutputLock> {
    const me = { pid: process.pid, host: hostname() };
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fh = await open(path, "wx");
        try {
          await fh.writeFile(JSON.stringify(me) + "\n");
        } finally {
          await fh.close();
        }
        return new OutputLock(path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw new DeepcastError(`cannot create the lock file: ${(e as Error).message}`, { file: path, code: "WRITE_FAILED" }, { cause: e });
      }
      const holder = await readLock(path);
      if (holder && holder.host === me.host && !pidAlive(holder.pid)) {
        note(`note: taking over the lock of run ${holder.pid}, which is gone (${path})`);
        await unlink(path).catch(() => undefined);
        continue;
      }
      const who = holder ? `run ${holder.pid} on ${holder.host}` : "another run";
      throw new DeepcastError(
        `${who} holds this output (lock ${path}); wait for it to finish, or delete the lock file if no such run exists`,
        { file: out, code: "OUTPUT_LOCKED" });
    }
    throw new DeepcastError("cannot take the lock: it keeps coming back", { file: path, code: "OUTPUT_LOCKED" });
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    process.off("exit", this.onExit);
    await unlink(this.path).catch(() => undefined);
  }
}

async function readLock(path: string): Promise<{ pid: number; host: string } | null> {
  const text = await readFile(path, "utf8").catch(() => null);
  if (text === null) return null;
  try {
    const j = JSON.parse(text) as { pid?: unknown; host?: unknown };
    return Number.isSafeInteger(j.pid) && typeof j.host === "string" ? { pid: j.pid as number, host: j.host } : null;
  } catch {
    return null;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}
