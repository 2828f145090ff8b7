/**
 * Output writing shared by every writer: full positional writes with clear disk errors, and the one
 * atomic-write scheme. Every output is written as `.<name>.partial` beside its final name and renamed
 * when complete, so a reader never sees a half-written file under a final name, and a rerun finds
 * (and may resume or replace) the temporaries of an interrupted one.
 */
import { copyFile, rename, statfs, writeFile, type FileHandle } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { DeepcastError } from "../errors.js";

/** Writes all of `data` at `position`; a full disk or quota is reported as such, naming the file and tensor. */
export async function writeFully(fh: FileHandle, data: Uint8Array, position: number, where: { file: string; tensor?: string }): Promise<void> {
  let done = 0;
  try {
    while (done < data.length) {
      const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
      done += bytesWritten;
    }
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === "ENOSPC" ? "disk full" : code === "EDQUOT" ? "disk quota exceeded" : (e as Error).message;
    throw new DeepcastError(`cannot write output: ${why}`, where, { cause: e });
  }
}

/** The temporary name `path` is written under until it is complete. */
export function partialPath(path: string): string {
  return join(dirname(path), `.${basename(path)}.partial`);
}

/** Writes a small file under its temporary name and renames it into place. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = partialPath(path);
  await writeFile(tmp, data);
  await rename(tmp, path);
}

/** Copies a file under a temporary name beside the target and renames it into place. */
export async function copyFileAtomic(from: string, to: string): Promise<void> {
  const tmp = partialPath(to);
  await copyFile(from, tmp);
  await rename(tmp, to);
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
