// The browser client over WebTransport: served by a --dev-tls server, it
// finds the WebTransport URL and certificate hash in discovery, opens the
// session, and two people see and hear each other through it; one forced to
// WebSocket shares the meeting with one on WebTransport; and when the
// WebTransport session cannot be set up the client falls back to WebSocket
// by itself and says why.
const dgram = require('node:dgram');
const { test, expect } = require('@playwright/test');
const { startWebServer, launchChromium, spawnConvene } = require('./harness');

let server, browser;

test.beforeAll(async () => {
  server = await startWebServer(['--dev-tls']);
  browser = await launchChromium({ ignoreHTTPSErrors: true });
});

test.afterAll(async () => {
  await browser?.close();
  await server?.stop();
});

const frames = (tile) => tile.getAttribute('data-frames').then(Number);
const audioFrames = (page) => page.locator('#app').getAttribute('data-audio-frames').then(Number);

test('two browsers meet over WebTransport: video, audio and chat', async () => {
  const ann = await browser.context.newPage();
  const bob = await browser.context.newPage();
  await ann.goto(`${server.base}/meeting/Ann/wt-room`);
  await bob.goto(`${server.base}/meeting/Bob/wt-room`);
  await ann.click('#connect');
  await expect(ann.locator('#participants li')).toHaveCount(1);
  await bob.click('#connect');
  for (const [page, other] of [[ann, 'Bob'], [bob, 'Ann']]) {
    await expect(page.locator('#app')).toHaveAttribute('data-transport', 'WebTransport');
    await expect(page.locator('#transport')).toHaveText('Connected over WebTransport');
    await expect(page.locator('#participants')).toContainText(other);
    const tile = page.locator('#tiles .tile');
    await expect(tile.locator('figcaption')).toHaveText(other);
    // Pictures arrive on streams of their own, audio as datagrams.
    await expect.poll(() => frames(tile), { message: `${other}'s pictures` }).toBeGreaterThan(10);
    await expect.poll(() => audioFrames(page), { message: `${other}'s sound` }).toBeGreaterThan(25);
    // Received at more than 10 pictures a second (the fake camera sends 30).
    await expect.poll(() => tile.getAttribute('data-fps').then(Number), { message: `${other}'s frame rate` }).toBeGreaterThan(10);
  }
  await ann.click('#toggle-chat');
  await ann.fill('#chat-input', 'over QUIC');
  await ann.press('#chat-input', 'Enter');
  await expect(bob.locator('#messages')).toContainText('Ann: over QUIC');
  await bob.click('#leave');
  await expect(ann.locator('#participants li')).toHaveCount(1);
  await expect(ann.locator('#tiles .tile')).toHaveCount(0);
  await ann.close();
  await bob.close();
});

test('three in a meeting over WebTransport: a screenshot, and the latency measured', async ({}, testInfo) => {
  // Two browsers and the CLI's moving test pattern with its tone.
  const stream = spawnConvene(['stream', '--server', server.base, '--cert-sha256', server.sha256,
    '--meeting-id', 'three-room', '--user-id', 'cli-pattern', '--source', 'test-pattern',
    '--resolution', '320x240', '--fps', '15', '--audio', 'tone', '--duration', '90']);
  const ann = await browser.context.newPage();
  const bob = await browser.context.newPage();
  try {
    await ann.setViewportSize({ width: 1280, height: 800 });
    await ann.goto(`${server.base}/meeting/Ann/three-room`);
    await bob.goto(`${server.base}/meeting/Bob/three-room`);
    await ann.click('#connect');
    await bob.click('#connect');
    for (const page of [ann, bob]) {
      await expect(page.locator('#participants li')).toHaveCount(3);
      await expect(page.locator('#tiles .tile')).toHaveCount(2);
      for (const tile of await page.locator('#tiles .tile').all()) {
        await expect.poll(() => frames(tile), { message: `pictures (stream: ${stream.output})` }).toBeGreaterThan(30);
      }
    }
    // Glass to glass between the two browsers: camera capture to canvas.
    const bobOnAnn = ann.locator('#tiles .tile', { hasText: 'Bob' });
    await expect(bobOnAnn).toHaveAttribute('data-latency-p95', /\d/);
    const p50 = Number(await bobOnAnn.getAttribute('data-latency-p50'));
    const p95 = Number(await bobOnAnn.getAttribute('data-latency-p95'));
    const first = Number(await ann.locator('#app').getAttribute('data-first-frame-ms'));
    console.log(`browser to browser over WebTransport: capture to screen p50 ${p50} ms, p95 ${p95} ms; Connect to first remote picture ${first} ms`);
    expect(p50).toBeGreaterThan(0);
    expect(first).toBeGreaterThan(0);
    const shot = testInfo.outputPath('three-participants.png');
    await ann.screenshot({ path: shot, fullPage: true });
    console.log(`screenshot of a three-participant meeting: ${shot}`);
  } finally {
    stream.kill('SIGINT');
    await ann.close();
    await bob.close();
  }
});

