/**
 * HubSource against an in-process fake of the Hugging Face Hub that serves fixtures/tiny-dsv3 the
 * way huggingface.co does (model info, tree listing, resolve with Range), so this runs offline.
 */
import { createHash } from "node:crypto";
import { spawn, spawnSync } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, unlink, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { DeepcastError } from "../src/errors.js";
import type { OnEvent, RunEvent } from "../src/events.js";
import { planToGguf } from "../src/convert/to-gguf.js";
import { hfHubOffline, hfToken, hubCacheModelName } from "../src/io/hub-cache.js";
import { hfHubCacheDir, HubSource, isHubRepoId } from "../src/io/hub.js";
import { inspect } from "../src/io/inspect.js";
import { openSource } from "../src/io/open-source.js";
import { readHeader } from "../src/io/safetensors.js";
import { LocalSource, type CheckpointSource, type SourceFile } from "../src/io/source.js";
import { checkFreeSpace, freeBytes } from "../src/io/write.js";

const FIXTURE = fileURLToPath(new URL("../fixtures/tiny-dsv3", import.meta.url));
const ROOT_DIR = fileURLToPath(new URL("..", import.meta.url));
const REPO = "deepseek-ai/DeepSeek-V3";
const SHA = "0123456789abcdef0123456789abcdef01234567";
const ENDPOINT = "https://hub.test";
const SHARDS = [1, 2, 3].map((i) => `model-0000${i}-of-00003.safetensors`);

interface HubFile {
  content: Buffer;
  oid: string;
  sha256: string;
  lfs: boolean;
}

interface Logged {
  method: string;
  url: string;
  range: string | null;
  auth: string | null;
}

interface FakeHubOptions {
  /** When set, requests without `Bearer <token>` get 401 (no token) or 403 (another token). */
  token?: string;
  /** Full-body downloads stop halfway, as a dropped connection would. */
  truncate?: boolean;
  /** Ranges other than the `bytes=0-0` probe are answered with the whole file. */
  ignoreRanges?: boolean;
  /** Every request fails before reaching the server. */
  offline?: boolean;
}

let files: Map<string, HubFile>;
let localFiles: SourceFile[];

beforeAll(async () => {
  localFiles = await new LocalSource(FIXTURE).listFiles();
  files = new Map();
  for (const { name } of localFiles) {
    const content = await readFile(join(FIXTURE, name));
    const gitOid = createHash("sha1").update(`blob ${content.length}\0`).update(content).digest("hex");
    const sha256 = createHash("sha256").update(content).digest("hex");
    files.set(name, { content, oid: gitOid, sha256, lfs: name.endsWith(".safetensors") });
  }
});

