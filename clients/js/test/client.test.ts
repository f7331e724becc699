/** The TypeScript client against a real server process on the default model. */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client, InsufficientStorageError, SimsiamError } from "../src/index.js";
import { Server, dogPhoto } from "./server.js";

let server: Server;
const dog = dogPhoto();

before(async () => {
  server = await Server.start();
});
after(async () => {
  await server?.stop();
});

test("every route answers with typed results", async () => {
  const c = new Client({ url: server.url });
  const top = (await c.classify([dog], { topK: 3 })).results[0];
  assert.equal(top.length, 3);
  assert.ok(top[0].probability >= top[1].probability && top[1].probability >= top[2].probability);

  const e = await c.embed([dog]);
  assert.equal(e.embeddings[0].length, e.dim);
  const norm = e.embeddings[0].reduce((s, x) => s + x * x, 0);
  assert.ok(Math.abs(norm - 1) < 1e-4, `norm² ${norm}`);

  const byImage = (await c.search({ images: [dog] }, { k: 4 })).results[0];
  const byVector = (await c.search({ vectors: e.embeddings }, { k: 4 })).results[0];
  assert.deepEqual(
    byImage.map((h) => h.id),
    byVector.map((h) => h.id),
  );
  assert.equal(byImage.length, 4);
  assert.ok(byImage[0].score >= byImage[3].score);
  const breed = top[0].breed;
  const filtered = (await c.search({ images: [dog] }, { k: 3, breed })).results[0];
  assert.ok(filtered.every((h) => h.breed === breed));

  const before = (await c.gallery()).total;
  const added = await c.add([new Blob([new Uint8Array(dog)])], { ids: ["js/rex"], breeds: ["Pug"], metadata: { owner: "ann" } });
  assert.deepEqual([added.added, added.ids, added.total], [1, ["js/rex"], before + 1]);
  const hit = (await c.search({ images: [dog] }, { k: 1, breed: "Pug" })).results[0][0];
  assert.deepEqual([hit.id, hit.metadata], ["js/rex", { owner: "ann" }]);
  assert.ok((await c.gallery()).by_breed["Pug"] >= 1);
  assert.equal((await c.delete("js/rex")).total, before);

  const [model] = await c.models();
  assert.ok(["cpu", "cuda"].includes(model.provider));
  assert.equal(model.breeds.length, 120);
  assert.equal(model.dim, e.dim);
  const { limits, batching } = await c.info();
  assert.deepEqual([limits.max_images, limits.max_k, batching.max_batch], [32, 100, 32]);
});

test("the OpenAI-compatible route gives /v1/embed's vectors in both encodings", async () => {
  const c = new Client({ url: server.url });
  const reference = (await c.embed([dog])).embeddings[0];
  const uri = "data:image/*;base64," + Buffer.from(dog).toString("base64");
  const float = (await c.embeddings([uri])).data[0].embedding as number[];
  const b64 = (await c.embeddings(uri, { encodingFormat: "base64" })).data[0].embedding as string;
  const bytes = Buffer.from(b64, "base64");
  const decoded = Array.from(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4));
  for (const got of [float, decoded]) {
    assert.equal(got.length, reference.length);
    const worst = Math.max(...got.map((x, i) => Math.abs(x - reference[i])));
    assert.ok(worst <= 1e-6, `max |diff| ${worst}`);
  }
  await assert.rejects(c.embeddings([uri], { model: "gpt-4" }), (e: SimsiamError) => {
    assert.equal(e.status, 404);
    assert.equal(e.param, "model");
    return true;
  });
});

test("server errors reject with status, code and message", async () => {
  const c = new Client({ url: server.url });
  await assert.rejects(c.delete("no/such/id"), (e: SimsiamError) => {
    assert.ok(e instanceof SimsiamError);
    assert.deepEqual([e.status, e.code], [404, "not_found"]);
    return true;
  });
  await assert.rejects(c.embed([new TextEncoder().encode("not an image")]), (e: SimsiamError) => {
    assert.deepEqual([e.status, e.code, e.type], [400, "bad_image", "invalid_request_error"]);
    assert.match(e.message, /image 0/);
    return true;
  });
  const nowhere = new Client({ url: "http://127.0.0.1:9", retries: 1, backoffMs: 10 });
  await assert.rejects(nowhere.gallery(), (e: SimsiamError) => e.code === "connection_failed");
  assert.equal(nowhere.retried, 1, "a failed connection is retried for a read");
});

test("a full queue is retried after Retry-After", async () => {
  const busy = await Server.start({
    SIMSIAM_SERVER_BATCHING__QUEUE_CAPACITY: "1",
    SIMSIAM_SERVER_BATCHING__MAX_BATCH: "1",
    SIMSIAM_SERVER_LIMITS__MAX_IMAGES: "1",
  });
  try {
    const c = new Client({ url: busy.url, retries: 30, backoffMs: 50 });
    // Bursts until one meets the full queue: each request still gets its answer.
    for (let burst = 0; burst < 20 && c.retried === 0; burst++) {
      const answers = await Promise.all(Array.from({ length: 16 }, () => c.embed([dog])));
      assert.ok(answers.every((a) => a.embeddings.length === 1));
    }
    assert.ok(c.retried > 0, "some requests met a full queue and were retried");
  } finally {
    await busy.stop();
  }
});

test("API keys are sent", async () => {
  const keyed = await Server.start({ SIMSIAM_SERVER_AUTH__READ_KEY: "r3ad" });
  try {
    await assert.rejects(new Client({ url: keyed.url }).models(), (e: SimsiamError) => e.status === 401);
    const [model] = await new Client({ url: keyed.url, apiKey: "r3ad" }).models();
    assert.ok(model.breeds.length > 0);
  } finally {
    await keyed.stop();
  }
});

test("a full disk is an InsufficientStorageError, not retried", async (t) => {
  // The real server, its gallery on a tmpfs filled to the last byte.
  if (process.getuid?.() !== 0) return t.skip("the full-disk test mounts a tmpfs, which needs root");
  const mnt = mkdtempSync(join(tmpdir(), "simsiam-full-"));
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt], { stdio: "pipe" });
  } catch (e) {
    return t.skip(`cannot mount a tmpfs here: ${e}`);
  }
  try {
    const full = await Server.start({}, join(mnt, "gallery"));
    try {
      const fd = openSync(join(mnt, "filler"), "w");
      const block = new Uint8Array(4096);
      try {
        for (;;) writeSync(fd, block);
      } catch {
        // ENOSPC: full.
      } finally {
        closeSync(fd);
      }
      const c = new Client({ url: full.url, retries: 3, backoffMs: 10 });
      await assert.rejects(c.add([dog], { ids: ["full"] }), (e: SimsiamError) => {
        assert.ok(e instanceof InsufficientStorageError);
        assert.deepEqual([e.status, e.code, e.type], [507, "insufficient_storage", "server_error"]);
        assert.match(e.message, /No space left on device/);
        return true;
      });
      assert.equal(c.retried, 0, "a full disk is not retried");
      assert.equal((await c.search({ images: [dog] }, { k: 2 })).results[0].length, 2, "searches go on");
    } finally {
      await full.stop();
    }
  } finally {
    execFileSync("umount", [mnt]);
  }
});
