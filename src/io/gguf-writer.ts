/**
 * Streams the tensor data of a planned GGUF layout (./gguf-layout.ts) chunk by chunk, each file under
 * its temporary name until it is complete, with synced checkpoints a rerun can resume from.
 */
import { open, rename, rm, stat, type FileHandle } from "node:fs/promises";
import { DeepcastError } from "../errors.js";
import { encodeFileHeader, padTo, type GgufLayout, type GgufTensorPlacement } from "./gguf-layout.js";
import { guardWrite, partialPath, writeFully } from "./write.js";

const WRITE_BUFFER_BYTES = 8 * 1024 * 1024;
/** Pieces at least this long are written from the caller's buffer (a converted chunk) without a copy. */
const PASS_THROUGH_BYTES = 1024 * 1024;

/**
 * Writes a planned layout: files in order, tensors in order, each tensor appended in one or more
 * chunks (e.g. one expert at a time). Only one file is open at a time; each file is written to
 * `.<name>.partial`, synced, and renamed to its final name as soon as it is complete, so an
 * interrupted multi-file run keeps its finished files (`skipFiles` resumes after them).
 */
/** A point in a layout: file index and tensor index within that file. */
export interface GgufPosition {
  file: number;
  tensor: number;
}

export class GgufWriter {
  private fileIndex = -1;
  private tensorIndex = 0;
  private fh: FileHandle | null = null;
  private pos = 0;
  private tensorEnd = 0;
  private readonly buf = Buffer.alloc(WRITE_BUFFER_BYTES);
  private bufLen = 0;
  private bufPos = 0;
  private closed = false;
  /** The current file's temporary holds a synced prefix a rerun can continue from. */
  private resumable = false;

  private constructor(
    readonly layout: GgufLayout,
    private readonly skip: ReadonlySet<number>,
    private readonly onFileDone: (path: string) => Promise<void>,
  ) {}

  /**
   * Opens the first file to write and writes its header. Files whose index is in `skipFiles` are
   * already complete (a resumed run): they are neither written nor expected. `onFileDone` runs after
   * each file is renamed into place. `resumeAt` continues a file whose temporary holds a synced
   * prefix (see `checkpoint()`): when that file's header and size check out, writing goes on at that
   * tensor; otherwise the file starts over. `resumed` tells which happened.
   */
  static async create(
    layout: GgufLayout,
    opts: { skipFiles?: ReadonlySet<number>; onFileDone?: (path: string) => Promise<void>; resumeAt?: GgufPosition } = {},
  ): Promise<GgufWriter> {
    const w = new GgufWriter(layout, opts.skipFiles ?? new Set(), opts.onFileDone ?? (async () => undefined));
    try {
      if (!(opts.resumeAt && (await w.reopen(opts.resumeAt)))) await w.openNextFileWithWork();
    } catch (e) {
      await w.abort();
      throw e;
    }
    return w;
  }

  /** Where the writer stands: the file being written and its next tensor. */
  get position(): GgufPosition {
    return { file: this.fileIndex, tensor: this.tensorIndex };
  }

  /**
   * Flushes and syncs what was written so far and returns the position to resume from: every byte
   * before that tensor's offset is on disk.
   */
  async checkpoint(): Promise<GgufPosition> {
    const c = await this.beginCheckpoint();
    await c.synced;
    return c.position;
  }

  /**
   * The same without waiting for the disk: flushes, starts the sync and returns the position at once,
   * with a promise that resolves when every byte before it is on disk. Appends may go on meanwhile
   * (and the file may be completed and closed: the handle closes after the sync).
   */
  async beginCheckpoint(): Promise<{ position: GgufPosition; synced: Promise<void> }> {
    await this.flush();
    const position = this.position;
    const fh = this.fh;
    const file = this.layout.files[this.fileIndex];
    const synced = fh && file
      ? guardWrite("sync the output", partialPath(file.path), () => fh.sync()).then(() => {
        if (this.fh === fh) this.resumable = true;
      })
      : Promise.resolve();
    return { position, synced };
  }

  /** Reopens the temporary of file `at.file` and positions at tensor `at.tensor`, if it is intact. */
  private async reopen(at: GgufPosition): Promise<boolean> {
    const file = this.layout.files[at.file];
    const t = file?.tensors[at.tensor];
    if (!file || !t || this.skip.has(at.file)) return false;
    const tmp = partialPath(file.path);
    const fh = await open(tmp, "r+").catch(() => null);
    if (!fh) return false;
    const header = encodeFileHeader(file);
    const onDisk = Buffer.alloc(header.length);
    const size = (await fh.stat()).size;
    const { bytesRead } = size >= t.fileOffset ? await fh.read(onDisk, 0, header.length, 0) : { bytesRead: 0 };
    if (bytesRead !== header.length || !onDisk.equals(header)) {
      await fh.close();
      return false;
    }
    await guardWrite("truncate the output", tmp, () => fh.truncate(t.fileOffset));
    this.fh = fh;
    this.fileIndex = at.file;
    this.tensorIndex = at.tensor;
    this.bufLen = 0;
    this.resumable = true;
    this.startTensor();
    return true;
  }