/** A fetch that answers like the Hub for REPO, recording every request. */
function fakeHub(opts: FakeHubOptions = {}, endpoint = ENDPOINT) {
  const log: Logged[] = [];
  const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
    new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });

  const fetchFn = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = input instanceof Request ? input.url : String(input);
    const headers = new Headers(init?.headers);
    const entry = { method: init?.method ?? "GET", url, range: headers.get("range"), auth: headers.get("authorization") };
    log.push(entry);
    if (opts.offline) throw new TypeError("fetch failed", { cause: new Error("getaddrinfo ENOTFOUND hub.test") });

    if (opts.token !== undefined && entry.auth !== `Bearer ${opts.token}`) {
      return entry.auth
        ? json(403, { error: `Access to model ${REPO} is restricted.` }, { "x-error-code": "GatedRepo" })
        : json(401, { error: "Invalid username or password." });
    }
    const { pathname, searchParams } = new URL(url);
    const path = decodeURIComponent(pathname);
    const repoNotFound = () => json(404, { error: "Repository not found" }, { "x-error-code": "RepositoryNotFound" });
    const known = (rev: string) => rev === "main" || rev === SHA;

    let m = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/(.+)$/.exec(path);
    if (m) {
      if (m[1] !== REPO) return repoNotFound();
      if (!known(m[2]!)) return json(404, { error: `Invalid rev id: ${m[2]}` }, { "x-error-code": "RevisionNotFound" });
      return json(200, { _id: "abc", id: REPO, sha: SHA, private: false, gated: false, lastModified: "2025-01-01T00:00:00.000Z" });
    }
    m = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)$/.exec(path);
    if (m) {
      if (m[1] !== REPO) return repoNotFound();
      if (!known(m[2]!)) return json(404, { error: `Invalid rev id: ${m[2]}` }, { "x-error-code": "RevisionNotFound" });
      expect(searchParams.get("recursive")).toBe("false");
      return json(200, [
        ...[...files].map(([name, f]) => ({
          type: "file",
          oid: f.oid,
          size: f.content.length,
          path: name,
          ...(f.lfs && { lfs: { oid: f.sha256, size: f.content.length, pointerSize: 134 } }),
        })),
        { type: "directory", oid: "f".repeat(40), size: 0, path: "figures" },
      ]);
    }
    m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    if (m) {
      if (m[1] !== REPO) return repoNotFound();
      const f = files.get(m[3]!);
      if (!known(m[2]!) || !f) return json(404, { error: "Entry not found" }, { "x-error-code": "EntryNotFound" });
      const size = f.content.length;
      const common = {
        "content-type": "application/octet-stream",
        "accept-ranges": "bytes",
        etag: `"${f.lfs ? f.sha256 : f.oid}"`,
        "x-repo-commit": SHA,
      };
      const r = entry.range && /^bytes=(\d+)-(\d*)$/.exec(entry.range);
      if (r && !(opts.ignoreRanges && entry.range !== "bytes=0-0")) {
        const start = Number(r[1]);
        const end = r[2] ? Math.min(Number(r[2]), size - 1) : size - 1;
        return new Response(f.content.subarray(start, end + 1), {
          status: 206,
          headers: { ...common, "content-range": `bytes ${start}-${end}/${size}` },
        });
      }
      return new Response(opts.truncate ? f.content.subarray(0, size >> 1) : f.content, { status: 200, headers: common });
    }
    return json(404, { error: `no route ${path}` });
  };
  return { fetch: fetchFn as typeof fetch, log };
}

const resolveUrl = (name: string, rev = SHA) => `${ENDPOINT}/${REPO}/resolve/${rev}/${name}`;
const fullDownloads = (log: Logged[]) => log.filter((r) => r.url.includes("/resolve/") && r.range === null);

let cacheDir: string;

beforeEach(async () => {
  // The real environment must not leak into these tests.
  vi.stubEnv("HF_TOKEN", "");
  vi.stubEnv("HF_ENDPOINT", "");
  vi.stubEnv("HF_HUB_OFFLINE", "");
  vi.stubEnv("HF_TOKEN_PATH", "/nonexistent/deepcast-test/token");
  cacheDir = await mkdtemp(join(tmpdir(), "deepcast-hub-"));
});

afterEach(async () => {
  vi.unstubAllEnvs();
  await rm(cacheDir, { recursive: true, force: true });
});

function hubSource(hub: ReturnType<typeof fakeHub>, extra: { revision?: string; accessToken?: string; offline?: boolean; notice?: (m: string) => void; onEvent?: OnEvent } = {}) {
  return new HubSource(REPO, { hubUrl: ENDPOINT, cacheDir, fetch: hub.fetch, ...extra });
}

