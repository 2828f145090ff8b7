/**
 * HubSource against an in-process fake of the Hugging Face Hub that serves fixtures/tiny-dsv3 the
 * way huggingface.co does (model info, tree listing, resolve with Range), so this runs offline.
 */
import { createHash } from "node:crypto";
import { lstat, mkdtemp, readdir, readFile, readlink, rm, unlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { DeepcastError } from "../src/errors.js";
import { hfHubCacheDir, HubSource, isHubRepoId } from "../src/io/hub.js";
import { openSource } from "../src/io/open-source.js";
import { readHeader } from "../src/io/safetensors.js";
import { LocalSource, type SourceFile } from "../src/io/source.js";

const FIXTURE = fileURLToPath(new URL("../fixtures/tiny-dsv3", import.meta.url));
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
      const r = entry.range && /^bytes=(\d+)-(\d+)$/.exec(entry.range);
      if (r && !(opts.ignoreRanges && entry.range !== "bytes=0-0")) {
        const start = Number(r[1]);
        const end = Math.min(Number(r[2]), size - 1);
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
  cacheDir = await mkdtemp(join(tmpdir(), "deepcast-hub-"));
});

afterEach(async () => {
  vi.unstubAllEnvs();
  await rm(cacheDir, { recursive: true, force: true });
});

function hubSource(hub: ReturnType<typeof fakeHub>, extra: { revision?: string; accessToken?: string } = {}) {
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

  it("does not keep a truncated download", async () => {
    const source = hubSource(fakeHub({ truncate: true }));
    await expect(source.localPath(SHARDS[0]!)).rejects.toThrow(/download incomplete.*model-00001-of-00003/);
    expect(await readdir(join(cacheDir, "models--deepseek-ai--DeepSeek-V3", "blobs"))).toEqual([]);
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