  /** Final paths of all files. */
  get paths(): string[] {
    return this.layout.files.map((f) => f.path);
  }

  /** The tensor whose bytes come next, or undefined when all were written. */
  get current(): GgufTensorPlacement | undefined {
    return this.layout.files[this.fileIndex]?.tensors[this.tensorIndex];
  }

  /** Appends bytes of the current tensor; when it is complete its padding is written and the next tensor (or file) begins. */
  async append(name: string, data: Uint8Array): Promise<void> {
    const file = this.layout.files[this.fileIndex];
    const t = this.current;
    if (!file || !t || t.name !== name) {
      throw new DeepcastError(`internal: wrote ${name} but the plan expects ${t?.name ?? "no more tensors"}`, { file: file?.path, tensor: name });
    }
    if (this.pos + data.length > this.tensorEnd) {
      throw new DeepcastError(`internal: ${data.length} bytes overflow the tensor's ${t.nbytes} bytes`, { file: file.path, tensor: name });
    }
    await this.put(data);
    if (this.pos === this.tensorEnd) {
      const pad = padTo(t.nbytes, this.layout.alignment) - t.nbytes;
      if (pad) await this.put(new Uint8Array(pad));
      this.tensorIndex++;
      if (this.tensorIndex < file.tensors.length) {
        this.startTensor();
      } else {
        await this.finishFile();
        await this.openNextFileWithWork();
      }
    }
  }

  /** Checks that every file was completed (each was renamed into place when it was). */
  async commit(): Promise<void> {
    if (this.fh || this.fileIndex < this.layout.files.length) {
      const t = this.current;
      throw new DeepcastError(`internal: output incomplete, ${t ? `tensor ${t.name} and later ones` : "some files"} not written`, { file: this.layout.files[this.fileIndex]?.path, tensor: t?.name });
    }
    this.closed = true;
  }

  /**
   * Closes the file being written after an error and deletes its temporary, unless it holds a
   * checkpointed prefix a rerun can continue from. Safe to call more than once.
   */
  async abort(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh?.close().catch(() => undefined);
    this.fh = null;
    const file = this.layout.files[this.fileIndex];
    if (file && !this.resumable) await rm(partialPath(file.path), { force: true });
  }

  private startTensor(): void {
    const t = this.current!;
    this.pos = t.fileOffset;
    this.tensorEnd = t.fileOffset + t.nbytes;
  }

  /** Opens files in turn, completing those without tensors, until one has tensors or none are left. */
  private async openNextFileWithWork(): Promise<void> {
    for (;;) {
      this.fileIndex++;
      const file = this.layout.files[this.fileIndex];
      if (!file) return;
      if (this.skip.has(this.fileIndex)) continue;
      this.resumable = false;
      const tmp = partialPath(file.path);
      try {
        this.fh = await guardWrite("create the output", tmp, () => open(tmp, "w"));
      } catch (e) {
        throw new DeepcastError(`cannot create output: ${(e as Error).message}`, { file: tmp }, { cause: e });
      }
      this.bufLen = 0;
      this.bufPos = 0;
      this.pos = 0;
      this.tensorIndex = 0;
      await this.put(encodeFileHeader(file));
      if (file.tensors.length > 0) {
        this.startTensor();
        return;
      }
      await this.finishFile();
    }
  }

  private async finishFile(): Promise<void> {
    const file = this.layout.files[this.fileIndex]!;
    await this.flush();
    const fh = this.fh!;
    try {
      await guardWrite("sync the output", partialPath(file.path), () => fh.sync());
    } finally {
      await fh.close();
      this.fh = null;
    }
    const tmp = partialPath(file.path);
    const size = (await stat(tmp)).size;
    if (size !== file.fileSize) throw new DeepcastError(`output has ${size} bytes, expected ${file.fileSize}`, { file: tmp, code: "WRITE_FAILED" });
    await guardWrite("rename the output into place", file.path, () => rename(tmp, file.path));
    await this.onFileDone(file.path);
  }

  /** Buffered sequential write at the current position; large pieces go out as they are, not copied. */
  private async put(data: Uint8Array): Promise<void> {
    if (this.bufLen + data.length > this.buf.length || data.length >= PASS_THROUGH_BYTES) await this.flush();
    if (data.length >= PASS_THROUGH_BYTES) {
      await this.rawWrite(data, this.pos);
    } else {
      if (this.bufLen === 0) this.bufPos = this.pos;
      this.buf.set(data, this.bufLen);
      this.bufLen += data.length;
    }
    this.pos += data.length;
  }

  private async flush(): Promise<void> {
    if (this.bufLen === 0) return;
    const n = this.bufLen;
    this.bufLen = 0;
    await this.rawWrite(this.buf.subarray(0, n), this.bufPos);
  }

  private async rawWrite(data: Uint8Array, position: number): Promise<void> {
    const file = this.layout.files[this.fileIndex]!;
    await writeFully(this.fh!, data, position, { file: partialPath(file.path), tensor: this.current?.name });
  }
}