describe("HubSource", () => {
  it("lists the top-level files with their sizes, pinned to the revision's commit", async () => {
    const hub = fakeHub();
    const listed = await hubSource(hub).listFiles();
    expect(listed).toEqual(localFiles);
    expect(listed.map((f) => f.name)).toEqual(expect.arrayContaining([...SHARDS, "config.json", "model.safetensors.index.json"]));
    expect(hub.log.map((r) => r.url)).toEqual([
      expect.stringMatching(new RegExp(`^${ENDPOINT}/api/models/${REPO}/revision/main\\?`)),
      `${ENDPOINT}/api/models/${REPO}/tree/${SHA}?recursive=false&expand=false`,
    ]);
  });

  it("reads each shard's header with Range requests for the header bytes only", async () => {
    const hub = fakeHub();
    const source = hubSource(hub);
    for (const shard of SHARDS) {
      const local = await readHeader(join(FIXTURE, shard));
      expect(local.tensors.length).toBeGreaterThan(0);
      expect(await source.readHeader(shard)).toEqual(local);

      const requests = hub.log.filter((r) => r.url === resolveUrl(shard));
      expect(requests.map((r) => r.range)).toEqual(["bytes=0-0", "bytes=0-7", `bytes=8-${local.dataStart - 1}`]);
    }
    expect(fullDownloads(hub.log)).toEqual([]);
    expect(hub.log.every((r) => !r.url.includes("/resolve/") || r.url.includes(`/resolve/${SHA}/`))).toBe(true);
  });

  it("refuses to parse a header when the server ignores Range", async () => {
    const source = hubSource(fakeHub({ ignoreRanges: true }));
    await expect(source.readHeader(SHARDS[0]!)).rejects.toThrow(/Range not honoured.*model-00001-of-00003/);
  });

  it("reads small files whole", async () => {
    const source = hubSource(fakeHub());
    expect(await source.readFile("config.json")).toEqual(files.get("config.json")!.content);
  });

  it("downloads into the HF cache layout on localPath, once, and only that file", async () => {
    const hub = fakeHub();
    const source = hubSource(hub);
    const shard = SHARDS[1]!;
    const f = files.get(shard)!;
    const repoDir = join(cacheDir, "models--deepseek-ai--DeepSeek-V3");

    const path = await source.localPath(shard);
    expect(path).toBe(join(repoDir, "snapshots", SHA, shard));
    expect((await lstat(path)).isSymbolicLink()).toBe(true);
    expect(await readlink(path)).toBe(join("..", "..", "blobs", f.sha256));
    expect((await readFile(path)).equals(f.content)).toBe(true);
    expect(await readFile(join(repoDir, "refs", "main"), "utf8")).toBe(SHA);
    expect(await readdir(join(repoDir, "blobs"))).toEqual([f.sha256]);
    expect(fullDownloads(hub.log).map((r) => r.url)).toEqual([resolveUrl(shard)]);

    // Same source: nothing is requested again.
    const before = hub.log.length;
    expect(await source.localPath(shard)).toBe(path);
    expect(hub.log.length).toBe(before);

    // A new process with the same cache: metadata only, no file download.
    const again = fakeHub();
    expect(await hubSource(again).localPath(shard)).toBe(path);
    expect(again.log.filter((r) => r.url.includes("/resolve/"))).toEqual([]);

    // The blob is reused when only the snapshot link is missing.
    await unlink(path);
    const relink = fakeHub();
    expect(await hubSource(relink).localPath(shard)).toBe(path);
    expect(relink.log.filter((r) => r.url.includes("/resolve/"))).toEqual([]);
    expect((await readFile(path)).equals(f.content)).toBe(true);
  });

  it("counts what is still to download into the free-space check, and refuses when the cache's disk is too small", async () => {
    const source = hubSource(fakeHub());
    const size = (n: string) => files.get(n)!.content.length;
    expect(await source.pendingDownload(SHARDS)).toEqual({ dir: cacheDir, bytes: SHARDS.reduce((a, n) => a + size(n), 0) });
    await source.localPath(SHARDS[1]!);
    expect((await source.pendingDownload(SHARDS)).bytes).toBe(size(SHARDS[0]!) + size(SHARDS[2]!));
    // a fake disk: the output fits, the output plus the download does not
    const free = await freeBytes(cacheDir);
    const tight = { description: "tight", pendingDownload: async () => ({ dir: cacheDir, bytes: Math.ceil(free / 2) + 1 }) } as unknown as CheckpointSource;
    const err = (await checkFreeSpace(cacheDir, Math.ceil(free / 2), tight, SHARDS).catch((e: unknown) => e)) as DeepcastError;
    expect(err.code).toBe("NO_SPACE");
    expect(err.message).toMatch(/the download into the Hugging Face cache/);
    await expect(checkFreeSpace(cacheDir, 1024, source, SHARDS)).resolves.toBeUndefined();
  });

  it("does not keep a truncated download as the file: the part stays .incomplete, to be resumed", async () => {
    const source = hubSource(fakeHub({ truncate: true }));
    await expect(source.localPath(SHARDS[0]!)).rejects.toThrow(/download incomplete.*run again to resume.*model-00001-of-00003/);
    const f = files.get(SHARDS[0]!)!;
    expect(await readdir(join(cacheDir, "models--deepseek-ai--DeepSeek-V3", "blobs"))).toEqual([`${f.sha256}.incomplete`]);
  });

  it("gives each file version a stable identity", async () => {
    const a = hubSource(fakeHub());
    const b = hubSource(fakeHub(), { revision: SHA });
    const ids = await Promise.all(SHARDS.map((s) => a.fileIdentity(s)));
    expect(ids[0]).toBe(`${files.get(SHARDS[0]!)!.content.length}:${files.get(SHARDS[0]!)!.sha256}`);
    expect(new Set(ids).size).toBe(3);
    expect(await Promise.all(SHARDS.map((s) => b.fileIdentity(s)))).toEqual(ids);
  });

  it("uses HF_TOKEN, HF_ENDPOINT and HF_HUB_CACHE from the environment", async () => {
    const mirror = "http://mirror.local";
    vi.stubEnv("HF_TOKEN", "hf_envtoken");
    vi.stubEnv("HF_ENDPOINT", `${mirror}/`);
    vi.stubEnv("HF_HUB_CACHE", cacheDir);
    const hub = fakeHub({ token: "hf_envtoken" }, mirror);
    const source = new HubSource(REPO, { fetch: hub.fetch });

    await source.readHeader(SHARDS[0]!);
    const path = await source.localPath("config.json");
    expect(path.startsWith(join(cacheDir, "models--deepseek-ai--DeepSeek-V3", "snapshots", SHA))).toBe(true);
    expect(hub.log.length).toBeGreaterThan(4);
    for (const r of hub.log) {
      expect(r.url.startsWith(`${mirror}/`) && !r.url.startsWith(`${mirror}//`)).toBe(true);
      expect(r.auth).toBe("Bearer hf_envtoken");
    }
  });

  it("finds the cache folder the way huggingface_hub does", () => {
    expect(hfHubCacheDir({ HF_HUB_CACHE: "/a", HF_HOME: "/b" })).toBe("/a");
    expect(hfHubCacheDir({ HUGGINGFACE_HUB_CACHE: "/c", HF_HOME: "/b" })).toBe("/c");
    expect(hfHubCacheDir({ HF_HOME: "/b", XDG_CACHE_HOME: "/x" })).toBe(join("/b", "hub"));
    expect(hfHubCacheDir({ XDG_CACHE_HOME: "/x" })).toBe(join("/x", "huggingface", "hub"));
  });

  it("tells the user to set HF_TOKEN on 401, and that the token lacks access on 403", async () => {
    const err = await hubSource(fakeHub({ token: "hf_good" })).listFiles().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeepcastError);
    expect((err as Error).message).toMatch(/HTTP 401.*set HF_TOKEN.*deepseek-ai\/DeepSeek-V3/);

    const denied = hubSource(fakeHub({ token: "hf_good" }), { accessToken: "hf_other" });
    await expect(denied.readHeader(SHARDS[0]!)).rejects.toThrow(/HTTP 403.*token in HF_TOKEN has no access/);
  });

  it("rejects a token the Hub cannot accept before any request", () => {
    expect(() => hubSource(fakeHub(), { accessToken: "not-a-token" })).toThrow(/HF_TOKEN must .* hf_/);
  });

  it("says which repo, revision or file was not found", async () => {
    const hub = fakeHub();
    const missingRepo = new HubSource("nobody/nothing", { hubUrl: ENDPOINT, cacheDir, fetch: hub.fetch });
    await expect(missingRepo.listFiles()).rejects.toThrow(/repo nobody\/nothing or its revision main not found/);
    await expect(hubSource(hub, { revision: "v9" }).readFile("config.json")).rejects.toThrow(/revision v9 not found/);

    const err = await hubSource(hub).readHeader("model-00009-of-00009.safetensors").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeepcastError);
    expect((err as Error).message).toMatch(/file not found.*deepseek-ai\/DeepSeek-V3@main\/model-00009-of-00009\.safetensors/);
  });

  it("reports a network failure with the endpoint and the cause", async () => {
    const source = hubSource(fakeHub({ offline: true }));
    await expect(source.readFile("config.json")).rejects.toThrow(
      /cannot reach the Hugging Face Hub at https:\/\/hub\.test: fetch failed: getaddrinfo ENOTFOUND.*deepseek-ai\/DeepSeek-V3@main/,
    );
  });
});

