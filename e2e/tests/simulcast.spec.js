// Selective forwarding from the browser (PROTOCOL.md §6.6): the page sends
// its camera in three sizes, each viewer receives the one its tile needs
// (the tile's size, told to the server with UpdateSubscription), the native
// client asks for a size of its own or gets the largest, and the publisher
// stops encoding sizes nobody receives (EncodingDemand). The publisher
// sends over WebTransport (its pictures on streams, its sound with levels in
// datagrams), the viewer receives over WebSocket.
const { test, expect } = require('@playwright/test');
const { startWebServer, launchChromium, convene, spawnConvene, canvasSample } = require('./harness');

let server, browser;

test.beforeAll(async () => {
  server = await startWebServer(['--dev-tls']);
  browser = await launchChromium({ ignoreHTTPSErrors: true });
});

test.afterAll(async () => {
  await browser?.close();
  await server?.stop();
});

// Forces the width of the page's tiles (CSS pixels; 4:3, so the height follows).
async function tileWidth(page, px) {
  await page.evaluate((w) => {
    let s = document.getElementById('test-tile-width');
    if (!s) {
      s = document.createElement('style');
      s.id = 'test-tile-width';
      document.head.appendChild(s);
    }
    s.textContent = `#tiles { grid-template-columns: ${w}px !important; grid-auto-rows: ${w * 3 / 4}px !important; }`;
  }, px);
}

const attr = (loc, name) => loc.getAttribute(name);
const width = (page) => page.evaluate(canvasSample).then((s) => s.width);

test("a browser's camera goes out in three sizes; each viewer gets the size its tile shows", async () => {
  const room = 'e2e-simulcast';
  const ann = await browser.context.newPage();
  const bob = await browser.context.newPage();
  try {
    await ann.goto(`${server.base}/meeting/Ann/${room}`);
    await ann.click('#connect');
    await expect(ann.locator('#participants li')).toHaveCount(1);
    await expect(ann.locator('#app')).toHaveAttribute('data-transport', 'WebTransport');
    // Chromium's fake camera is 640x480: halved twice.
    await expect(ann.locator('#app')).toHaveAttribute('data-simulcast', '160x120 320x240 640x480');
    // Alone, nobody receives anything: after the grace the encoders stop.
    await expect.poll(() => attr(ann.locator('#app'), 'data-encodings-active'),
      { message: 'nothing in demand with nobody there', timeout: 20_000 }).toBe('0');

    await bob.goto(`${server.base}/meeting/Bob/${room}?transport=websocket`);
    await tileWidth(bob, 100);
    await bob.click('#connect');
    await expect(bob.locator('#app')).toHaveAttribute('data-transport', 'WebSocket');
    const tile = bob.locator('#tiles .tile');
    await expect(tile).toHaveCount(1);
    // A 100x75 tile asks for 96x64 (rounded down to 32 device pixels):
    // the smallest encoding carries that.
    await expect(tile).toHaveAttribute('data-asked', '96x64');
    await expect(tile).toHaveAttribute('data-encoding', '0');
    await expect.poll(() => attr(tile, 'data-frames').then(Number)).toBeGreaterThan(10);
    await expect.poll(() => width(bob), { message: 'the picture drawn is the small one' }).toBe(160);
    // Only the smallest is wanted: after five seconds Ann encodes only that.
    await expect.poll(() => attr(ann.locator('#app'), 'data-encodings-active'),
      { message: 'dynacast: only encoding 0 wanted', timeout: 20_000 }).toBe('1');

    // Bob's tile grows: the server moves him up at a key frame, and Ann
    // starts the top encoding again.
    await tileWidth(bob, 700);
    await expect(tile).toHaveAttribute('data-asked', '672x512');
    await expect(tile).toHaveAttribute('data-encoding', '2');
    await expect.poll(() => width(bob), { message: 'the picture drawn is the large one' }).toBe(640);
    await expect.poll(() => attr(ann.locator('#app'), 'data-encodings-active').then(Number))
      .toBeGreaterThanOrEqual(4);
    // A middle-sized tile gets the middle encoding.
    await tileWidth(bob, 250);
    await expect(tile).toHaveAttribute('data-encoding', '1');
    await expect.poll(() => width(bob)).toBe(320);
    const framesBefore = Number(await attr(tile, 'data-frames'));
    await expect.poll(() => attr(tile, 'data-frames').then(Number), { message: 'still drawing' })
      .toBeGreaterThan(framesBefore + 10);

    // A tile that is not shown pauses its track: nothing more is drawn.
    await bob.evaluate(() => { document.getElementById('tiles').style.display = 'none'; });
    await expect(tile).toHaveAttribute('data-asked', 'paused');

    // The native client (--frames counts Bob's camera too): without
    // preferences it gets the largest encoding,
    // with --max-height 120 the smallest.
    const [full, small] = await Promise.all([
      convene(['receive', '--server', server.base, '--cert-sha256', server.sha256, '--meeting-id', room,
        '--frames', '80', '--duration', '60', '--json']),
      convene(['receive', '--server', server.base, '--cert-sha256', server.sha256, '--meeting-id', room,
        '--frames', '80', '--duration', '60', '--json', '--max-height', '120']),
    ]);
    for (const [r, w, what] of [[full, 640, 'no preference'], [small, 160, '--max-height 120']]) {
      expect(r.code, r.stderr).toBe(0);
      const video = JSON.parse(r.stdout).tracks.find((t) => t.kind === 'video' && t.display_name === 'Ann');
      expect(video, `${what}: ${r.stdout}`).toBeTruthy();
      expect(video.frames_decoded, what).toBeGreaterThanOrEqual(20);
      expect(video.decode_errors, what).toBe(0);
      expect(video.width, what).toBe(w);
      // Ann's sound goes out with its level beside it (LAYERED, §6.6.2);
      // a receiver without the extension gets the plain frames.
      const audio = JSON.parse(r.stdout).tracks.find((t) => t.kind === 'audio' && t.display_name === 'Ann');
      expect(audio?.frames_received, `${what}: Ann's sound`).toBeGreaterThan(0);
      console.log(`convene receive (${what}): ${video.frames_decoded} pictures ${video.width}x${video.height}, by encoding ${video.frames_by_encoding}`);
    }
  } finally {
    await ann.close();
    await bob.close();
  }
});

