/**
 * What the suites share: the server binary on a free port, and a dog photo.
 *
 * The server binary comes from SIMSIAM_SERVER_BIN, else the project's target/release/server
 * (`make test` builds it); the model is models/default.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { deflateSync } from "node:zlib";

// dist/test/ → the project root, four levels up.
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
const SERVER = process.env.SIMSIAM_SERVER_BIN ?? join(ROOT, "target/release/server");

function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const address = s.address();
      s.close(() => (typeof address === "object" && address ? ok(address.port) : fail(new Error("no port"))));
    });
  });
}

/** The server binary on a free port, with its own empty gallery directory. */
export class Server {
  private constructor(
    readonly url: string,
    private readonly proc: ChildProcess,
  ) {}

  /** `gallery`: the gallery directory (default: a new empty one). */
  static async start(env: Record<string, string> = {}, gallery?: string): Promise<Server> {
    if (!existsSync(SERVER)) {
      throw new Error(`no server binary at ${SERVER}: build it (cargo build --release -p simsiam-server)`);
    }
    const port = await freePort();
    gallery ??= mkdtempSync(join(tmpdir(), "simsiam-js-"));
    let log = "";
    const proc = spawn(
      SERVER,
      ["--model", join(ROOT, "models/default"), "--port", String(port), "--gallery-dir", gallery],
      { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "ignore", "pipe"] },
    );
    proc.stderr?.on("data", (d) => (log += d));
    const url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      if (proc.exitCode !== null) break;
      try {
        if ((await fetch(url + "/healthz")).ok) return new Server(url, proc);
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    proc.kill();
    throw new Error(`the server did not start:\n${log}`);
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode !== null) return;
    const exited = new Promise((r) => this.proc.once("exit", r));
    this.proc.kill("SIGTERM");
    await exited;
  }
}

/** A real dog photo from the shared data, or a generated PNG where it is absent. */
export function dogPhoto(): Uint8Array {
  const images = join(ROOT, "../shared/data/stanford-dogs/Images");
  if (existsSync(images)) {
    const breed = readdirSync(images).sort()[0];
    const file = readdirSync(join(images, breed)).sort()[0];
    return readFileSync(join(images, breed, file));
  }
  return png(160, 120, (x, y) => [180, (x * 2) % 256, (y * 3) % 256]);
}

/** An RGB PNG of `width × height` pixels coloured by `pixel`. */
export function png(width: number, height: number, pixel: (x: number, y: number) => number[]): Uint8Array {
  const rows = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) rows.set(pixel(x, y), y * (width * 3 + 1) + 1 + x * 3);
  }
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    for (let k = 0; k < 8; k++) n = n & 1 ? 0xedb88320 ^ (n >>> 1) : n >>> 1;
    return n >>> 0;
  });
  const crc = (b: Buffer) => (b.reduce((c, x) => crcTable[(c ^ x) & 0xff] ^ (c >>> 8), 0xffffffff) ^ 0xffffffff) >>> 0;
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type, "latin1"), data]);
    const out = Buffer.alloc(body.length + 8);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc(body), body.length + 4);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8 bits per channel, RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(rows)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}
