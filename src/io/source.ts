/**
 * Where a checkpoint comes from: a local folder, or a Hugging Face repo id (see hub.ts). Commands
 * see only this interface, so a shard is fetched only when a command asks for its path.
 */
import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { DeepcastError } from "../errors.js";
import { parseHeader, parseHeaderLength, readHeader, type SafetensorsHeader } from "./safetensors.js";

export interface SourceFile {
  /** Plain file name at the top level of the checkpoint. */
  name: string;
  size: number;
}

export interface CheckpointSource {
  /** For messages: "/data/DeepSeek-V3" or "deepseek-ai/DeepSeek-V3@main". */
  readonly description: string;
  /** Top-level files of the checkpoint. */
  listFiles(): Promise<SourceFile[]>;
  /** Whole content of a small file (JSON, tokenizer). */
  readFile(name: string): Promise<Buffer>;
  /** Validated safetensors header, read without fetching the tensor data where possible. */
  readHeader(name: string): Promise<SafetensorsHeader>;
  /** A local path holding the file's full content, fetching it first if needed. */
  localPath(name: string): Promise<string>;
  /** Identity of a file for resume fingerprints: size plus whatever the source knows (etag, mtime). */
  fileIdentity(name: string): Promise<string>;
  /** What `name` is when it is there but not a regular file ("a folder", "a FIFO", ...); null otherwise. */
  notAFile?(name: string): Promise<string | null>;
  /** For a remote source: the bytes of `names` still to download, and the folder they go to. */
  pendingDownload?(names: readonly string[]): Promise<{ dir: string; bytes: number }>;
}

export class LocalSource implements CheckpointSource {
  constructor(readonly dir: string) {}

  get description(): string {
    return this.dir;
  }

  async listFiles(): Promise<SourceFile[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (e) {
      throw new DeepcastError(`cannot read input folder: ${(e as Error).message}`, { file: this.dir });
    }
    const files: SourceFile[] = [];
    for (const name of names.sort()) {
      const s = await stat(join(this.dir, name)).catch(() => null);
      if (s?.isFile()) files.push({ name, size: s.size });
    }
    return files;
  }

  async readFile(name: string): Promise<Buffer> {
    try {
      return await readFile(join(this.dir, name));
    } catch (e) {
      throw new DeepcastError(`cannot read: ${(e as Error).message}`, { file: join(this.dir, name) });
    }
  }

  readHeader(name: string): Promise<SafetensorsHeader> {
    return readHeader(join(this.dir, name));
  }

  async localPath(name: string): Promise<string> {
    return join(this.dir, name);
  }

  async notAFile(name: string): Promise<string | null> {
    const s = await stat(join(this.dir, name)).catch(() => null);
    if (!s || s.isFile()) return null;
    return s.isDirectory() ? "a folder" : s.isFIFO() ? "a FIFO" : s.isSocket() ? "a socket" : s.isCharacterDevice() || s.isBlockDevice() ? "a device" : "not a regular file";
  }

  async fileIdentity(name: string): Promise<string> {
    const s = await stat(join(this.dir, name));
    return `${s.size}:${Math.floor(s.mtimeMs)}`;
  }
}

/** Parses a header from a function that returns byte ranges (used by remote sources). */
export async function readHeaderByRanges(
  name: string,
  size: number,
  range: (start: number, end: number) => Promise<Uint8Array>,
): Promise<SafetensorsHeader> {
  const n = parseHeaderLength(await range(0, 8), size, name);
  return parseHeader(await range(8, 8 + n), size, name);
}
