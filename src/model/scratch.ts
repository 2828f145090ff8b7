/**
 * Reusable float32 buffers for one forward pass's activations. The pass allocates and drops
 * megabytes per step; left to the garbage collector they pile up between collections (the process
 * touches fresh memory for each, which the kernel zeroes, and V8 runs a full collection for every
 * ~64 MB of them). A step that is done with a buffer releases it and the next step of the same size
 * gets it back: the smallest pooled buffer that fits, up to twice the size asked for (so the varying
 * row counts of routed experts share buffers; a buffer is only ever as large as the request that
 * allocated it). The pool holds at most `capBytes`: past
 * that the buffers released longest ago are left to the collector, as they all were before.
 *
 * A buffer that is never released is simply collected; releasing one that is still in use is the
 * bug this module cannot catch, so callers release only what they allocated and no longer read.
 */
const MIN_POOLED_BYTES = 64 * 1024;

export class Scratch {
  private readonly pool = new Map<number, ArrayBuffer[]>();
  private readonly owned = new WeakSet<ArrayBuffer>();
  /** The pooled buffers, released longest ago first. */
  private readonly idle: ArrayBuffer[] = [];
  private heldBytes = 0;

  constructor(readonly capBytes: number) {}

  /** n floats; their values are those of the buffer's last user (every caller overwrites them all). */
  take(n: number): Float32Array {
    const bytes = n * 4;
    if (bytes < MIN_POOLED_BYTES || bytes > this.capBytes) return new Float32Array(n);
    // the smallest pooled size that fits, up to twice the size
    let best = 0;
    for (const [c, list] of this.pool) if (c >= bytes && c <= 2 * bytes && list.length && (!best || c < best)) best = c;
    if (best) {
      const list = this.pool.get(best)!;
      const buf = list.pop()!;
      if (!list.length) this.pool.delete(best);
      this.idle.splice(this.idle.indexOf(buf), 1);
      this.heldBytes -= best;
      return new Float32Array(buf, 0, n);
    }
    const fresh = new ArrayBuffer(bytes);
    this.owned.add(fresh);
    return new Float32Array(fresh, 0, n);
  }

  /** n floats, all zero. */
  takeZeroed(n: number): Float32Array {
    return this.take(n).fill(0);
  }

  /** Gives buffers from take() back; anything else (a subarray, a caller's array) is ignored. */
  release(...arrays: readonly Float32Array[]): void {
    for (const a of arrays) {
      const buf = a.buffer as ArrayBuffer;
      if (!this.owned.has(buf) || a.byteOffset !== 0) continue;
      if (this.idle.includes(buf)) throw new Error("internal: a scratch buffer was released twice");
      if (buf.byteLength > this.capBytes) continue;
      while (this.heldBytes + buf.byteLength > this.capBytes) this.evictOldest();
      let list = this.pool.get(buf.byteLength);
      if (!list) this.pool.set(buf.byteLength, (list = []));
      list.push(buf);
      this.idle.push(buf);
      this.heldBytes += buf.byteLength;
    }
  }

  private evictOldest(): void {
    const buf = this.idle.shift()!;
    const list = this.pool.get(buf.byteLength)!;
    list.splice(list.indexOf(buf), 1);
    if (!list.length) this.pool.delete(buf.byteLength);
    this.heldBytes -= buf.byteLength;
  }
}
