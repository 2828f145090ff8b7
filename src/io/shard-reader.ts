/** Reads tensor bytes from a checkpoint's safetensors shards, fetching each through the source once. */
import { SafetensorsFile } from "./safetensors.js";
import type { CheckpointSource } from "./source.js";

/** A byte range of one tensor in one shard. */
export interface TensorRange {
  file: string;
  tensor: string;
  /** Byte offset inside the tensor's data. */
  offset: number;
  length: number;
}

/** Opens input shards on demand (fetching them through the source) and keeps them open. */
export class ShardReader {
  private readonly open = new Map<string, Promise<SafetensorsFile>>();

  constructor(private readonly source: CheckpointSource) {}

  file(name: string): Promise<SafetensorsFile> {
    let f = this.open.get(name);
    if (!f) {
      f = this.source.localPath(name).then((p) => SafetensorsFile.open(p));
      this.open.set(name, f);
    }
    return f;
  }

  async read(src: TensorRange, dst: Uint8Array): Promise<void> {
    await (await this.file(src.file)).read(src.tensor, dst, src.offset);
  }

  /** Reads a whole (small) tensor into a fresh, aligned buffer. */
  async readTensor(file: string, tensor: string): Promise<Uint8Array> {
    const f = await this.file(file);
    const t = f.entry(tensor);
    const buf = new Uint8Array(new ArrayBuffer(t.end - t.begin));
    await f.read(tensor, buf);
    return buf;
  }

  async close(): Promise<void> {
    const files = await Promise.allSettled(this.open.values());
    this.open.clear();
    for (const f of files) if (f.status === "fulfilled") await f.value.close();
  }
}
