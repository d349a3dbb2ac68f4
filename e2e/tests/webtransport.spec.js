// A real Chromium speaks Convene over WebTransport: it opens a session with
// the server's published certificate hash, completes the handshake, joins a
// meeting, and receives the media a Rust client (`convene load`) publishes.
const { test, expect } = require('@playwright/test');
const { startServer, startPages, launchChromium, convene } = require('./harness');

let server, pages, browser;

test.beforeAll(async () => {
  server = await startServer();
  pages = await startPages();
  browser = await launchChromium();
});

test.afterAll(async () => {
  await browser?.close();
  await pages?.stop();
  await server?.stop();
});

test('Chromium joins over WebTransport and receives frames from a Rust client', async () => {
  const { discovery, sha256 } = server;
  expect(discovery.webtransport).toBe(`https://127.0.0.1:${server.port}/convene/wt`);
  expect(sha256).toMatch(/^[0-9a-f]{64}$/);

  const page = await browser.context.newPage();
  await page.goto(`${pages.base}/webtransport.html`);
  expect(await page.evaluate(() => typeof WebTransport)).toBe('function');
  await page.evaluate((args) => { window.runConvene(args); },
    { url: discovery.webtransport, sha256, meeting: 'browser-wt', name: 'chromium' });
  await page.waitForFunction(() => ['joined', 'failed', 'closed'].includes(window.convene.phase));
  const joined = await page.evaluate(() => window.convene);
  expect(joined.errors, `page errors; console:\n${browser.console.join('\n')}`).toEqual([]);
  expect(joined.phase).toBe('joined');
  expect(joined.participantId).toBeGreaterThan(0);

  // The Rust client publishes 50 fps audio (100 B) and 30 fps video (2000 B) over WebTransport.
  const load = convene(['load', '--server', server.base, '--cert-sha256', sha256, '--transport', 'wt',
    '--meeting', 'browser-wt', '-n', '1', '--ramp-up', '0', '--duration', '3', '--json']);
  await page.waitForFunction(() => {
    const f = window.convene.frames;
    return f.filter((x) => x.track === 1).length >= 20 && f.filter((x) => x.track === 2).length >= 20;
  });
  const result = await load;
  expect(result.code, result.stderr).toBe(0);
  const report = JSON.parse(result.stdout);
  expect(report.transports).toEqual([['WebTransport', 1]]);

  const seen = await page.evaluate(() => window.convene);
  expect(seen.errors).toEqual([]);
  // The publisher announced both tracks, and every frame is stamped with its id.
  const publisher = seen.tracks.find((t) => t.track === 2)?.participant;
  expect(publisher).toBeGreaterThan(0);
  expect(publisher).not.toBe(seen.participantId);
  expect(seen.tracks.map((t) => [t.track, t.codec]).sort()).toEqual([[1, 'opus'], [2, 'avc1.42E01F']]);
  expect(new Set(seen.frames.map((f) => f.sender))).toEqual(new Set([publisher]));
  const audio = seen.frames.filter((f) => f.track === 1);
  const video = seen.frames.filter((f) => f.track === 2);
  expect(audio.every((f) => f.payloadBytes === 100)).toBe(true);
  expect(video.every((f) => f.payloadBytes === 2000)).toBe(true);
  // Audio comes as datagrams, video on a stream per frame (PROTOCOL.md §3.3).
  expect(audio.some((f) => f.via === 'datagram')).toBe(true);
  expect(video.every((f) => f.via === 'stream')).toBe(true);
  expect(video.some((f) => f.key)).toBe(true);
  // Video arrives whole and in full: QUIC streams are reliable.
  const seqs = video.map((f) => f.sequence).sort((a, b) => a - b);
  expect(seqs.length).toBe(seqs.at(-1) - seqs[0] + 1);
  console.log(`chromium received ${audio.length} audio and ${video.length} video frames; ` +
    `median latency ${video.map((f) => f.latencyMs).sort((a, b) => a - b)[video.length >> 1]} ms`);
});

test('a certificate hash that does not match is refused by Chromium', async () => {
  const page = await browser.context.newPage();
  await page.goto(`${pages.base}/webtransport.html`);
  const wrong = server.sha256.replace(/^./, (c) => (c === '0' ? '1' : '0'));
  await page.evaluate((args) => { window.runConvene(args); },
    { url: server.discovery.webtransport, sha256: wrong, meeting: 'browser-wt', name: 'wrong-hash' });
  await page.waitForFunction(() => ['joined', 'failed', 'closed'].includes(window.convene.phase));
  const state = await page.evaluate(() => window.convene);
  expect(state.phase).toBe('failed');
  expect(state.participantId).toBe(0);
});