test('the camera goes out in two temporal layers; a viewer capped at 15 pictures a second gets every other one', async () => {
  const room = 'e2e-temporal';
  const ann = await browser.context.newPage();
  try {
    await ann.goto(`${server.base}/meeting/Ann/${room}`);
    await ann.click('#connect');
    await expect(ann.locator('#participants li')).toHaveCount(1);
    // Chromium's encoders make L1T2 (VideoEncoder.isConfigSupported says so).
    await expect(ann.locator('#app')).toHaveAttribute('data-temporal-layers', '2');
    // Two native viewers of the smallest encoding at once, one with a
    // frame-rate cap: the server drops layer 1 for it alone, and what it
    // gets still decodes.
    const watch = (extra) => convene(['receive', '--server', server.base, '--cert-sha256', server.sha256,
      '--meeting-id', room, '--duration', '8', '--json', '--max-height', '120', ...extra]);
    const [full, capped] = await Promise.all([watch([]), watch(['--max-fps', '15'])]);
    const video = (r) => {
      expect(r.code, r.stderr).toBe(0);
      const v = JSON.parse(r.stdout).tracks.find((t) => t.kind === 'video' && t.display_name === 'Ann');
      expect(v, r.stdout).toBeTruthy();
      expect(v.decode_errors).toBe(0);
      return v;
    };
    const [f, c] = [video(full), video(capped)];
    console.log(`temporal layers: ${f.frames_decoded} pictures without a cap, ${c.frames_decoded} with --max-fps 15`);
    expect(f.frames_decoded).toBeGreaterThanOrEqual(20);
    // About half: not all (nothing dropped), nor only the key pictures
    // (layer 1's absence taken for loss, the decoder waiting for a key).
    expect(c.frames_decoded, 'about half the pictures').toBeLessThanOrEqual(f.frames_decoded * 0.7);
    expect(c.frames_decoded, 'about half the pictures').toBeGreaterThanOrEqual(f.frames_decoded * 0.3);
  } finally {
    await ann.close();
  }
});

test('with simulcast=0 in the link the camera goes out as one encoding', async () => {
  const room = 'e2e-simulcast-off';
  const ann = await browser.context.newPage();
  const bob = await browser.context.newPage();
  try {
    await ann.goto(`${server.base}/meeting/Ann/${room}?simulcast=0`);
    await ann.click('#connect');
    await expect(ann.locator('#participants li')).toHaveCount(1);
    await expect(ann.locator('#app')).toHaveAttribute('data-simulcast', '');
    await bob.goto(`${server.base}/meeting/Bob/${room}`);
    await tileWidth(bob, 100);
    await bob.click('#connect');
    const tile = bob.locator('#tiles .tile');
    await expect.poll(() => attr(tile, 'data-frames').then(Number)).toBeGreaterThan(10);
    // One encoding: the full picture whatever the tile, and nothing asked.
    expect(await width(bob)).toBe(640);
    expect(await attr(tile, 'data-encoding')).toBeNull();
    expect(await attr(tile, 'data-asked')).toBeNull();
  } finally {
    await ann.close();
    await bob.close();
  }
});

test('the server says who speaks, and the page marks their tile', async () => {
  const room = 'e2e-speakers';
  // A tone on every frame: the streamer speaks all the time.
  const stream = spawnConvene(['stream', '--server', server.base, '--cert-sha256', server.sha256, '--meeting-id', room,
    '--user-id', 'talker', '--source', 'test-pattern', '--resolution', '320x240', '--fps', '10',
    '--audio', 'tone', '--duration', '90']);
  const page = await browser.context.newPage();
  try {
    await page.goto(`${server.base}/meeting/Listener/${room}`);
    await page.click('#connect');
    const tile = page.locator('#tiles .tile', { hasText: 'talker' });
    await expect(tile).toHaveCount(1);
    const pid = await tile.getAttribute('data-pid');
    await expect(page.locator('#app'), `stream output: ${stream.output}`).toHaveAttribute('data-dominant', pid);
    await expect(tile).toHaveClass(/dominant/);
    await expect(tile).toHaveAttribute('data-active-speaker', 'true');
  } finally {
    stream.kill('SIGINT');
    await page.close();
  }
});
