/**
 * How much fresh array memory a command allocates: preload it into any deepcast run (this checkout's or
 * an older one's), e.g.
 *
 *   node --import ./bench/alloc-census.mjs bin/deepcast.js imatrix GGUF --tokenizer DIR -f TEXT -c 256 -o OUT --force
 *
 * At exit it prints to stderr the megabytes of ArrayBuffers and Float32Arrays of 256 KiB or more made with
 * `new` (the forward pass's activations and weights; Buffers from file reads are not counted), and how many.
 * The figures of bench/README.md (imatrix.ts) were measured with it.
 */
const MIN = 256 * 1024;
let bytes = 0;
let count = 0;
const count1 = (n) => {
  if (n >= MIN) {
    bytes += n;
    count++;
  }
};
const F32 = globalThis.Float32Array;
globalThis.Float32Array = class extends F32 {
  constructor(...args) {
    super(...args);
    if (typeof args[0] === "number") count1(args[0] * 4);
  }
};
const AB = globalThis.ArrayBuffer;
globalThis.ArrayBuffer = class extends AB {
  constructor(n, ...rest) {
    super(n, ...rest);
    if (typeof n === "number") count1(n);
  }
};
process.on("exit", () => process.stderr.write(`alloc-census: ${(bytes / 1e6).toFixed(1)} MB in ${count} arrays of >= 256 KiB\n`));