describe("two processes, one cache", () => {
  it("download the same shard once: the second waits for the first's lock, then links the same blob", async () => {
    const shard = SHARDS[1]!;
    const hub = fakeHub();
    // The fake Hub over real HTTP, sending file bodies slowly so that the two downloads overlap.
    const server = createServer(async (req, res) => {
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(req.headers)) if (typeof v === "string") headers[k] = v;
      const r = await hub.fetch(`${ENDPOINT}${req.url}`, { headers });
      res.writeHead(r.status, Object.fromEntries(r.headers));
      const body = Buffer.from(await r.arrayBuffer());
      for (let at = 0; at < body.length; at += 1 << 20) {
        res.write(body.subarray(at, at + (1 << 20)));
        await new Promise((ok) => setTimeout(ok, 300));
      }
      res.end();
    });
    await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const script = join(cacheDir, "child.mts");
    await writeFile(script, [
      `import { HubSource } from ${JSON.stringify(join(ROOT_DIR, "src", "io", "hub.ts"))};`,
      `const s = new HubSource(${JSON.stringify(REPO)}, { hubUrl: ${JSON.stringify(url)}, cacheDir: ${JSON.stringify(cacheDir)} });`,
      `console.log(await s.localPath(${JSON.stringify(shard)}));`,
    ].join("\n"));
    const run = () => new Promise<{ code: number | null; out: string; err: string }>((ok) => {
      const child = spawn(process.execPath, [join(ROOT_DIR, "node_modules", "tsx", "dist", "cli.mjs"), script], {
        env: { ...process.env, HF_TOKEN: "", HF_HUB_OFFLINE: "", HF_TOKEN_PATH: "/nonexistent/token" },
      });
      let out = "";
      let err = "";
      child.stdout.on("data", (d: Buffer) => (out += d));
      child.stderr.on("data", (d: Buffer) => (err += d));
      child.on("close", (code) => ok({ code, out, err }));
    });
    try {
      const [a, b] = await Promise.all([run(), run()]);
      expect(a.code, a.err).toBe(0);
      expect(b.code, b.err).toBe(0);
      const path = join(repoDir(), "snapshots", SHA, shard);
      expect([a.out.trim(), b.out.trim()]).toEqual([path, path]);
      expect((await readFile(path)).equals(files.get(shard)!.content)).toBe(true);
      const bodies = hub.log.filter((r) => r.url.endsWith(`/resolve/${SHA}/${shard}`) && r.range !== "bytes=0-0");
      expect(bodies).toHaveLength(1);
      expect(a.err + b.err).toMatch(/waiting for process \d+ on .*, which is downloading/);
      expect(await readdir(join(repoDir(), "blobs"))).toEqual([files.get(shard)!.sha256]);
    } finally {
      server.close();
    }
  }, 120_000);
});