test('WebSocket and WebTransport participants share a meeting', async () => {
  const wt = await browser.context.newPage();
  const ws = await browser.context.newPage();
  await wt.goto(`${server.base}/meeting/Quic/mixed-room`);
  await ws.goto(`${server.base}/meeting/Tcp/mixed-room?transport=websocket`);
  await wt.click('#connect');
  await ws.click('#connect');
  await expect(wt.locator('#app')).toHaveAttribute('data-transport', 'WebTransport');
  await expect(ws.locator('#app')).toHaveAttribute('data-transport', 'WebSocket');
  for (const page of [wt, ws]) {
    await expect.poll(() => frames(page.locator('#tiles .tile'))).toBeGreaterThan(10);
    await expect.poll(() => audioFrames(page)).toBeGreaterThan(25);
  }
  await wt.close();
  await ws.close();
});

test('when WebTransport cannot connect the client falls back to WebSocket and says so', async () => {
  // UDP that goes nowhere: discovery is rewritten to point WebTransport at a
  // bound UDP port that never answers, as behind a firewall that drops UDP.
  const hole = dgram.createSocket('udp4');
  await new Promise((r) => hole.bind(0, '127.0.0.1', r));
  const page = await browser.context.newPage();
  try {
    await page.route('**/.well-known/convene.json', async (route) => {
      const response = await route.fetch();
      const d = await response.json();
      d.webtransport = d.webtransport.replace(/:\d+\//, `:${hole.address().port}/`);
      await route.fulfill({ response, json: d });
    });
    await page.goto(`${server.base}/meeting/Walled/fallback-room`);
    await page.click('#connect');
    await expect(page.locator('#app')).toHaveAttribute('data-transport', 'WebSocket', { timeout: 20_000 });
    await expect(page.locator('#transport')).toContainText('Connected over WebSocket (WebTransport failed');
    await expect(page.locator('#participants li')).toHaveCount(1);
  } finally {
    await page.close();
    hole.close();
  }
});

test('a WebTransport session the browser refuses is reported at once, with its reason', async () => {
  // A certificate hash that is not the server's: the browser refuses the
  // session as soon as the handshake shows the certificate.
  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  try {
    await page.route('**/.well-known/convene.json', async (route) => {
      const response = await route.fetch();
      const d = await response.json();
      d.certificate_hashes = [{ algorithm: 'sha-256', value: '00'.repeat(32) }];
      await route.fulfill({ response, json: d });
    });
    await page.goto(`${server.base}/meeting/Refused/refused-room`);
    await page.click('#connect');
    await expect(page.locator('#app')).toHaveAttribute('data-transport', 'WebSocket', { timeout: 20_000 });
    const text = await page.locator('#transport').textContent();
    // How long it took is said, and it is not the deadline's story.
    const m = text.match(/^Connected over WebSocket \(WebTransport failed after (\d+\.\d) s: (.+)\)$/);
    expect(m, text).toBeTruthy();
    expect(Number(m[1]), text).toBeLessThan(4);
    expect(m[2]).not.toContain('no session within');
    await expect(page.locator('#participants li')).toHaveCount(1);
    expect(errors, 'no unhandled errors or rejections').toEqual([]);
  } finally {
    await page.close();
  }
});

test('a browser without the WebTransport API goes straight to WebSocket and says so', async () => {
  // As in WebKit, where WebTransport is off by default.
  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  try {
    await page.addInitScript(() => { delete window.WebTransport; });
    await page.goto(`${server.base}/meeting/Plain/no-wt-room`);
    expect(await page.evaluate(() => typeof WebTransport)).toBe('undefined');
    await page.click('#connect');
    await expect(page.locator('#app')).toHaveAttribute('data-transport', 'WebSocket');
    await expect(page.locator('#transport')).toHaveText('Connected over WebSocket (this browser has no WebTransport)');
    await expect(page.locator('#participants li')).toHaveCount(1);
    expect(errors, 'no unhandled errors or rejections').toEqual([]);
  } finally {
    await page.close();
  }
});
