#!/usr/bin/env node
// The browser client as a client under test for `convene-conformance client`:
//   convene-conformance client -- node e2e/conformance-client.js {url}
// Serves browser-client/dist on a loopback port, opens Debian's Chromium
// (headless, fake camera and microphone) on a meeting link that names the
// runner's WebSocket URL (`?server=`, honoured on loopback only) and joins at
// once (`?join=1`). It runs until it is killed; Chromium goes with it.
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('@playwright/test');

const url = process.argv[2];
if (!url || !/^wss?:\/\//.test(url)) {
  console.error('usage: conformance-client.js ws://127.0.0.1:PORT/convene/ws');
  process.exit(2);
}
const dist = path.resolve(__dirname, '..', 'browser-client', 'dist');
if (!fs.existsSync(path.join(dist, 'index.html'))) {
  console.error(`${dist}/index.html is missing: build the browser client with 'cargo xtask web'`);
  process.exit(2);
}
const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm' };

async function main() {
  // Every path that is not a file is the app (as convene-server serves it).
  const server = http.createServer((req, res) => {
    const name = path.normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^\/+/, '');
    let file = path.join(dist, name);
    if (!file.startsWith(dist) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      file = path.join(dist, 'index.html');
    }
    res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'convene-conformance-chromium-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--autoplay-policy=no-user-gesture-required'],
  });
  const done = async () => {
    await context.close().catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
    process.exit(0);
  };
  process.on('SIGTERM', done);
  process.on('SIGINT', done);
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.error(`page: ${m.text()}`); });
  const link = `http://127.0.0.1:${server.address().port}/meeting/Conformance/conformance`
    + `?server=${encodeURIComponent(url)}&join=1`;
  await page.goto(link);
}

main().catch((e) => { console.error(e); process.exit(1); });