describe("inspect a repo id", () => {
  it("reads every shard's header with Range requests, downloads nothing, and reports what the folder would", async () => {
    const hub = fakeHub();
    const remote = await inspect(REPO, { revision: "main", fetch: hub.fetch, cacheDir });
    const local = await inspect(FIXTURE);
    expect(remote.path).toBe(`${REPO}@main`);
    expect({ ...remote, path: local.path }).toEqual(local);
    expect(fullDownloads(hub.log).map((r) => r.url).filter((u) => u.endsWith(".safetensors"))).toEqual([]);
    await expect(readdir(cacheDir)).resolves.toEqual([]);
  });
});

describe("openSource", () => {
  it("opens an existing folder locally, even when it looks like a repo id", async () => {
    expect(await openSource(FIXTURE)).toBeInstanceOf(LocalSource);
    expect(await openSource("fixtures/tiny-dsv3")).toBeInstanceOf(LocalSource);
  });

  it("opens owner/name that is not a path on the Hub", async () => {
    const hub = fakeHub();
    const source = await openSource(REPO, { revision: SHA, fetch: hub.fetch, cacheDir });
    expect(source).toBeInstanceOf(HubSource);
    expect(source.description).toBe(`${REPO}@${SHA}`);
  });

  it("rejects anything else clearly", async () => {
    for (const spec of ["missing-folder", "./no/such/dir", "a/b/c", "/abs/missing"]) {
      await expect(openSource(spec)).rejects.toThrow(/input folder not found and not a Hugging Face repo id/);
    }
    await expect(openSource(join(FIXTURE, "config.json"))).rejects.toThrow(/not a folder/);
  });

  it("accepts repo ids the Hub accepts", () => {
    for (const id of ["deepseek-ai/DeepSeek-V3", "unsloth/DeepSeek-V3-0324-GGUF", "a/b.c_d"]) expect(isHubRepoId(id)).toBe(true);
    for (const id of ["DeepSeek-V3", "a/b/c", "a--b/c", "a/b..c", "-a/b", "a/b-", "./x", "../x/y"]) expect(isHubRepoId(id)).toBe(false);
  });
});

