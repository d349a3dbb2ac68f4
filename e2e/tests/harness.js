// Starts the real pieces a browser test needs: convene-server on a free
// loopback port (with a --dev-tls certificate), a static file server for the
// test pages, Debian's Chromium, and the `convene` CLI.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('@playwright/test');

const ROOT = path.resolve(__dirname, '..', '..');
// Where cargo put the binaries: xtask passes it; otherwise the default target dir.
const BIN_DIR = process.env.CONVENE_BIN_DIR
  || path.join(process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target'), 'debug');
const DEADLINE_MS = 30_000;

function bin(name) {
  const p = path.join(BIN_DIR, name);
  if (!fs.existsSync(p)) {
    throw new Error(`${p} is missing: build it with 'cargo build -p convene-server -p convene-cli -p convene-testkit -p convene-conformance --features convene-server/test-hooks' (or run 'cargo xtask test')`);
  }
  return p;
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// GET over https from the harness only (the browser checks the certificate by its hash).
function getJson(url) {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { rejectUnauthorized: false }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`${url}: HTTP ${res.statusCode}`));
        try { resolve(JSON.parse(body)); } catch (e) { reject(e); }
      });
    });
    req.on('error', reject);
  });
}

async function until(what, fn) {
  const end = Date.now() + DEADLINE_MS;
  let last;
  while (Date.now() < end) {
    try { return await fn(); } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} within ${DEADLINE_MS} ms: ${last}`);
}

async function startServer(extraArgs = []) {
  const port = await freePort();
  const logs = [];
  const child = spawn(bin('convene-server'), ['--dev-tls', '--listen', `127.0.0.1:${port}`, '--log', 'info', ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.on('data', (d) => logs.push(String(d)));
  child.stderr.on('data', (d) => logs.push(String(d)));
  const base = `https://127.0.0.1:${port}`;
  let discovery;
  try {
    discovery = await until('convene-server answers discovery', () => getJson(`${base}/.well-known/convene.json`));
  } catch (e) {
    child.kill('SIGKILL');
    throw new Error(`${e}\nserver log:\n${logs.join('')}`);
  }
  return {
    base, port, discovery, logs,
    sha256: discovery.certificate_hashes[0].value,
    async stop() {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await new Promise((r) => { child.once('exit', r); setTimeout(r, 10_000); });
    },
  };
}

