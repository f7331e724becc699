/**
 * The page at `/` in headless Chromium (Debian's `chromium`, driven by playwright-core):
 * a real photo dropped on it renders the server's own ranking of breeds and neighbours,
 * timings, no console errors; bad input gets a message a person can act on.
 *
 * The browser is SIMSIAM_CHROMIUM, else /usr/bin/chromium; the screenshot goes to
 * SIMSIAM_SCREENSHOT, else target/screenshots/page.png.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { Client } from "../src/index.js";
import { ROOT, Server, dogPhoto } from "./server.js";

const CHROMIUM = process.env.SIMSIAM_CHROMIUM ?? "/usr/bin/chromium";
const SCREENSHOT = process.env.SIMSIAM_SCREENSHOT ?? join(ROOT, "target/screenshots/page.png");
// The flags toolchain.md lists for these machines: no sandbox (root), no network beyond
// the page.
const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

let server: Server;
let browser: Browser;
const dog = dogPhoto();

before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `chromium is not installed at ${CHROMIUM}: as root, \`apt-get install chromium\` ` +
        "(make setup does), or set SIMSIAM_CHROMIUM",
    );
  }
  server = await Server.start();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A page on `url` with every console error and uncaught exception recorded. */
async function open(url: string): Promise<{ page: Page; errors: string[] }> {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  const errors: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => errors.push(`exception: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => document.querySelectorAll("#routes tr").length > 1);
  await page.waitForFunction(() => document.getElementById("model")?.textContent?.startsWith("Model"));
  return { page, errors };
}

/** Drops `bytes` on the page's drop zone as a file named `name`, as a person dragging it would. */
async function dropFile(page: Page, bytes: Uint8Array, name: string, type: string) {
  const transfer = await page.evaluateHandle(
    ({ data, name, type }) => {
      const t = new DataTransfer();
      t.items.add(new File([new Uint8Array(data)], name, { type }));
      return t;
    },
    { data: Array.from(bytes), name, type },
  );
  await page.dispatchEvent("#drop", "dragover", { dataTransfer: transfer });
  await page.dispatchEvent("#drop", "drop", { dataTransfer: transfer });
}

const cells = (page: Page, table: string, column: number) =>
  page.$$eval(`${table} tr td:nth-child(${column})`, (tds) => tds.map((td) => td.textContent ?? ""));

test("a dropped photo shows the server's breeds, neighbours and timings, without console errors", async () => {
  const { page, errors } = await open(server.url);
  await dropFile(page, dog, "dog.jpg", "image/jpeg");
  await page.waitForSelector("#breeds tr");
  await page.waitForFunction(() => document.getElementById("timing")?.textContent?.includes("ms"));

  // The page shows exactly what the API answers for the same photo.
  const c = new Client({ url: server.url });
  const want = (await c.classify([dog], { topK: 5 })).results[0];
  assert.deepEqual(
    await cells(page, "#breeds", 1),
    want.map((p) => p.breed),
  );
  const shares = await cells(page, "#breeds", 2);
  assert.equal(shares[0].trim(), `${(100 * want[0].probability).toFixed(1)}%`);
  const neighbors = (await c.search({ images: [dog] }, { k: 5 })).results[0];
  assert.ok(neighbors.length > 0, "the default model's gallery is seeded");
  assert.deepEqual(
    await cells(page, "#neighbors", 1),
    neighbors.map((n) => n.id),
  );
  const timing = (await page.textContent("#timing")) ?? "";
  assert.match(timing, /Classify: [\d.]+ ms on the server \(decode [\d.]+, queue [\d.]+, model [\d.]+\)/);
  assert.equal(await page.textContent("#err"), "");

  mkdirSync(dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  assert.deepEqual(errors, [], "no console errors or exceptions");
  await page.close();
});

test("a file that is not an image gets a clear message and no exception", async () => {
  const { page, errors } = await open(server.url);
  await page.setInputFiles("#file", {
    name: "notes.txt",
    mimeType: "text/plain",
    buffer: Buffer.from("not an image"),
  });
  await page.waitForFunction(() => document.getElementById("err")?.textContent !== "");
  assert.match((await page.textContent("#err")) ?? "", /^That file is not an image the server can read: image 0/);
  assert.equal(await page.$("#breeds"), null);
  // Chromium itself logs the refused request; nothing else may go wrong.
  assert.deepEqual(
    errors.filter((e) => !e.includes("status of 400")),
    [],
  );
  await page.close();
});

test("a photo over the server's body limit is reported as too large, with the limit", async () => {
  const small = await Server.start({ SIMSIAM_SERVER_LIMITS__MAX_BODY_BYTES: "2048" });
  try {
    const { page, errors } = await open(small.url);
    await dropFile(page, dog, "dog.jpg", "image/jpeg");
    await page.waitForFunction(() => document.getElementById("err")?.textContent !== "");
    assert.match((await page.textContent("#err")) ?? "", /^The image is too large for the server \(at most/);
    assert.deepEqual(
      errors.filter((e) => !e.includes("status of 413")),
      [],
    );
    await page.close();
  } finally {
    await small.stop();
  }
});
