/**
 * A safetensors file filled in any order: the header is written first and the file is sized to its
 * final length, then each tensor's bytes are written at their planned offsets, in as many pieces
 * and in whatever order the caller produces them. The file lives under a temporary name until
 * `commit()` has checked that every byte of every tensor arrived, synced it and renamed it.
 *
 * A partial file can be reopened after an interruption (`reopen`) when its size and header are
 * exactly those planned; the caller then says which tensors it already holds (`markWritten`).
 */
import { open, rename, rm, stat, type FileHandle } from "node:fs/promises";
import { DeepcastError } from "../errors.js";
import { tensorBytes } from "./dtypes.js";
import { encodeHeader, readFully, type TensorSpec } from "./safetensors.js";
import { guardWrite, partialPath, writeError, writeFully } from "./write.js";

interface Slot {
  spec: TensorSpec;
  /** Absolute file offset of the tensor's first byte. */
  start: number;
  size: number;
  written: number;
}

export class PositionalSafetensorsWriter {
  private readonly slots: Map<string, Slot>;
  private closed = false;

  private constructor(
    readonly path: string,
    readonly tmpPath: string,
    private readonly fh: FileHandle,
    tensors: readonly TensorSpec[],
    offsets: [number, number][],
    headerBytes: number,
    /** Size of the complete file. */
    readonly expectedSize: number,
  ) {
    this.slots = new Map(tensors.map((t, i) => {
      const [b, e] = offsets[i]!;
      return [t.name, { spec: t, start: headerBytes + b, size: e - b, written: 0 }];
    }));
  }

  private static layout(tensors: readonly TensorSpec[], metadata: Record<string, string> | null) {
    const { bytes, offsets } = encodeHeader(tensors, metadata);
    const expectedSize = bytes.length + (offsets.length ? offsets[offsets.length - 1]![1] : 0);
    return { bytes, offsets, expectedSize };
  }

  /** Starts a new file under the temporary name (replacing any old one) with the header in place. */
  static async create(path: string, tensors: readonly TensorSpec[], metadata: Record<string, string> | null): Promise<PositionalSafetensorsWriter> {
    const { bytes, offsets, expectedSize } = PositionalSafetensorsWriter.layout(tensors, metadata);
    const tmp = partialPath(path);
    const fh = await open(tmp, "w").catch((e: NodeJS.ErrnoException) => {
      throw writeError("create the output", e, { file: tmp });
    });
    const w = new PositionalSafetensorsWriter(path, tmp, fh, tensors, offsets, bytes.length, expectedSize);
    try {
      await w.writeAt(bytes, 0, undefined);
      await guardWrite("size the output", tmp, () => fh.truncate(expectedSize));
    } catch (e) {
      await w.abort();
      throw e;
    }
    return w;
  }

  /**
   * Reopens the temporary file of an interrupted run when it has exactly the planned size and
   * header; otherwise returns null (the caller starts that file over).
   */
  static async reopen(path: string, tensors: readonly TensorSpec[], metadata: Record<string, string> | null): Promise<PositionalSafetensorsWriter | null> {
    const { bytes, offsets, expectedSize } = PositionalSafetensorsWriter.layout(tensors, metadata);
    const tmp = partialPath(path);
    const s = await stat(tmp).catch(() => null);
    if (!s?.isFile() || s.size !== expectedSize) return null;
    const fh = await open(tmp, "r+").catch(() => null);
    if (!fh) return null;
    const head = Buffer.alloc(bytes.length);
    const ok = await readFully(fh, head, 0, tmp).then(() => head.equals(bytes), () => false);
    if (!ok) {
      await fh.close();
      return null;
    }
    return new PositionalSafetensorsWriter(path, tmp, fh, tensors, offsets, bytes.length, expectedSize);
  }

  has(name: string): boolean {
    return this.slots.has(name);
  }

  private slot(name: string): Slot {
    const s = this.slots.get(name);
    if (!s) throw new DeepcastError("internal: this output file has no such tensor", { file: this.path, tensor: name });
    return s;
  }

  /** Writes `data` at byte `offset` of tensor `name`'s data. */
  async write(name: string, offset: number, data: Uint8Array): Promise<void> {
    const s = this.slot(name);
    if (offset < 0 || offset + data.length > s.size) {
      throw new DeepcastError(`internal: write of ${data.length} bytes at ${offset} is outside the tensor's ${s.size} bytes`, { file: this.path, tensor: name });
    }
    if (s.written + data.length > s.size) {
      throw new DeepcastError(`internal: more bytes written than the tensor holds (${s.written + data.length} > ${s.size})`, { file: this.path, tensor: name });
    }
    await this.writeAt(data, s.start + offset, name);
    s.written += data.length;
  }

  /** Records that a reopened file already holds every byte of tensor `name`. */
  markWritten(name: string): void {
    const s = this.slot(name);
    s.written = s.size;
  }

  private async writeAt(data: Uint8Array, position: number, tensor: string | undefined): Promise<void> {
    await writeFully(this.fh, data, position, { file: this.tmpPath, tensor });
  }

  /** Flushes everything written so far to disk (writes may continue meanwhile). */
  async sync(): Promise<void> {
    await guardWrite("sync the output", this.tmpPath, () => this.fh.sync());
  }

  /** Checks that every tensor is complete, flushes, and renames the file to its final name. */
  async commit(): Promise<void> {
    for (const s of this.slots.values()) {
      if (s.written !== s.size) {
        throw new DeepcastError(`internal: output incomplete, ${s.written} of ${s.size} bytes written`, { file: this.path, tensor: s.spec.name });
      }
    }
    await guardWrite("sync the output", this.tmpPath, () => this.fh.sync());
    await this.close();
    const size = (await stat(this.tmpPath)).size;
    if (size !== this.expectedSize) {
      throw new DeepcastError(`output has ${size} bytes, expected ${this.expectedSize}`, { file: this.tmpPath, code: "WRITE_FAILED" });
    }
    await guardWrite("rename the output into place", this.path, () => rename(this.tmpPath, this.path));
  }

  /** Closes the file and keeps the temporary file (for a later `reopen`). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }

  /** Closes and deletes the temporary file. */
  async abort(): Promise<void> {
    await this.close().catch(() => undefined);
    await rm(this.tmpPath, { force: true });
  }
}

/** Bytes of a tensor spec's data. */
export function specBytes(t: TensorSpec): number {
  return tensorBytes(t.dtype, t.shape);
}
