/**
 * A checkpoint on the Hugging Face Hub, read through @huggingface/hub. Headers are read with HTTP
 * Range requests; a file is downloaded only when a command asks for its local path, into the
 * Python-compatible cache (`models--org--name/{blobs,snapshots/<sha>,refs}`) so that files already
 * fetched by `huggingface-cli` or transformers are reused, and vice versa.
 *
 * Every request is pinned to the commit sha the revision resolves to when first used, so a branch
 * that moves during a long conversion cannot mix shards of two versions.
 *
 * huggingface_hub's habits (./hub-cache.ts): the token saved by `hf auth login` when HF_TOKEN is
 * unset; with HF_HUB_OFFLINE=1, or when the Hub cannot be reached, the cached snapshot of the
 * revision is used if it holds the whole checkpoint (and a notice says so); an interrupted download
 * keeps its `.incomplete` file and the next run resumes it with a Range request; a lock per blob
 * keeps two processes from writing the same file, and links are made under unique names and
 * renamed into place.
 */
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { copyFile, mkdir, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as NodeReadableStream } from "node:stream/web";
import type { ListFileEntry } from "@huggingface/hub";
import { DeepcastError } from "../errors.js";
import { cachedSnapshot, hfHubCacheDir, hfHubOffline, hfToken, lockBlob, repoCacheDir, snapshotBlobName, type CachedSnapshot } from "./hub-cache.js";
import type { SafetensorsHeader } from "./safetensors.js";
import { LocalSource, readHeaderByRanges, type CheckpointSource, type SourceFile } from "./source.js";

export { hfHubCacheDir } from "./hub-cache.js";

export const DEFAULT_HUB_URL = "https://huggingface.co";

type HubLibrary = typeof import("@huggingface/hub");
let hubLib: HubLibrary | undefined;

/**
 * @huggingface/hub, loaded on first use: it pulls in WebAssembly hashers at load time, start-up
 * work that a run on a local model never needs. Its errors exist only once it is loaded.
 */
async function hubLibrary(): Promise<HubLibrary> {
  hubLib ??= await import("@huggingface/hub");
  return hubLib;
}

/** `owner/name` as the Hub accepts it (huggingface_hub's validate_repo_id, with the owner required). */
const REPO_ID = /^[A-Za-z0-9][\w.-]{0,95}\/[\w.-]{1,96}$/;
const COMMIT_SHA = /^[0-9a-f]{40}$/;

export function isHubRepoId(spec: string): boolean {
  return REPO_ID.test(spec) && !spec.includes("--") && !spec.includes("..") && !/[.-]$/.test(spec);
}

export interface HubSourceOptions {
  /** Branch, tag or commit sha; default `main`. */
  revision?: string;
  /** Default `$HF_TOKEN`, else the token file `hf auth login` saved (`$HF_TOKEN_PATH`, `$HF_HOME/token`). */
  accessToken?: string;
  /** Default `$HF_ENDPOINT`, else https://huggingface.co (the library does not read it). */
  hubUrl?: string;
  /** Default {@link hfHubCacheDir}. */
  cacheDir?: string;
  fetch?: typeof fetch;
  /** Use only the cached snapshot, no request (default: `$HF_HUB_OFFLINE`). */
  offline?: boolean;
  /** Where notices go (cached snapshot used, waiting for another download); default stderr. */
  notice?: (message: string) => void;
}

/** Errors of a Hub call that never reached the Hub (DNS, refused, timeout), as opposed to its answers. */
const unreachable = new WeakSet<DeepcastError>();

export class HubSource implements CheckpointSource {
  readonly revision: string;
  readonly hubUrl: string;
  readonly cacheDir: string;
  private readonly accessToken: string | undefined;
  /** Where the token came from, for messages: "HF_TOKEN" or the token file. */
  private readonly tokenFrom: string | undefined;
  private readonly fetchFn: typeof fetch | undefined;
  private readonly offline: boolean;
  private readonly notice: (message: string) => void;
  /** Resolves to the cached snapshot when it stands in for the Hub, else to null. */
  private mode?: Promise<LocalSource | null>;
  private commitSha?: Promise<string>;
  private listing?: Promise<Map<string, ListFileEntry>>;
  private readonly downloads = new Map<string, Promise<string>>();

