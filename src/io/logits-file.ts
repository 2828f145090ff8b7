/** The --dump-logits file: float32 logits, little-endian, row after row. */
import { open, rename, unlink, type FileHandle } from "node:fs/promises";
import { endianness } from "node:os";
import { DeepcastError } from "../errors.js";
import { partialPath } from "./write.js";

/**
 * Writes float32 logits little-endian to a temporary file beside `file`, renamed to `file` by
 * `commit` (so `file` is only ever complete); `abort` removes the temporary file.
 */
export class LogitsFileWriter {
  private constructor(
    readonly file: string,
    readonly tempFile: string,
    private fh: FileHandle | null,
  ) {}

  bytes = 0;
  private committed = false;

  static async create(file: string): Promise<LogitsFileWriter> {
    const temp = partialPath(file);
    let fh: FileHandle;
    try {
      fh = await open(temp, "w");
    } catch (e) {
      throw new DeepcastError(`cannot write the logits file: ${(e as Error).message}`, { file: temp });
    }
    return new LogitsFileWriter(file, temp, fh);
  }

  async write(logits: Float32Array): Promise<void> {
    if (!this.fh) throw new Error("logits file already closed");
    let bytes = new Uint8Array(logits.buffer, logits.byteOffset, logits.byteLength);
    if (endianness() === "BE") {
      const swapped = new Uint8Array(bytes.length);
      for (let i = 0; i < bytes.length; i += 4) {
        swapped[i] = bytes[i + 3]!;
        swapped[i + 1] = bytes[i + 2]!;
        swapped[i + 2] = bytes[i + 1]!;
        swapped[i + 3] = bytes[i]!;
      }
      bytes = swapped;
    }
    try {
      let done = 0;
      while (done < bytes.length) {
        const { bytesWritten } = await this.fh.write(bytes, done, bytes.length - done);
        done += bytesWritten;
      }
    } catch (e) {
      throw new DeepcastError(`cannot write the logits file: ${(e as Error).message}`, { file: this.tempFile });
    }
    this.bytes += bytes.length;
  }

  async commit(): Promise<void> {
    const fh = this.fh;
    if (!fh) return;
    this.fh = null;
    this.committed = true;
    try {
      await fh.sync();
      await fh.close();
      await rename(this.tempFile, this.file);
    } catch (e) {
      await unlink(this.tempFile).catch(() => undefined);
      throw new DeepcastError(`cannot write the logits file: ${(e as Error).message}`, { file: this.file });
    }
  }

  /** Removes the temporary file (nothing after a successful commit). */
  async abort(): Promise<void> {
    if (this.committed) return;
    const fh = this.fh;
    this.fh = null;
    await fh?.close().catch(() => undefined);
    await unlink(this.tempFile).catch(() => undefined);
  }
}
