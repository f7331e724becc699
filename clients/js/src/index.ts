/**
 * TypeScript client of the simsiam dog-breed embedding server (Node 20+ and browsers:
 * it uses the platform's `fetch`, `FormData` and `Blob`).
 *
 * ```ts
 * import { Client } from "simsiam-client";
 * const c = new Client({ url: "http://127.0.0.1:8080" });
 * const { results } = await c.classify([await fs.readFile("dog.jpg")], { topK: 3 });
 * ```
 *
 * A 503 (queue full, shutting down) is retried after the server's `Retry-After`, or an
 * exponential backoff; a failed connection is retried for requests without side effects.
 * Other errors reject with a {@link SimsiamError} ({@link InsufficientStorageError} for a 507:
 * the server's disk is full; not retried).
 */

/** An image: encoded bytes (JPEG, PNG) or a Blob/File. */
export type ImageInput = Blob | ArrayBuffer | Uint8Array;

export interface Embeddings {
  model: string;
  dim: number;
  embeddings: number[][];
}

export interface Prediction {
  breed: string;
  probability: number;
}

export interface Classification {
  model: string;
  /** Per image, breeds ranked by probability. */
  results: Prediction[][];
}

export interface Neighbor {
  id: string;
  score: number;
  breed: string | null;
  source: string | null;
  metadata: unknown;
}

export interface Search {
  model: string;
  /** Per query, its nearest gallery entries (cosine, best first). */
  results: Neighbor[][];
}

export interface Added {
  added: number;
  ids: string[];
  total: number;
}

export interface Deleted {
  deleted: string;
  total: number;
}

export interface GalleryCounts {
  total: number;
  dim: number;
  by_breed: Record<string, number>;
}

export interface Model {
  id: string;
  provider: string;
  dim: number;
  breeds: string[];
  manifest: Record<string, unknown>;
}

/** `GET /v1/models` whole: the models and what a request may hold. */
export interface Info {
  models: Model[];
  limits: {
    max_images: number;
    max_body_bytes: number;
    max_pixels: number;
    max_k: number;
    request_timeout_s: number;
    fetch_urls: boolean;
  };
  batching: { max_batch: number; max_wait_ms: number; queue_capacity: number };
}

/** The answer of the OpenAI-compatible `POST /v1/embeddings`. */
export interface OpenAIEmbeddings {
  object: "list";
  data: { object: "embedding"; index: number; embedding: number[] | string }[];
  model: string;
  usage: { prompt_tokens: number; total_tokens: number };
}

export interface ClientOptions {
  url?: string;
  apiKey?: string;
  /** Per request, in milliseconds (default 60 000). */
  timeoutMs?: number;
  /** Retries after a 503 or a failed connection (default 3). */
  retries?: number;
  /** First backoff when the server gives no Retry-After, in milliseconds (default 500). */
  backoffMs?: number;
}

/** The server answered with an error: its status, code and message, and OpenAI's fields. */
export class SimsiamError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly type: string | null = null,
    readonly param: string | null = null,
  ) {
    super(`${status} ${code}: ${message}`);
    this.name = "SimsiamError";
  }
}

/**
 * 507: the server's gallery disk is full, so nothing was written. Not retried: it fails the
 * same way until an operator frees space. Searches and embeddings keep working meanwhile.
 */
export class InsufficientStorageError extends SimsiamError {
  constructor(code: string, message: string, type: string | null = null, param: string | null = null) {
    super(507, code, message, type, param);
    this.name = "InsufficientStorageError";
  }
}

function errorOf(status: number, code: string, message: string, type: string | null, param: string | null): SimsiamError {
  return status === 507
    ? new InsufficientStorageError(code, message, type, param)
    : new SimsiamError(status, code, message, type, param);
}

interface Call {
  method: string;
  path: string;
  body?: FormData | string;
  json?: boolean;
  /** Safe to send again after a failed connection. */
  replayable: boolean;
}

function blob(image: ImageInput): Blob {
  if (image instanceof Blob) return image;
  // A copy: a view may sit on a SharedArrayBuffer, which Blob does not take.
  return new Blob([image instanceof ArrayBuffer ? image : new Uint8Array(image)]);
}