  constructor(readonly repo: string, opts: HubSourceOptions = {}) {
    if (!isHubRepoId(repo)) {
      throw new DeepcastError(`not a Hugging Face model repo id: expected owner/name, like deepseek-ai/DeepSeek-V3`, { file: repo });
    }
    this.revision = opts.revision ?? "main";
    this.hubUrl = (opts.hubUrl ?? (process.env["HF_ENDPOINT"] || DEFAULT_HUB_URL)).replace(/\/+$/, "");
    this.cacheDir = opts.cacheDir ?? hfHubCacheDir();
    const token = opts.accessToken !== undefined ? { token: opts.accessToken, from: "HF_TOKEN" } : hfToken();
    this.accessToken = token?.token;
    this.tokenFrom = token?.from;
    this.fetchFn = opts.fetch;
    this.offline = opts.offline ?? hfHubOffline();
    this.notice = opts.notice ?? ((m) => process.stderr.write(`deepcast: ${m}\n`));
    // The library rejects other tokens with a bare TypeError deep inside the first request.
    if (this.accessToken !== undefined && !this.accessToken.startsWith("hf_")) {
      const where = this.tokenFrom === "HF_TOKEN" ? "HF_TOKEN" : `the token file ${this.tokenFrom}`;
      throw new DeepcastError(`${where} must hold a Hugging Face access token starting with hf_`, { file: this.description, code: "USAGE" });
    }
  }

