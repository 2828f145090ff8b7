/** Python semantics that llama.cpp's converter relies on, for reproducing its output exactly. */
/** Python's str ordering (code points; UTF-16 order except where surrogate pairs meet U+E000..U+FFFF). */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) {
      const xs = x >= 0xd800 && x <= 0xdfff;
      const ys = y >= 0xd800 && y <= 0xdfff;
      if (xs !== ys) return xs ? 1 : -1;
      return x - y;
    }
  }
  return a.length - b.length;
}

export const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);

/** Python truthiness for JSON values. */
export function truthy(v: unknown): boolean {
  if (v === null || v === undefined || v === false || v === 0 || v === "") return false;
  if (Array.isArray(v)) return v.length > 0;
  if (isObj(v)) return Object.keys(v).length > 0;
  return true;
}

/** Python == for JSON values as they occur here (strings, null, AddedToken dicts). */
export function pyEq(a: unknown, b: unknown): boolean {
  if ((a === null || a === undefined) && (b === null || b === undefined)) return true;
  if (isObj(a) || isObj(b)) return JSON.stringify(a) === JSON.stringify(b);
  return a === b;
}

export function isPyInt(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v);
}

/**
 * Whether Python's json module reads the value of top-level `key` in `text` as a float (a number
 * literal with a fraction or an exponent: 10.0, 1e1) rather than an int (10): gguf-py picks a GGUF
 * array's element type from it. False when the key is absent or not a number.
 */
export function pyJsonIsFloat(text: string, key: string): boolean {
  const esc = key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const m = new RegExp(`"${esc}"\\s*:\\s*(-?\\d+(\\.\\d*)?([eE][+-]?\\d+)?)`).exec(text);
  return m !== null && (m[2] !== undefined || m[3] !== undefined);
}
