/**
 * Output writing shared by every writer: full positional writes with clear disk errors, and the one
 * atomic-write scheme. Every output is written as `.<name>.partial` beside its final name and renamed
 * when complete, so a reader never sees a half-written file under a final name, and a rerun finds
 * (and may resume or replace) the temporaries of an interrupted one. Every file-system error on an
 * output becomes a WRITE_FAILED error naming the file.
 */
import { copyFile, mkdir, rename, rm, stat, statfs, writeFile, type FileHandle } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { DeepcastError } from "../errors.js";
import { fmtBytes } from "../units.js";
import type { CheckpointSource } from "./source.js";

/** What an errno means for an output, in words a user can act on. */
function writeReason(e: unknown): string {
  const code = (e as NodeJS.ErrnoException)?.code;
  switch (code) {
    case "ENOSPC": return "disk full";
    case "EDQUOT": return "disk quota exceeded";
    case "EROFS": return "read-only file system";
    case "EFBIG": return "file too large (file system or process file-size limit)";
    case "EACCES":
    case "EPERM": return "permission denied";
    case "ENOTDIR": return "a part of the path is not a folder";
    case "EISDIR": return "a folder is in the way";
    case "EEXIST": return "something else is in the way";
    case "ENAMETOOLONG": return "name too long";
    default: return (e as Error)?.message ?? String(e);
  }
}

/** A failed write, mkdir, sync, truncate or rename of an output as a coded error naming the file (and tensor). */
export function writeError(action: string, e: unknown, where: { file: string; tensor?: string }): DeepcastError {
  if (e instanceof DeepcastError) return e;
  return new DeepcastError(`cannot ${action}: ${writeReason(e)}`, { ...where, code: "WRITE_FAILED" }, { cause: e });
}

/** Runs an output operation, turning a file-system error into a WRITE_FAILED error naming `file`. */
export async function guardWrite<T>(action: string, file: string, op: () => Promise<T>): Promise<T> {
  try {
    return await op();
  } catch (e) {
    throw writeError(action, e, { file });
  }
}

/** Writes all of `data` at `position`; a full disk or quota is reported as such, naming the file and tensor. */
export async function writeFully(fh: FileHandle, data: Uint8Array, position: number, where: { file: string; tensor?: string }): Promise<void> {
  let done = 0;
  try {
    while (done < data.length) {
      const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
      done += bytesWritten;
    }
  } catch (e) {
    throw writeError("write output", e, where);
  }
}

/** Creates a folder (and its parents) for outputs. */
export async function mkdirOutput(dir: string): Promise<void> {
  await guardWrite("create the output folder", dir, () => mkdir(dir, { recursive: true }));
}

/** The temporary name `path` is written under until it is complete. */
export function partialPath(path: string): string {
  return join(dirname(path), `.${basename(path)}.partial`);
}

/** Writes a small file under its temporary name and renames it into place. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = partialPath(path);
  try {
    await writeFile(tmp, data);
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw writeError("write output", e, { file: path });
  }
}

/** Copies a file under a temporary name beside the target and renames it into place. */
export async function copyFileAtomic(from: string, to: string): Promise<void> {
  const tmp = partialPath(to);
  try {
    await copyFile(from, tmp);
    await rename(tmp, to);
  } catch (e) {
    await rm(tmp, { force: true }).catch(() => undefined);
    if ((e as NodeJS.ErrnoException).path === from || (e as NodeJS.ErrnoException).code === "ENOENT") {
      throw new DeepcastError(`cannot copy: ${(e as Error).message}`, { file: from }, { cause: e });
    }
    throw writeError("write output", e, { file: to });
  }
}

/** Free bytes on the file system that holds `path` (or its nearest existing parent). */
export async function freeBytes(path: string): Promise<number> {
  let p = resolve(path);
  for (;;) {
    const s = await statfs(p).catch(() => null);
    if (s) return s.bavail * s.bsize;
    const up = dirname(p);
    if (up === p) return Number.POSITIVE_INFINITY;
    p = up;
  }
}

/** The device of `path`, or of its nearest existing ancestor. */
async function deviceOf(path: string): Promise<number | null> {
  let p = resolve(path);
  for (;;) {
    const s = await stat(p).catch(() => null);
    if (s) return s.dev;
    const up = dirname(p);
    if (up === p) return null;
    p = up;
  }
}

/**
 * The free-space check every command runs before writing: the outputs still to write in `outDir`, and
 * for a remote source the download of `inputs` into its cache (on the same disk they add up).
 */
export async function checkFreeSpace(outDir: string, outBytes: number, source: CheckpointSource, inputs: readonly string[]): Promise<void> {
  const dl = source.pendingDownload ? await source.pendingDownload(inputs) : { dir: outDir, bytes: 0 };
  const sameDisk = dl.bytes === 0 || (await deviceOf(outDir)) === (await deviceOf(dl.dir));
  const needs: { dir: string; bytes: number; what: string }[] = sameDisk
    ? [{ dir: outDir, bytes: outBytes + dl.bytes, what: dl.bytes > 0 ? `the output needs ${fmtBytes(outBytes)} and the download into the Hugging Face cache ${fmtBytes(dl.bytes)}` : `the output needs ${fmtBytes(outBytes)} more` }]
    : [
        { dir: outDir, bytes: outBytes, what: `the output needs ${fmtBytes(outBytes)} more` },
        { dir: dl.dir, bytes: dl.bytes, what: `the download into the Hugging Face cache needs ${fmtBytes(dl.bytes)}` },
      ];
  for (const n of needs) {
    const free = await freeBytes(n.dir);
    if (n.bytes > free) {
      throw new DeepcastError(`not enough free disk space: ${n.what}, ${fmtBytes(free)} are free (pass --skip-space-check to try anyway)`, { file: n.dir, code: "NO_SPACE" });
    }
  }
}
