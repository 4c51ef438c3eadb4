// A real browser for the live tests and the benchmark: Debian's Chromium (never a downloaded
// build) driven by playwright-core, loading a page served from 127.0.0.1 that imports
// livekit-client and our browser bundle (dist/browser/imaginex-room.min.js) through an import
// map, as an app would. WebRTC stays on loopback: in the tests' network namespace the only
// non-loopback interface carries 127.0.0.2, and mDNS obfuscation is off so that candidate is
// used as is.
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { chromium } from "playwright-core";

const JS = new URL("../../", import.meta.url);
const FILES = {
  "/livekit-client.mjs": new URL("node_modules/livekit-client/dist/livekit-client.esm.mjs", JS),
  "/imaginex-room.mjs": new URL("dist/browser/imaginex-room.min.js", JS),
};
export const CHROMIUM_ARGS = [
  "--headless=new",
  "--no-sandbox", // root in CI
  "--disable-gpu",
  "--disable-dev-shm-usage",
  "--disable-background-networking",
  "--disable-component-update",
  "--no-first-run",
  "--disable-features=WebRtcHideLocalIpsWithMdns",
  "--use-fake-ui-for-media-stream",
  "--use-fake-device-for-media-stream",
  "--autoplay-policy=no-user-gesture-required",
];

/**
 * Keeps every peer connection the context's pages make in `window.peerConnections`, so that a
 * test can read from their stats which addresses WebRTC chose (loopback only).
 */
export async function recordPeerConnections(context) {
  await context.addInitScript(() => {
    const Native = window.RTCPeerConnection;
    window.peerConnections = [];
    window.RTCPeerConnection = class extends Native {
      constructor(...args) {
        super(...args);
        window.peerConnections.push(this);
      }
    };
  });
}

function page(extraModules) {
  const imports = {
    "livekit-client": "/livekit-client.mjs",
    "@imaginex/context-client/room": "/imaginex-room.mjs",
  };
  return `<!doctype html><meta charset="utf-8"><title>imaginex browser test</title>
<script type="importmap">${JSON.stringify({ imports })}</script>
<script type="module">
  import * as LK from "livekit-client";
  import * as IMX from "@imaginex/context-client/room";
  window.LK = LK;
  window.IMX = IMX;
  window.pageReady = true;
</script>${extraModules}`;
}

/**
 * Serves the page and opens it in Chromium. `modules`: extra ES modules the page may import,
 * by path (`/docs-example.mjs` -> its source text). Returns the page and a `close()`.
 */
export async function openBrowserPage({ executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium", modules = {} } = {}) {
  const server = createServer(async (request, response) => {
    const path = new URL(request.url, "http://127.0.0.1").pathname;
    try {
      if (path === "/") {
        response.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(page(""));
      } else if (path in modules) {
        response.writeHead(200, { "content-type": "text/javascript" }).end(modules[path]);
      } else if (path in FILES) {
        response.writeHead(200, { "content-type": "text/javascript" }).end(await readFile(FILES[path]));
      } else {
        response.writeHead(404).end();
      }
    } catch (error) {
      response.writeHead(500).end(String(error));
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${server.address().port}`;
  const browser = await chromium.launch({ executablePath, args: CHROMIUM_ARGS, headless: true });
  const context = await browser.newContext();
  await recordPeerConnections(context);
  const tab = await context.newPage();
  const consoleLines = [];
  tab.on("console", (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
  tab.on("pageerror", (error) => consoleLines.push(`pageerror: ${error.message}`));
  await tab.goto(origin + "/");
  await tab.waitForFunction(() => window.pageReady === true);
  return {
    page: tab,
    origin,
    consoleLines,
    async close() {
      await browser.close().catch(() => {});
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