  /**
   * The cached snapshot when it stands in for the Hub (HF_HUB_OFFLINE, or the Hub unreachable), else
   * null. Decided once, on the first call: offline at once, online by the first listing.
   */
  private source(): Promise<LocalSource | null> {
    if (this.mode) return this.mode;
    this.mode = this.offline
      ? this.fromCache("HF_HUB_OFFLINE is set", undefined)
      : this.entries().then(
          () => null,
          (e: unknown) => {
            if (e instanceof DeepcastError && unreachable.has(e)) return this.fromCache(e.message.replace(/ \(check the network.*$/, ""), e);
            throw e;
          },
        );
    this.mode.catch(() => (this.mode = undefined));
    return this.mode;
  }

  private async fromCache(why: string, cause: DeepcastError | undefined): Promise<LocalSource> {
    const snap: CachedSnapshot | null = await cachedSnapshot(this.cacheDir, this.repo, this.revision);
    const where = repoCacheDir(this.cacheDir, this.repo);
    if (!snap) {
      throw new DeepcastError(
        `${why}, and the Hugging Face cache has no snapshot of ${this.description} (looked in ${where}): ` +
          (cause ? "check the network, or HF_ENDPOINT for a mirror" : "unset HF_HUB_OFFLINE to download it, or give a local folder"),
        { file: this.description, code: "NETWORK" },
        { cause },
      );
    }
    if (snap.missing.length > 0) {
      const list = snap.missing.length > 5 ? `${snap.missing.slice(0, 5).join(", ")} and ${snap.missing.length - 5} more` : snap.missing.join(", ");
      throw new DeepcastError(
        `${why}, and the cached snapshot ${snap.dir} is incomplete: it lacks ${list}` +
          (cause ? "" : "; unset HF_HUB_OFFLINE to download the rest"),
        { file: this.description, code: "NETWORK" },
        { cause },
      );
    }
    this.notice(`${why}: using the cached snapshot ${snap.sha} of ${this.description} (${snap.dir})`);
    return new CachedSnapshotSource(snap.dir);
  }

  get description(): string {
    return `${this.repo}@${this.revision}`;
  }

  async listFiles(): Promise<SourceFile[]> {
    const cached = await this.source();
    if (cached) return cached.listFiles();
    const entries = await this.entries();
    return [...entries.values()].map((e) => ({ name: e.path, size: e.size }));
  }

  async readFile(name: string): Promise<Buffer> {
    const cached = await this.source();
    if (cached) return cached.readFile(name);
    const blob = await this.blob(name);
    return Buffer.from(await this.hub(() => blob.arrayBuffer(), name));
  }

  async readHeader(name: string): Promise<SafetensorsHeader> {
    const cached = await this.source();
    if (cached) return cached.readHeader(name);
    const blob = await this.blob(name);
    return readHeaderByRanges(this.label(name), blob.size, async (start, end) => {
      const bytes = new Uint8Array(await this.hub(() => blob.slice(start, end).arrayBuffer(), name));
      // A server that ignores Range answers with the whole file: never parse that as the header.
      if (bytes.length !== end - start) {
        throw new DeepcastError(
          `the Hub answered a request for bytes ${start}-${end - 1} with ${bytes.length} bytes (Range not honoured)`,
          { file: this.label(name) },
        );
      }
      return bytes;
    });
  }

  localPath(name: string): Promise<string> {
    let pending = this.downloads.get(name);
    if (!pending) {
      pending = this.source().then((cached) => (cached ? cached.localPath(name) : this.download(name)));
      this.downloads.set(name, pending);
      pending.catch(() => this.downloads.delete(name));
    }
    return pending;
  }

  async fileIdentity(name: string): Promise<string> {
    const cached = await this.source();
    if (cached) return cached.fileIdentity(name);
    const entry = await this.entry(name);
    return `${entry.size}:${etagOf(entry, this.label(name))}`;
  }

  /** Bytes of `names` not yet in the cache (a partial `.incomplete` counts as far as it goes), for the free-space check. */
  async pendingDownload(names: readonly string[]): Promise<{ dir: string; bytes: number }> {
    if (await this.source()) return { dir: this.cacheDir, bytes: 0 };
    const repoDir = repoCacheDir(this.cacheDir, this.repo);
    let bytes = 0;
    for (const name of names) {
      const entry = await this.entry(name);
      const blobPath = join(repoDir, "blobs", etagOf(entry, this.label(name)));
      if ((await sizeOf(blobPath)) === entry.size) continue;
      bytes += entry.size - Math.min(entry.size, (await sizeOf(`${blobPath}.incomplete`)) ?? 0);
    }
    return { dir: this.cacheDir, bytes };
  }

  /** Downloads into the cache unless the snapshot already holds the file; returns the snapshot path. */
  private async download(name: string): Promise<string> {
    const entry = await this.entry(name);
    const sha = await this.commit();
    const repoDir = repoCacheDir(this.cacheDir, this.repo);
    const pointer = join(repoDir, "snapshots", sha, name);
    const file = this.label(name);
    const etag = etagOf(entry, file);
    const blobPath = join(repoDir, "blobs", etag);
    try {
      if (this.revision !== sha) {
        const ref = join(repoDir, "refs", this.revision);
        await mkdir(dirname(ref), { recursive: true });
        await renameIntoPlace(ref, (tmp) => writeFile(tmp, sha));
      }
      if ((await sizeOf(pointer)) === entry.size) return pointer;
      if ((await sizeOf(blobPath)) !== entry.size) {
        await mkdir(dirname(blobPath), { recursive: true });
        const release = await lockBlob(this.cacheDir, this.repo, etag, {
          onWait: (holder, lock) => this.notice(`waiting for ${holder}, which is downloading ${file} into the same cache (lock ${lock})`),
        });
        try {
          // Another process may have finished it while we waited.
          if ((await sizeOf(blobPath)) !== entry.size) await this.fetchBlob(name, sha, entry, blobPath);
        } finally {
          await release();
        }
      }
      await mkdir(dirname(pointer), { recursive: true });
      const target = relative(dirname(pointer), blobPath);
      await renameIntoPlace(pointer, (tmp) => symlink(target, tmp).catch(() => copyFile(blobPath, tmp)));
      return pointer;
    } catch (e) {
      if (e instanceof DeepcastError) throw e;
      throw new DeepcastError(`cannot write the Hugging Face cache at ${this.cacheDir}: ${messageOf(e)}`, { file, code: "WRITE_FAILED" }, { cause: e });
    }
  }

  /**
   * Fetches a file into `<blob>.incomplete` and renames it to the blob once whole (and, for LFS
   * files, once its sha256 matches). A `.incomplete` left by an interrupted run is resumed with a
   * Range request; a server that answers with the whole file instead restarts it.
   */
  private async fetchBlob(name: string, sha: string, entry: ListFileEntry, blobPath: string): Promise<void> {
    const file = this.label(name);
    const incomplete = `${blobPath}.incomplete`;
    let have = (await sizeOf(incomplete)) ?? 0;
    if (have >= entry.size) {
      await rm(incomplete, { force: true });
      have = 0;
    }
    const url = `${this.hubUrl}/${this.repo}/resolve/${sha}/${encodeURIComponent(name)}`;
    const headers: Record<string, string> = {};
    if (this.accessToken) headers["Authorization"] = `Bearer ${this.accessToken}`;
    if (have > 0) headers["Range"] = `bytes=${have}-`;
    const { HubApiError } = await hubLibrary();
    const res = await this.hub(async () => {
      const r = await (this.fetchFn ?? fetch)(url, { headers });
      if (!r.ok) throw new HubApiError(url, r.status, r.headers.get("x-request-id") ?? undefined, (await r.text().catch(() => "")) || r.statusText);
      return r;
    }, name);
    let start = 0;
    if (have > 0 && res.status === 206) {
      const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(res.headers.get("content-range") ?? "");
      if (!range || Number(range[1]) !== have || Number(range[3]) !== entry.size) {
        await res.body?.cancel();
        await rm(incomplete, { force: true });
        throw new DeepcastError(`the Hub answered a resume request for bytes ${have}- with ${res.headers.get("content-range") ?? "no Content-Range"}: the partial download was removed, run again`, { file, code: "NETWORK" });
      }
      start = have;
    }
    const expected = entry.lfs?.oid && /^[0-9a-f]{64}$/.test(entry.lfs.oid) ? entry.lfs.oid : undefined;
    const hash = expected ? createHash("sha256") : undefined;
    if (hash && start > 0) for await (const chunk of createReadStream(incomplete, { end: start - 1 })) hash.update(chunk as Buffer);
    try {
      if (!res.body) throw new Error("empty response body");
      const tap = new Transform({
        transform(chunk: Buffer, _enc, done) {
          hash?.update(chunk);
          done(null, chunk);
        },
      });
      await pipeline(Readable.fromWeb(res.body as NodeReadableStream<Uint8Array>), tap, createWriteStream(incomplete, { flags: start > 0 ? "a" : "w" }));
    } catch (e) {
      const got = (await sizeOf(incomplete)) ?? 0;
      throw new DeepcastError(`download interrupted at ${got} of ${entry.size} bytes (${messageOf(e)}): run again to resume it`, { file, code: "NETWORK" }, { cause: e });
    }
    const got = (await sizeOf(incomplete)) ?? 0;
    if (got < entry.size) {
      throw new DeepcastError(`download incomplete: got ${got} of ${entry.size} bytes; the part is kept in ${incomplete}: run again to resume it`, { file, code: "NETWORK" });
    }
    if (got > entry.size) {
      await rm(incomplete, { force: true });
      throw new DeepcastError(`download too long: got ${got} of ${entry.size} bytes; removed, run again`, { file, code: "NETWORK" });
    }
    if (hash && hash.digest("hex") !== expected) {
      await rm(incomplete, { force: true });
      throw new DeepcastError(`downloaded file does not match its sha256 ${expected}; removed, run again`, { file, code: "NETWORK" });
    }
    await rename(incomplete, blobPath);
  }

  /** A lazy blob of the file: `slice().arrayBuffer()` issues Range requests, `stream()` the full GET. */
  private async blob(name: string): Promise<Blob> {
    await this.entry(name);
    const revision = await this.commit();
    const { downloadFile } = await hubLibrary();
    const blob = await this.hub(() => downloadFile({ ...this.params(), path: name, revision }), name);
    if (!blob) throw new DeepcastError(`file not found in Hugging Face repo ${this.description}`, { file: this.label(name) });
    return blob;
  }

  private async entry(name: string): Promise<ListFileEntry> {
    const entry = (await this.entries()).get(name);
    if (!entry) throw new DeepcastError(`file not found in Hugging Face repo ${this.description}`, { file: this.label(name) });
    return entry;
  }

  private entries(): Promise<Map<string, ListFileEntry>> {
    if (this.listing) return this.listing;
    this.listing = this.hub(async () => {
      const revision = await this.commit();
      const { listFiles } = await hubLibrary();
      const files = new Map<string, ListFileEntry>();
      for await (const e of listFiles({ ...this.params(), revision })) {
        // Top level only; a name that could escape the cache folder is not a checkpoint file.
        if (e.type === "file" && !/[/\\]/.test(e.path) && e.path !== "..") files.set(e.path, e);
      }
      return new Map([...files].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    });
    this.listing.catch(() => (this.listing = undefined));
    return this.listing;
  }

  /** The commit sha the revision points to, resolved once. */
  private commit(): Promise<string> {
    if (COMMIT_SHA.test(this.revision)) return Promise.resolve(this.revision);
    if (this.commitSha) return this.commitSha;
    this.commitSha = this.hub(async () => {
      const { modelInfo, InvalidApiResponseFormatError } = await hubLibrary();
      const info = await modelInfo({ ...this.params(), name: this.repo, revision: this.revision, additionalFields: ["sha"] });
      if (!COMMIT_SHA.test(info.sha)) throw new InvalidApiResponseFormatError(`no commit sha for revision ${this.revision}`);
      return info.sha;
    });
    this.commitSha.catch(() => (this.commitSha = undefined));
    return this.commitSha;
  }

  private params() {
    return { repo: this.repo, hubUrl: this.hubUrl, accessToken: this.accessToken, fetch: this.fetchFn };
  }

  private label(name: string): string {
    return `${this.description}/${name}`;
  }

  /** Runs a Hub call, turning its failures into errors that name the repo (and file) and say what to do. */
  private async hub<T>(call: () => Promise<T>, name?: string): Promise<T> {
    try {
      return await call();
    } catch (e) {
      throw this.explain(e, name);
    }
  }

  private explain(e: unknown, name: string | undefined): DeepcastError {
    if (e instanceof DeepcastError) return e;
    const file = name === undefined ? this.description : this.label(name);
    if (hubLib && e instanceof hubLib.HubApiError) {
      if (e.statusCode === 401 || e.statusCode === 403) {
        const hint = this.accessToken
          ? `the token in ${this.tokenFrom === "HF_TOKEN" ? "HF_TOKEN" : this.tokenFrom} has no access to it: check the token, and for a gated model accept its terms on the model page`
          : "it may be private or gated: set HF_TOKEN to a Hugging Face access token with read access, or log in with `hf auth login`";
        return new DeepcastError(`the Hugging Face Hub refused access (HTTP ${e.statusCode}) to ${this.repo}; ${hint}`, { file }, { cause: e });
      }
      if (e.statusCode === 404) {
        const what = name === undefined
          ? `Hugging Face repo ${this.repo} or its revision ${this.revision} not found`
          : `file not found in Hugging Face repo ${this.description}`;
        return new DeepcastError(what, { file }, { cause: e });
      }
      return new DeepcastError(`the Hugging Face Hub answered HTTP ${e.statusCode}: ${e.message}`, { file }, { cause: e });
    }
    if (hubLib && e instanceof hubLib.InvalidApiResponseFormatError) {
      return new DeepcastError(`unexpected response from the Hugging Face Hub at ${this.hubUrl}: ${e.message}`, { file }, { cause: e });
    }
    const err = new DeepcastError(
      `cannot reach the Hugging Face Hub at ${this.hubUrl}: ${messageOf(e)} (check the network, or HF_ENDPOINT for a mirror)`,
      { file, code: "NETWORK" },
      { cause: e },
    );
    unreachable.add(err);
    return err;
  }
}

/** The name huggingface_hub gives the cached blob: the LFS sha256, else the Xet hash, else the git oid. */
function etagOf(entry: ListFileEntry, file: string): string {
  const etag = entry.lfs?.oid ?? entry.xetHash ?? entry.oid;
  if (!etag || !/^[\w-]+$/.test(etag)) {
    throw new DeepcastError("the Hub listing gives no usable etag for this file", { file });
  }
  return etag;
}

async function sizeOf(path: string): Promise<number | undefined> {
  return (await stat(path).catch(() => null))?.size;
}

function messageOf(e: unknown): string {
  const cause = e instanceof Error && e.cause instanceof Error ? `: ${e.cause.message}` : "";
  return e instanceof Error ? e.message + cause : String(e);
}

/** Writes `path` under a unique temporary name beside it, then renames it into place (atomic for readers and other writers). */
async function renameIntoPlace(path: string, make: (tmp: string) => Promise<unknown>): Promise<void> {
  const tmp = join(dirname(path), `.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`);
  try {
    await make(tmp);
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/** A complete cached snapshot standing in for the Hub: file identities are the blob names, as online. */
class CachedSnapshotSource extends LocalSource {
  override async fileIdentity(name: string): Promise<string> {
    const path = join(this.dir, name);
    const blob = await snapshotBlobName(path);
    const s = await stat(path).catch(() => null);
    if (blob === null || !s) return super.fileIdentity(name);
    return `${s.size}:${blob}`;
  }
}
