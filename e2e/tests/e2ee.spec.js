// End-to-end encryption in the browser client: the wasm build passes the
// RFC 9605 vectors; two Chromium pages and `convene stream --e2ee` meet in one
// encrypted meeting, see and hear each other and show the same safety code;
// `convene receive` without the keys decodes nothing, with them it decodes
// the browser's video; altered frames are refused and counted.
const fs = require('fs');
const path = require('path');
const { test, expect } = require('@playwright/test');
const { startWebServer, launchChromium, spawnConvene, convene, appNumber: num } = require('./harness');

const VECTORS = path.join(__dirname, '..', '..', 'spec', 'v1', 'vectors', 'sframe');

let server, browser;

test.beforeAll(async () => {
  server = await startWebServer();
  browser = await launchChromium();
});

test.afterAll(async () => {
  await browser?.close();
  await server?.stop();
});

test('the wasm build passes every RFC 9605 SFrame vector', async () => {
  const page = await browser.context.newPage();
  await page.goto(`${server.base}/`);
  // The join screen is built once the module has instantiated its wasm:
  // only then may its exports be called.
  await expect(page.locator('#connect')).toBeVisible();
  const sframe = fs.readFileSync(path.join(VECTORS, 'sframe.json'), 'utf8');
  const aead = fs.readFileSync(path.join(VECTORS, 'aes_ctr_hmac.json'), 'utf8');
  const passed = await page.evaluate(async ([s, a]) => {
    const m = await import('/convene_web.js');
    return m.sframeVectors(s, a);
  }, [sframe, aead]);
  expect(passed).toBe(5 + 3);
  // And a vector altered by one digit is caught.
  const bad = sframe.replace(/"ct": "(.)/, (_, c) => `"ct": "${c === '0' ? '1' : '0'}`);
  const err = await page.evaluate(async ([s, a]) => {
    const m = await import('/convene_web.js');
    try { m.sframeVectors(s, a); return 'passed'; } catch (e) { return String(e); }
  }, [bad, aead]);
  expect(err).toContain('differs');
  // Throughput of this build (reported, not asserted).
  for (const size of [100, 2000, 20000]) {
    const r = await page.evaluate(async (n) => {
      const m = await import('/convene_web.js');
      return m.sframeBench(n, Math.max(50, Math.floor(4e6 / n)));
    }, size);
    expect(r.decrypt_us).toBeGreaterThan(0);
    console.log(`SFrame in wasm (Chromium), ${size}-byte frames: encrypt ${r.encrypt_mb_s.toFixed(0)} MB/s (${r.encrypt_us.toFixed(1)} µs), decrypt ${r.decrypt_mb_s.toFixed(0)} MB/s (${r.decrypt_us.toFixed(1)} µs)`);
  }
  await page.close();
});

/// Two pages in an encrypted meeting (one turns it on with the checkbox, one
/// from the link), waiting until each shows the lock and has the other's key.
async function encryptedPair(base, meeting) {
  const ann = await browser.context.newPage();
  const bob = await browser.context.newPage();
  await ann.goto(`${base}/meeting/Ann/${meeting}`);
  await expect(ann.locator('#e2ee')).not.toBeChecked();
  await ann.check('#e2ee');
  await bob.goto(`${base}/meeting/Bob/${meeting}#e2ee=1`);
  await expect(bob.locator('#e2ee')).toBeChecked();
  await ann.click('#connect');
  await expect(ann.locator('#participants li')).toHaveCount(1);
  await bob.click('#connect');
  for (const page of [ann, bob]) {
    await expect(page.locator('#e2ee-state')).toContainText('End-to-end encrypted');
    await expect(page.locator('#app')).toHaveAttribute('data-e2ee', 'on');
  }
  return [ann, bob];
}

const code = (page) => page.locator('#app').getAttribute('data-safety-code');

test('two browsers and convene stream meet end-to-end encrypted', async () => {
  const meeting = 'e2ee-room';
  const [ann, bob] = await encryptedPair(server.base, meeting);
  const stream = spawnConvene(['stream', '--server', server.base, '--meeting-id', meeting,
    '--user-id', 'streamer', '--source', 'test-pattern', '--resolution', '320x240', '--fps', '15',
    '--audio', 'tone', '--e2ee', '--duration', '120']);
  try {
    for (const page of [ann, bob]) {
      await expect(page.locator('#app')).toHaveAttribute('data-e2ee-members', '2');
      // The other browser's camera and the streamer's pattern, decrypted and drawn.
      const tiles = page.locator('#tiles .tile');
      await expect(tiles).toHaveCount(2);
      for (let i = 0; i < 2; i++) {
        await expect.poll(() => tiles.nth(i).getAttribute('data-frames').then(Number),
          { message: `frames drawn (stream: ${stream.output})` }).toBeGreaterThan(10);
      }
      await expect.poll(() => num(page, 'data-audio-frames'), { message: 'audio decoded' }).toBeGreaterThan(25);
      expect(await num(page, 'data-e2ee-rejected')).toBe(0);
      expect(await num(page, 'data-e2ee-decrypted')).toBeGreaterThan(0);
    }
    // Everyone shows the same safety code, the streamer included.
    const shared = await code(ann);
    expect(shared).toMatch(/^\d{5} \d{5} \d{5} \d{5}$/);
    expect(await code(bob)).toBe(shared);
    await expect.poll(() => stream.output, { message: 'the streamer shows the code' }).toContain(shared);
    await expect(ann.locator('#e2ee-state')).toContainText(shared);

    // Without the keys, nothing decodes: frames arrive and stay ciphertext.
    // The pages name whoever is in the meeting without encryption.
    const outsiderRun = convene(['receive', '--server', server.base, '--meeting-id', meeting,
      '--user-id', 'plain-viewer', '--duration', '4', '--json']);
    await expect(ann.locator('#e2ee-state')).toContainText('not encrypted with you (they cannot see or hear you): plain-viewer');
    const outsider = await outsiderRun;
    await expect(ann.locator('#e2ee-state')).not.toContainText('plain-viewer');
    expect(outsider.code, outsider.stderr).toBe(0);
    const seen = JSON.parse(outsider.stdout).tracks.filter((t) => t.kind === 'video');
    expect(seen.length).toBe(3);
    for (const t of seen) {
      expect(t.frames_received, outsider.stdout).toBeGreaterThan(0);
      expect(t.frames_decoded, outsider.stdout).toBe(0);
    }

    // With --e2ee, convene receive is a member: it decodes the browser's H.264,
    // and the pages' code changes to include it, the same everywhere.
    const member = convene(['receive', '--server', server.base, '--meeting-id', meeting,
      '--user-id', 'member', '--e2ee', '--duration', '8', '--json']);
    await expect(ann.locator('#app')).toHaveAttribute('data-e2ee-members', '3');
    const withMember = await code(ann);
    expect(withMember).not.toBe(shared);
    const r = await member;
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.e2ee.safety_code).toBe(withMember);
    const annVideo = report.tracks.find((t) => t.kind === 'video' && t.display_name === 'Ann');
    expect(annVideo, r.stdout).toBeTruthy();
    expect(annVideo.frames_decoded, r.stdout).toBeGreaterThan(10);
    expect(annVideo.decode_errors).toBe(0);
    expect(report.e2ee.rejected).toBe(0);
    // When it has left, a new key and the old code again.
    await expect(ann.locator('#app')).toHaveAttribute('data-e2ee-members', '2');
    await expect.poll(() => code(bob)).toBe(shared);
  } finally {
    stream.kill('SIGINT');
    await ann.close();
    await bob.close();
  }
});

test('altered frames are refused and counted, and the picture goes on', async () => {
  const own = await startWebServer(['--test-fault', 'tamper-media']);
  try {
    const [ann, bob] = await encryptedPair(own.base, 'e2ee-tamper');
    for (const page of [ann, bob]) {
      await expect.poll(() => num(page, 'data-e2ee-rejected'), { message: 'refused frames' }).toBeGreaterThan(3);
      const tile = page.locator('#tiles .tile');
      await expect.poll(() => tile.getAttribute('data-frames').then(Number)).toBeGreaterThan(20);
      expect(await num(page, 'data-e2ee-decrypted')).toBeGreaterThan(20);
    }
    await ann.close();
    await bob.close();
  } finally {
    await own.stop();
  }
});
