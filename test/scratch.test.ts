/**
 * The forward pass's activation pool (src/model/scratch.ts): a released buffer is handed out again
 * (the smallest pooled one that fits, up to twice the size), the pool never holds more than its cap
 * (the buffers released longest ago go first), and what it does not own it leaves alone.
 */
import { describe, expect, it } from "vitest";
import { Scratch } from "../src/model/scratch.js";

const MB = 2 ** 20;

describe("activation pool", () => {
  it("hands a released buffer out again, to a request of the same or a somewhat smaller size", () => {
    const s = new Scratch(64 * MB);
    const a = s.take(MB / 4);
    a.fill(3);
    s.release(a);
    const b = s.take(MB / 4);
    expect(b.buffer).toBe(a.buffer);
    expect(b[0]).toBe(3); // take() does not clear
    s.release(b);
    const c = s.take(MB / 4 - 1000); // smaller, within 2x: the same buffer
    expect(c.buffer).toBe(a.buffer);
    expect(c.length).toBe(MB / 4 - 1000);
    s.release(c);
    expect(s.take(MB / 16).buffer).not.toBe(a.buffer); // more than twice the size: a fresh one
    const big = s.take(MB / 4 + 1); // larger than any pooled: fresh, of exactly its size
    expect(big.buffer.byteLength).toBe(MB + 4);
    expect(s.takeZeroed(MB / 4).every((x) => x === 0)).toBe(true);
  });

  it("holds at most its cap, dropping the buffers released longest ago", () => {
    const s = new Scratch(2.5 * MB);
    const [a, b, c] = [s.take(MB / 4), s.take(MB / 4), s.take(MB / 4)];
    s.release(a, b, c); // 3 MB released into a 2.5 MB pool: a is dropped
    const got = [s.take(MB / 4), s.take(MB / 4), s.take(MB / 4)].map((x) => x.buffer);
    expect(got).toContain(b.buffer);
    expect(got).toContain(c.buffer);
    expect(got).not.toContain(a.buffer);
    const none = new Scratch(0);
    const d = none.take(MB / 4);
    none.release(d);
    expect(none.take(MB / 4).buffer).not.toBe(d.buffer);
    // a request larger than the cap is never pooled
    const huge = s.take(MB);
    s.release(huge);
    expect(s.take(MB).buffer).not.toBe(huge.buffer);
  });

  it("ignores arrays it did not hand out, and refuses a buffer released twice", () => {
    const s = new Scratch(64 * MB);
    const mine = s.take(MB / 4);
    const foreign = new Float32Array(MB / 4);
    s.release(foreign, mine.subarray(10));
    expect(s.take(MB / 4).buffer).not.toBe(foreign.buffer);
    const x = s.take(MB / 4);
    s.release(x);
    expect(() => s.release(x)).toThrow(/released twice/);
    // small requests are not pooled at all
    const small = s.take(100);
    s.release(small);
    expect(s.take(100).buffer).not.toBe(small.buffer);
  });
});