// convene-server at 127.0.0.1 serving the built browser client from
// browser-client/dist: plain http (a secure context for the browser, no
// WebTransport), or https with '--dev-tls' among the arguments (WebTransport
// on, the page trusting the development certificate by its hash; the browser
// must then ignore certificate errors for the page itself).
async function startWebServer(extraArgs = [], fixedPort = null) {
  const port = fixedPort || await freePort();
  const logs = [];
  const webDir = path.join(ROOT, 'browser-client', 'dist');
  if (!fs.existsSync(path.join(webDir, 'index.html'))) {
    throw new Error(`${webDir}/index.html is missing: build the browser client with 'cargo xtask web'`);
  }
  const child = spawn(bin('convene-server'), ['--listen', `127.0.0.1:${port}`, '--web-dir', webDir, '--log', 'info', ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.on('data', (d) => logs.push(String(d)));
  child.stderr.on('data', (d) => logs.push(String(d)));
  const tls = extraArgs.includes('--dev-tls');
  const base = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  try {
    await until('convene-server answers /readyz', () => new Promise((resolve, reject) => {
      (tls ? https : http).get(`${base}/readyz`, { rejectUnauthorized: false }, (res) => { res.resume(); res.statusCode === 200 ? resolve() : reject(new Error(`HTTP ${res.statusCode}`)); })
        .on('error', reject);
    }));
  } catch (e) {
    child.kill('SIGKILL');
    throw new Error(`${e}\nserver log:\n${logs.join('')}`);
  }
  // With TLS, the development certificate's hash, for the CLI's --cert-sha256.
  const sha256 = tls ? (await getJson(`${base}/.well-known/convene.json`)).certificate_hashes[0].value : null;
  return {
    base, port, logs, sha256,
    async stop() {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await new Promise((r) => { child.once('exit', r); setTimeout(r, 10_000); });
    },
    // A new server process on the same port (after stop()).
    restart() { return startWebServer(extraArgs, port); },
  };
}

// Serves e2e/pages on plain http at 127.0.0.1, which browsers treat as a secure context.
async function startPages() {
  const dir = path.join(__dirname, '..', 'pages');
  const types = { '.html': 'text/html', '.js': 'text/javascript' };
  const server = http.createServer((req, res) => {
    const name = path.normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^\/+/, '');
    const file = path.join(dir, name);
    if (!file.startsWith(dir) || !fs.existsSync(file)) { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { base: `http://127.0.0.1:${server.address().port}`, stop: () => new Promise((r) => server.close(r)) };
}

// Debian's Chromium with fake camera and microphone; `extraArgs` are added
// to its command line, and `ignoreHTTPSErrors` lets pages come from a
// --dev-tls server.
async function launchChromium({ extraArgs = [], ignoreHTTPSErrors = false } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'convene-chromium-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    ignoreHTTPSErrors,
    // Never --disable-quic by default: WebTransport runs over QUIC.
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', ...extraArgs],
  });
  const console = [];
  context.on('console', (m) => console.push(`${m.type()}: ${m.text()}`));
  return {
    context, console,
    async close() { await context.close(); fs.rmSync(dir, { recursive: true, force: true }); },
  };
}

// Debian's Firefox ESR, driven by puppeteer-core over WebDriver BiDi (Playwright
// cannot drive a stock Firefox), with fake camera and microphone and no
// permission prompts; `acceptInsecureCerts` lets pages come from a --dev-tls
// server. Returns {browser, newPage(), console, close()}.
async function launchFirefox({ acceptInsecureCerts = false, viewport = undefined } = {}) {
  const puppeteer = require('puppeteer-core');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'convene-firefox-'));
  // Firefox's Web Audio needs a sound server to run at all (without one,
  // resuming an AudioContext ends the page): a PulseAudio of its own with a
  // null sink, reached through a socket in the temporary directory.
  const socket = path.join(dir, 'pulse.sock');
  const pulse = spawn('pulseaudio', ['-n', '--daemonize=no', '--exit-idle-time=-1', '--use-pid-file=no',
    '--disable-shm=yes', '-L', 'module-null-sink',
    '-L', `module-native-protocol-unix socket=${socket} auth-anonymous=1`],
  { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, HOME: dir, XDG_RUNTIME_DIR: dir } });
  let pulseLog = '';
  pulse.stderr.on('data', (d) => { pulseLog += d; });
  try {
    await until('PulseAudio listens', async () => { if (!fs.existsSync(socket)) throw new Error(`no ${socket}: ${pulseLog}`); });
  } catch (e) {
    pulse.kill('SIGKILL');
    throw e;
  }
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: '/usr/bin/firefox-esr',
    headless: true,
    userDataDir: path.join(dir, 'profile'),
    // The pages' size, set as each page opens (this Firefox's WebDriver
    // BiDi cannot resize a page that runs: puppeteer's setViewport fails).
    ...(viewport ? { defaultViewport: viewport } : {}),
    env: { ...process.env, PULSE_SERVER: `unix:${socket}` },
    acceptInsecureCerts,
    extraPrefsFirefox: {
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
      'media.autoplay.default': 0,
      'media.autoplay.block-webaudio': false,
    },
  });
  const console = [];
  return {
    browser, console,
    // Polls `fn` in a page of this Firefox until `ok(value)`; fails with
    // `what`, the last value and the end of the console.
    async until(page, what, fn, ok, arg) {
      const deadline = Date.now() + 30_000;
      let value;
      while (Date.now() < deadline) {
        value = await page.evaluate(fn, arg);
        if (ok(value)) return value;
        await new Promise((r) => setTimeout(r, 250));
      }
      throw new Error(`Firefox: ${what} (last: ${JSON.stringify(value)}; console: ${console.slice(-15).join(' | ')})`);
    },
    async newPage() {
      const page = await browser.newPage();
      page.on('console', (m) => console.push(`${m.type()}: ${m.text()}`));
      return page;
    },
    async close() {
      await browser.close();
      pulse.kill('SIGTERM');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

// Where Debian's WebKitGTK (webkit2gtk-driver, libwebkit2gtk-4.1-0) puts
// its driver and its MiniBrowser.
const WEBKIT_DRIVER = '/usr/bin/WebKitWebDriver';
const MINIBROWSER = '/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser';

// An Xvfb of our own on a display it picks itself (-displayfd), so it never
// meets another X server; resolves to {display, stop()}.
async function startXvfb() {
  const child = spawn('Xvfb', ['-displayfd', '3', '-screen', '0', '1280x1024x24', '-nolisten', 'tcp'],
    { stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stderr.on('data', (d) => { log += d; });
  const display = await new Promise((resolve, reject) => {
    let out = '';
    child.stdio[3].on('data', (d) => {
      out += d;
      if (out.includes('\n')) resolve(`:${out.trim()}`);
    });
    child.once('exit', (code) => reject(new Error(`Xvfb exited (${code}): ${log}`)));
    setTimeout(() => reject(new Error(`Xvfb chose no display within ${DEADLINE_MS} ms: ${log}`)), DEADLINE_MS);
  });
  return {
    display,
    stop() { child.kill('SIGTERM'); },
  };
}

// Debian's WebKitGTK MiniBrowser driven through WebKitWebDriver (the W3C
// WebDriver protocol, with the pinned selenium-webdriver client) on its own
// Xvfb, with WebKit's mock camera and microphone and autoplay allowed.
// `extraArgs` are added to MiniBrowser's command line; `acceptInsecureCerts`
// lets pages come from a --dev-tls server.
// Returns {driver, display, log(), close()}; `driver` is a selenium WebDriver.
async function launchWebKit({ extraArgs = [], acceptInsecureCerts = false } = {}) {
  for (const p of [WEBKIT_DRIVER, MINIBROWSER]) {
    if (!fs.existsSync(p)) throw new Error(`${p} is missing: install Debian's webkit2gtk-driver and xvfb (or run 'cargo xtask test')`);
  }
  const { Builder } = require('selenium-webdriver');
  const xvfb = await startXvfb();
  const port = await freePort();
  const logs = [];
  // The driver starts MiniBrowser with its own environment. GStreamer's GL
  // elements cannot scale GL memory, which makes every VideoEncoder fail
  // ("Encoding failed") when gstreamer1.0-gl is installed: no GL sink.
  const driver = spawn(WEBKIT_DRIVER, [`--port=${port}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, DISPLAY: xvfb.display, WEBKIT_GST_DISABLE_GL_SINK: '1' },
  });
  driver.stdout.on('data', (d) => logs.push(String(d)));
  driver.stderr.on('data', (d) => logs.push(String(d)));
  const stopAll = () => { driver.kill('SIGTERM'); xvfb.stop(); };
  try {
    await until('WebKitWebDriver answers', () => new Promise((resolve, reject) => {
      http.get(`http://127.0.0.1:${port}/status`, (res) => { res.resume(); res.statusCode === 200 ? resolve() : reject(new Error(`HTTP ${res.statusCode}`)); })
        .on('error', reject);
    }));
  } catch (e) {
    stopAll();
    throw new Error(`${e}
WebKitWebDriver log:
${logs.join('')}`);
  }
  let session;
  try {
    session = await new Builder()
      .usingServer(`http://127.0.0.1:${port}`)
      .withCapabilities({
        browserName: 'MiniBrowser',
        acceptInsecureCerts,
        'webkitgtk:browserOptions': {
          binary: MINIBROWSER,
          args: ['--automation', '--enable-mock-capture-devices=true', '--autoplay-policy=allow',
            '--enable-media-stream=true', '--enable-write-console-messages-to-stdout=true', ...extraArgs],
        },
      })
      .build();
  } catch (e) {
    stopAll();
    throw new Error(`cannot start MiniBrowser: ${e}
WebKitWebDriver log:
${logs.join('')}`);
  }
  return {
    driver: session,
    display: xvfb.display,
    log: () => logs.join(''),
    async close() {
      try { await session.quit(); } catch { /* the browser may be gone already */ }
      stopAll();
    },
  };
}

// Runs in a page (pass it to evaluate): a sample of the first tile's canvas,
// its size, a checksum that changes when the picture does, and how many
// sampled pixels are not black.
function canvasSample() {
  const c = document.querySelector('#tiles canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let sum = 0, lit = 0;
  for (let i = 0; i < d.length; i += 4 * 61) {
    sum += d[i] + 3 * d[i + 1] + 7 * d[i + 2];
    if (d[i] + d[i + 1] + d[i + 2] > 30) lit += 1;
  }
  return { sum, lit, width: c.width, height: c.height };
}

// Runs `convene ARGS`, resolving to {code, stdout, stderr}.
function convene(args) {
  return runBin('convene', args);
}

// Runs one of the built binaries (`convene-reference-client`, ...) to its
// end; resolves with its exit code and output.
function runBin(name, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin(name), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

// Starts `convene ARGS` in the background; returns the child (kill it when done).
function spawnConvene(args) {
  const child = spawn(bin('convene'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  child.output = '';
  child.stdout.on('data', (d) => { child.output += d; });
  child.stderr.on('data', (d) => { child.output += d; });
  return child;
}

// convene-relay (the seeded impairing UDP relay) in front of the UDP port
// `to`; `args` are its options (--delay-ms, --up-loss, --down-loss, --seed).
async function startRelay(to, args = []) {
  const child = spawn(bin('convene-relay'), ['--to', to, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const logs = [];
  child.stderr.on('data', (d) => logs.push(String(d)));
  const addr = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += String(d);
      const m = out.match(/^relay (\S+) -> /m);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`convene-relay exited (${code}): ${logs.join('')}`)));
  });
  return {
    addr,
    stop() { child.kill('SIGKILL'); },
  };
}

// A number the browser client shows on #app (data-…), NaN while it has not
// set it, so that no comparison passes on a missing attribute.
function appNumber(page, name) {
  return page.locator('#app').getAttribute(name).then((v) => (v === null ? NaN : Number(v)));
}

module.exports = { freePort, startServer, startWebServer, startRelay, appNumber, startPages, launchChromium, launchFirefox, launchWebKit, convene, runBin, spawnConvene, canvasSample };