function imagesForm(images: ImageInput[], fields: [string, string][] = []): FormData {
  if (images.length === 0) throw new Error("no images");
  const form = new FormData();
  images.forEach((img, i) => form.append("images", blob(img), `image${i}`));
  for (const [k, v] of fields) form.append(k, v);
  return form;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Client {
  readonly url: string;
  private readonly apiKey?: string;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly backoffMs: number;
  /** How many requests were sent again after a 503 or a failed connection. */
  retried = 0;

  constructor(options: ClientOptions = {}) {
    this.url = (options.url ?? "http://127.0.0.1:8080").replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.retries = options.retries ?? 3;
    this.backoffMs = options.backoffMs ?? 500;
  }

  embed(images: ImageInput[]): Promise<Embeddings> {
    return this.send({ method: "POST", path: "/v1/embed", body: imagesForm(images), replayable: true });
  }

  async classify(images: ImageInput[], options: { topK?: number } = {}): Promise<Classification> {
    const fields: [string, string][] = [["top_k", String(options.topK ?? 5)]];
    const raw = await this.send<{ model: string; results: { predictions: Prediction[] }[] }>({
      method: "POST",
      path: "/v1/classify",
      body: imagesForm(images, fields),
      replayable: true,
    });
    return { model: raw.model, results: raw.results.map((r) => r.predictions) };
  }

  /** Nearest gallery entries to images, or to vectors (`{ vectors }`). */
  async search(
    query: { images?: ImageInput[]; vectors?: number[][] },
    options: { k?: number; breed?: string } = {},
  ): Promise<Search> {
    const k = options.k ?? 10;
    let call: Call;
    if ((query.images === undefined) === (query.vectors === undefined)) {
      throw new Error("give images or vectors, not both");
    }
    if (query.vectors) {
      const body: Record<string, unknown> = { vectors: query.vectors, k };
      if (options.breed !== undefined) body.breed = options.breed;
      call = { method: "POST", path: "/v1/search", body: JSON.stringify(body), json: true, replayable: true };
    } else {
      const fields: [string, string][] = [["k", String(k)]];
      if (options.breed !== undefined) fields.push(["breed", options.breed]);
      call = { method: "POST", path: "/v1/search", body: imagesForm(query.images ?? [], fields), replayable: true };
    }
    const raw = await this.send<{ model: string; results: { neighbors: Neighbor[] }[] }>(call);
    return { model: raw.model, results: raw.results.map((r) => r.neighbors) };
  }

  /** Adds (or replaces, by id) gallery entries: one id per image. */
  add(
    images: ImageInput[],
    entries: { ids: string[]; breeds?: string[]; sources?: string[]; metadata?: unknown },
  ): Promise<Added> {
    const fields: [string, string][] = entries.ids.map((id) => ["ids", id]);
    for (const b of entries.breeds ?? []) fields.push(["breeds", b]);
    for (const s of entries.sources ?? []) fields.push(["sources", s]);
    if (entries.metadata !== undefined) fields.push(["metadata", JSON.stringify(entries.metadata)]);
    return this.send({ method: "POST", path: "/v1/gallery", body: imagesForm(images, fields), replayable: true });
  }

  delete(id: string): Promise<Deleted> {
    return this.send({ method: "DELETE", path: `/v1/gallery/${id}`, replayable: false });
  }

  gallery(): Promise<GalleryCounts> {
    return this.send({ method: "GET", path: "/v1/gallery", replayable: true });
  }

  async models(): Promise<Model[]> {
    return (await this.info()).models;
  }

  /** The models and the limits a request must stay within. */
  info(): Promise<Info> {
    return this.send({ method: "GET", path: "/v1/models", replayable: true });
  }

  /** The OpenAI-compatible route: images as data URIs or base64. */
  embeddings(
    input: string | string[],
    options: { model?: string; encodingFormat?: "float" | "base64" } = {},
  ): Promise<OpenAIEmbeddings> {
    const body = JSON.stringify({
      model: options.model ?? "default",
      input,
      encoding_format: options.encodingFormat ?? "float",
    });
    return this.send({ method: "POST", path: "/v1/embeddings", body, json: true, replayable: true });
  }

  private async send<T>(call: Call): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      let response: Response;
      try {
        const headers: Record<string, string> = {};
        if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
        if (call.json) headers["Content-Type"] = "application/json";
        response = await fetch(this.url + call.path, {
          method: call.method,
          body: call.body,
          headers,
          signal: AbortSignal.timeout(this.timeoutMs),
        });
      } catch (e) {
        if (call.replayable && attempt < this.retries) {
          this.retried++;
          await sleep(this.backoff(attempt, null));
          continue;
        }
        throw new SimsiamError(0, "connection_failed", `${call.method} ${this.url}${call.path}: ${e}`);
      }
      if (response.status === 503 && attempt < this.retries) {
        this.retried++;
        await response.body?.cancel();
        await sleep(this.backoff(attempt, response.headers.get("retry-after")));
        continue;
      }
      if (!response.ok) throw await toError(response);
      return (await response.json()) as T;
    }
  }

  private backoff(attempt: number, retryAfter: string | null): number {
    const seconds = retryAfter === null ? NaN : Number(retryAfter);
    if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
    return this.backoffMs * 2 ** attempt * (0.5 + Math.random() / 2);
  }
}

async function toError(response: Response): Promise<SimsiamError> {
  try {
    const { error } = (await response.json()) as {
      error: { code: string; message: string; type?: string; param?: string | null };
    };
    return errorOf(response.status, error.code, error.message, error.type ?? null, error.param ?? null);
  } catch {
    return errorOf(response.status, "http_error", response.statusText, null, null);
  }
}