const repoDir = () => join(cacheDir, "models--deepseek-ai--DeepSeek-V3");
const blobOf = (name: string) => {
  const f = files.get(name)!;
  return join(repoDir(), "blobs", f.lfs ? f.sha256 : f.oid);
};

/** Downloads every file of the repo into the cache, as a first online run does. */
async function fillCache(): Promise<void> {
  const source = hubSource(fakeHub());
  for (const { name } of localFiles) await source.localPath(name);
}

describe("Hugging Face habits: saved token, offline cache, resume, concurrent downloads, model name", () => {
  it("reads the token `hf auth login` saved ($HF_HOME/token, HF_TOKEN_PATH) when HF_TOKEN is unset; HF_TOKEN wins", async () => {
    const home = await mkdtemp(join(tmpdir(), "deepcast-hfhome-"));
    try {
      await writeFile(join(home, "token"), "hf_filetoken\n");
      expect(hfToken({ HF_HOME: home })).toEqual({ token: "hf_filetoken", from: join(home, "token") });
      expect(hfToken({ HF_HOME: home, HF_TOKEN: "hf_env" })).toEqual({ token: "hf_env", from: "HF_TOKEN" });
      expect(hfToken({ HF_HOME: home, HF_TOKEN_PATH: join(home, "other") })).toBeUndefined();
      expect(hfToken({ XDG_CACHE_HOME: home, HF_HOME: "" })).toBeUndefined();

      vi.stubEnv("HF_TOKEN_PATH", "");
      vi.stubEnv("HF_HOME", home);
      const hub = fakeHub({ token: "hf_filetoken" });
      await hubSource(hub).readHeader(SHARDS[0]!);
      expect(hub.log.length).toBeGreaterThan(2);
      for (const r of hub.log) expect(r.auth).toBe("Bearer hf_filetoken");

      // A token the gated repo refuses: the message names the file it came from.
      await expect(hubSource(fakeHub({ token: "hf_other" })).listFiles()).rejects.toThrow(new RegExp(`HTTP 403.*token in ${join(home, "token")} has no access`));
      await writeFile(join(home, "token"), "not-a-token");
      expect(() => hubSource(fakeHub())).toThrow(new RegExp(`the token file ${join(home, "token")} must hold .* hf_`));
      await rm(join(home, "token"));
      await expect(hubSource(fakeHub({ token: "hf_x" })).listFiles()).rejects.toThrow(/HTTP 401.*hf auth login/);
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  });

  it("HF_HUB_OFFLINE=1: a complete cached snapshot serves everything without a request, and says so", async () => {
    await fillCache();
    const online = hubSource(fakeHub());
    const ids = await Promise.all(SHARDS.map((s) => online.fileIdentity(s)));

    expect(hfHubOffline({ HF_HUB_OFFLINE: "1" })).toBe(true);
    expect(hfHubOffline({ HF_HUB_OFFLINE: "true" })).toBe(true);
    expect(hfHubOffline({ HF_HUB_OFFLINE: "0" })).toBe(false);
    vi.stubEnv("HF_HUB_OFFLINE", "1");
    const hub = fakeHub({ offline: true });
    const notices: string[] = [];
    const source = hubSource(hub, { notice: (m) => notices.push(m) });
    expect(await source.listFiles()).toEqual(localFiles);
    for (const shard of SHARDS) expect(await source.readHeader(shard)).toEqual(await readHeader(join(FIXTURE, shard)));
    expect(await source.readFile("config.json")).toEqual(files.get("config.json")!.content);
    expect(await source.localPath(SHARDS[1]!)).toBe(join(repoDir(), "snapshots", SHA, SHARDS[1]!));
    // Resume fingerprints do not change between online and offline runs.
    expect(await Promise.all(SHARDS.map((s) => source.fileIdentity(s)))).toEqual(ids);
    expect(hub.log).toEqual([]);
    expect(notices).toEqual([`HF_HUB_OFFLINE is set: using the cached snapshot ${SHA} of ${REPO}@main (${join(repoDir(), "snapshots", SHA)})`]);

    // The same by commit sha; an unknown revision has no snapshot.
    expect(await hubSource(hub, { revision: SHA, notice: () => {} }).listFiles()).toEqual(localFiles);
    await expect(hubSource(hub, { revision: "v9" }).listFiles()).rejects.toThrow(/HF_HUB_OFFLINE is set, and the Hugging Face cache has no snapshot of deepseek-ai\/DeepSeek-V3@v9.*unset HF_HUB_OFFLINE/);
    expect(hub.log).toEqual([]);
  });

  it("HF_HUB_OFFLINE=1 refuses an incomplete snapshot, naming what it lacks", async () => {
    await fillCache();
    await unlink(join(repoDir(), "snapshots", SHA, SHARDS[2]!));
    const source = hubSource(fakeHub({ offline: true }), { offline: true, notice: () => {} });
    const err = await source.listFiles().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeepcastError);
    expect((err as DeepcastError).code).toBe("NETWORK");
    expect((err as Error).message).toMatch(new RegExp(`HF_HUB_OFFLINE is set, and the cached snapshot .*${SHA} is incomplete: it lacks ${SHARDS[2]}`));
  });

  it("an unreachable Hub falls back to the complete cached snapshot, and says why", async () => {
    await fillCache();
    const notices: string[] = [];
    const source = hubSource(fakeHub({ offline: true }), { notice: (m) => notices.push(m) });
    expect(await source.listFiles()).toEqual(localFiles);
    expect(await source.localPath(SHARDS[0]!)).toBe(join(repoDir(), "snapshots", SHA, SHARDS[0]!));
    expect(notices).toHaveLength(1);
    expect(notices[0]).toMatch(new RegExp(`^cannot reach the Hugging Face Hub at https://hub.test: fetch failed: getaddrinfo ENOTFOUND hub.test: using the cached snapshot ${SHA} of ${REPO}@main`));
  });

  it("resumes an interrupted download with a Range request from the .incomplete file", async () => {
    const shard = SHARDS[0]!;
    const f = files.get(shard)!;
    await expect(hubSource(fakeHub({ truncate: true })).localPath(shard)).rejects.toThrow(/download incomplete: got \d+ of \d+ bytes/);
    const part = `${blobOf(shard)}.incomplete`;
    const half = (await stat(part)).size;
    expect(half).toBe(f.content.length >> 1);

    const hub = fakeHub();
    const path = await hubSource(hub).localPath(shard);
    expect((await readFile(path)).equals(f.content)).toBe(true);
    const gets = hub.log.filter((r) => r.url === resolveUrl(shard) && r.range !== "bytes=0-0");
    expect(gets.map((r) => r.range)).toEqual([`bytes=${half}-`]);
    expect(await readdir(join(repoDir(), "blobs"))).toEqual([f.sha256]);
  });

  it("reports a download's progress as events: bytes done of the file's size, a resumed part as resumed", async () => {
    const shard = SHARDS[2]!;
    const size = files.get(shard)!.content.length;
    type Progress = Extract<RunEvent, { kind: "progress" }>;
    const seen = (events: Progress[]) => events.filter((e) => e.task === `download ${REPO}@main/${shard}`);
    const first: Progress[] = [];
    await expect(hubSource(fakeHub({ truncate: true }), { onEvent: (e) => { if (e.kind === "progress") first.push(e); } }).localPath(shard)).rejects.toThrow(/download incomplete/);
    const half = size >> 1;
    expect(seen(first).length).toBeGreaterThan(1);
    expect(seen(first).every((e) => e.unit === "bytes" && e.total === size && e.resumed === 0)).toBe(true);
    expect(seen(first).at(-1)!.done).toBe(half);

    const again: Progress[] = [];
    await hubSource(fakeHub(), { onEvent: (e) => { if (e.kind === "progress") again.push(e); } }).localPath(shard);
    const events = seen(again);
    expect(events[0]).toMatchObject({ done: half, resumed: half, total: size });
    expect(events.at(-1)).toMatchObject({ done: size, resumed: half, total: size });
    for (let i = 1; i < events.length; i++) expect(events[i]!.done).toBeGreaterThanOrEqual(events[i - 1]!.done);
    expect(again.filter((e) => !seen(again).includes(e))).toEqual([]);
  });

  it("restarts when the server ignores the Range, and never keeps a file whose sha256 is wrong", async () => {
    const shard = SHARDS[1]!;
    const f = files.get(shard)!;
    await mkdir(join(repoDir(), "blobs"), { recursive: true });
    const part = `${blobOf(shard)}.incomplete`;
    await writeFile(part, f.content.subarray(0, 1000));
    const path = await hubSource(fakeHub({ ignoreRanges: true })).localPath(shard);
    expect((await readFile(path)).equals(f.content)).toBe(true);

    // A partial file that is not a prefix of the real one: resumed, caught by the hash, removed.
    const other = SHARDS[2]!;
    await writeFile(`${blobOf(other)}.incomplete`, Buffer.alloc(1000, 7));
    await expect(hubSource(fakeHub()).localPath(other)).rejects.toThrow(/does not match its sha256.*removed, run again/);
    expect(await readdir(join(repoDir(), "blobs"))).toEqual([f.sha256]);
    expect((await readFile(await hubSource(fakeHub()).localPath(other))).equals(files.get(other)!.content)).toBe(true);
  });

  it("two downloads of one file into one cache: one fetches, the other waits for its lock and reuses the blob", async () => {
    const shard = SHARDS[2]!;
    const hubs = [fakeHub(), fakeHub()];
    const notices: string[] = [];
    const paths = await Promise.all(hubs.map((h) => hubSource(h, { notice: (m) => notices.push(m) }).localPath(shard)));
    expect(paths[0]).toBe(paths[1]);
    expect((await readFile(paths[0]!)).equals(files.get(shard)!.content)).toBe(true);
    const downloads = hubs.flatMap((h) => h.log.filter((r) => r.url === resolveUrl(shard) && r.range !== "bytes=0-0"));
    expect(downloads).toHaveLength(1);
    expect(notices).toEqual([expect.stringMatching(new RegExp(`^waiting for process ${process.pid} on .*, which is downloading .*${shard}`))]);
    expect(await readdir(join(cacheDir, ".locks", "models--deepseek-ai--DeepSeek-V3"))).toEqual([]);
  });

  it("takes over the lock of a dead process, and waits for a live one until it is released", async () => {
    const shard = SHARDS[0]!;
    const lockDir = join(cacheDir, ".locks", "models--deepseek-ai--DeepSeek-V3");
    const lock = join(lockDir, `${files.get(shard)!.sha256}.deepcast.lock`);
    await mkdir(lockDir, { recursive: true });
    const dead = spawnSync(process.execPath, ["-e", "0"]).pid!;
    await writeFile(lock, JSON.stringify({ pid: dead, host: hostname(), token: "old" }));
    expect((await readFile(await hubSource(fakeHub()).localPath(shard))).equals(files.get(shard)!.content)).toBe(true);

    const next = SHARDS[1]!;
    const liveLock = join(lockDir, `${files.get(next)!.sha256}.deepcast.lock`);
    await writeFile(liveLock, JSON.stringify({ pid: process.pid, host: hostname(), token: "someone-else" }));
    const notices: string[] = [];
    let done = false;
    const pending = hubSource(fakeHub(), { notice: (m) => notices.push(m) }).localPath(next).then((p) => ((done = true), p));
    await new Promise((r) => setTimeout(r, 1500));
    expect(done).toBe(false);
    expect(notices).toHaveLength(1);
    expect(notices[0]).toContain(liveLock);
    await unlink(liveLock);
    expect((await readFile(await pending)).equals(files.get(next)!.content)).toBe(true);
  });

  it("general.name comes from the repo name, not the commit a snapshot folder is named by", async () => {
    expect(hubCacheModelName(`/c/hub/models--deepseek-ai--DeepSeek-V3/snapshots/${SHA}`)).toBe("DeepSeek-V3");
    expect(hubCacheModelName(`/c/hub/models--deepseek-ai--DeepSeek-V3/snapshots/${SHA}/`)).toBe("DeepSeek-V3");
    expect(hubCacheModelName(`models--a--b--c/snapshots/${SHA}`)).toBe("b--c");
    expect(hubCacheModelName("/data/DeepSeek-V3")).toBeNull();
    // The fixture as a cached snapshot of someone/tiny-dsv3: the same name as from its own folder.
    const snap = join(cacheDir, "models--someone--tiny-dsv3", "snapshots", SHA);
    await mkdir(snap, { recursive: true });
    for (const { name } of localFiles) await symlink(join(FIXTURE, name), join(snap, name));
    const name = async (dir: string) => {
      const plan = await planToGguf(new LocalSource(dir), join(cacheDir, "out.gguf"), { ftype: "Q8_0", dryRun: true });
      return plan.layout.files[0]!.kvs.find((k) => k.key === "general.name")?.value;
    };
    const fromFolder = await name(FIXTURE);
    expect(fromFolder).toBeTruthy();
    expect(fromFolder).not.toBe(SHA);
    expect(await name(snap)).toBe(fromFolder);
  });
});
