// The browser client (Rust compiled to WebAssembly, served by convene-server)
// in Debian's Chromium: two people open a meeting link, join, see each
// other, chat, and one leaves.
const { test, expect } = require('@playwright/test');
const { startWebServer, launchChromium, spawnConvene, convene, canvasSample } = require('./harness');

let server, browser;

test.beforeAll(async () => {
  server = await startWebServer();
  browser = await launchChromium();
});

test.afterAll(async () => {
  await browser?.close();
  await server?.stop();
});

test('two browsers meet from a meeting link: roster, chat, leaving', async () => {
  const ann = await browser.context.newPage();
  const bob = await browser.context.newPage();
  // The discovery document is read once per connection, even when the
  // sign-in step reads it first.
  const discovery = [];
  ann.on('request', (r) => { if (r.url().endsWith('/.well-known/convene.json')) discovery.push(r.url()); });
  await ann.goto(`${server.base}/meeting/Ann/e2e-room`);
  await bob.goto(`${server.base}/meeting/Bob%20B/e2e-room`);

  // The join screen is prefilled from the link.
  await expect(ann.locator('#name')).toHaveValue('Ann');
  await expect(bob.locator('#name')).toHaveValue('Bob B');
  await expect(ann.locator('#meeting')).toHaveValue('e2e-room');
  // The camera preview plays (Chromium's fake camera) before joining.
  await expect(ann.locator('#preview-status')).toContainText('ready (2 tracks)');
  await expect.poll(() => ann.evaluate(() => document.getElementById('preview').videoWidth)).toBeGreaterThan(0);
  // Device pickers list the (fake) camera and microphone in use.
  await expect(ann.locator('#camera-select option')).not.toHaveCount(0);
  await expect(ann.locator('#mic-select option')).not.toHaveCount(0);
  const camera = await ann.locator('#camera-select').inputValue();
  expect(camera).not.toBe('');
  // Choosing a device opens it again for the preview.
  await ann.selectOption('#camera-select', camera);
  await expect(ann.locator('#preview-status')).toContainText('ready (2 tracks)');

  await ann.click('#connect');
  await expect(ann.locator('#participants li')).toHaveCount(1);
  await bob.click('#connect');

  // Each sees both, themselves marked, and the transport in use.
  await expect(ann.locator('#participants li')).toHaveCount(2);
  // A toast says so (and to screen readers, through its live region).
  await expect(ann.locator('#events')).toHaveAttribute('data-last', 'Bob B joined');
  await expect(ann.locator('#participants')).toContainText('Bob B');
  await expect(bob.locator('#participants')).toContainText('Ann');
  await expect(bob.locator('#participants')).toContainText('Bob B (you)');
  await expect(ann.locator('#transport')).toHaveText(/WebSocket/);
  expect(discovery.length).toBe(1);

  // Each sends its (fake) camera as H.264; the other sees it as a tile that keeps drawing.
  for (const [page, other] of [[ann, 'Bob B'], [bob, 'Ann']]) {
    const tile = page.locator('#tiles .tile');
    await expect(tile).toHaveCount(1);
    await expect(tile.locator('figcaption')).toHaveText(other);
    await expect.poll(async () => Number(await tile.getAttribute('data-frames'))).toBeGreaterThan(10);
  }

  // Each sends its (fake) microphone as Opus; the other decodes it and
  // feeds it to the audio worklet.
  for (const page of [ann, bob]) {
    await expect.poll(async () => Number(await page.locator('#app').getAttribute('data-audio-frames')),
      { message: 'audio frames decoded' }).toBeGreaterThan(25);
    // ... and the worklet plays it: a second of samples at 48 kHz.
    await expect.poll(async () => Number(await page.locator('#app').getAttribute('data-audio-played')),
      { message: 'samples played by the audio worklet' }).toBeGreaterThan(48000);
  }

  // Muting the microphone shows on the other side; stopping the camera stops
  // its pictures there.
  await ann.click('#toggle-mic');
  await expect(ann.locator('#toggle-mic')).toHaveText('Unmute');
  await expect(bob.locator('#participants')).toContainText('Ann · muted');
  await ann.click('#toggle-mic');
  await expect(bob.locator('#participants')).not.toContainText('muted');
  await ann.click('#toggle-camera');
  const annTile = bob.locator('#tiles .tile');
  await expect(annTile).toHaveAttribute('data-muted', 'true');
  const stopped = Number(await annTile.getAttribute('data-frames'));
  await bob.waitForTimeout(1500);
  expect(Number(await annTile.getAttribute('data-frames'))).toBe(stopped);
  await ann.click('#toggle-camera');
  await expect(annTile).toHaveAttribute('data-muted', 'false');
  await expect.poll(async () => Number(await annTile.getAttribute('data-frames'))).toBeGreaterThan(stopped + 5);

  // Sharing the screen adds a tile of its own on the other side, which goes
  // when the sharing stops.
  await ann.click('#toggle-screen');
  await expect(ann.locator('#toggle-screen')).toHaveText('Stop sharing');
  const screen = bob.locator('#tiles .tile[data-track="3"]');
  await expect(screen.locator('figcaption')).toHaveText('Ann · screen');
  await expect.poll(() => screen.getAttribute('data-frames').then(Number), { message: 'screen pictures' }).toBeGreaterThan(5);
  await expect(bob.locator('#tiles .tile')).toHaveCount(2);
  await ann.click('#toggle-screen');
  await expect(bob.locator('#tiles .tile')).toHaveCount(1);

  // Chat crosses, with the sender's name; with his chat closed, Bob sees
  // an unread count on the chat button until he opens it.
  await ann.click('#toggle-chat');
  await expect(ann.locator('#chat')).toBeVisible();
  await ann.fill('#chat-input', 'hello Bob');
  await ann.press('#chat-input', 'Enter');
  await expect(bob.locator('#messages')).toContainText('Ann: hello Bob');
  await expect(ann.locator('#messages')).toContainText('Ann: hello Bob');
  await expect(bob.locator('#chat-unread')).toHaveText('1');
  await expect(ann.locator('#chat-unread')).toHaveCount(0);
  await bob.click('#toggle-chat');
  await expect(bob.locator('#chat')).toBeVisible();
  await expect(bob.locator('#chat-unread')).toHaveCount(0);

  // Leaving removes Bob from Ann's list.
  await bob.click('#leave');
  await expect(ann.locator('#participants li')).toHaveCount(1);
  await expect(ann.locator('#events')).toHaveAttribute('data-last', 'Bob B left');
  await expect(ann.locator('#tiles .tile')).toHaveCount(0);
  await expect(bob.locator('#status')).toContainText('left');
});

for (const codec of ['opus', 'pcmu']) {
test(`convene stream appears in the browser as a tile that keeps drawing, its sound in ${codec}`, async () => {
  // The native CLI's moving test pattern, H.264 from OpenH264.
  const stream = spawnConvene(['stream', '--server', server.base, '--meeting-id', `e2e-tile-${codec}`,
    '--user-id', 'streamer', '--source', 'test-pattern', '--resolution', '320x240', '--fps', '15',
    '--audio', 'tone', '--audio-codec', codec, '--duration', '90']);
  try {
    const page = await browser.context.newPage();
    await page.goto(`${server.base}/meeting/Viewer/e2e-tile-${codec}`);
    await page.click('#connect');
    const tile = page.locator('#tiles .tile');
    await expect(tile).toHaveCount(1);
    await expect(tile.locator('figcaption')).toHaveText('streamer');
    // Decoded with WebCodecs and drawn, again and again.
    await expect.poll(async () => Number(await tile.getAttribute('data-frames')),
      { message: `frames drawn (stream output: ${stream.output})` }).toBeGreaterThan(15);
    const sample = () => page.evaluate(canvasSample);
    const first = await sample();
    expect(first.width).toBe(320);
    expect(first.height).toBe(240);
    expect(first.lit).toBeGreaterThan(100);
    // The pattern moves: the picture changes.
    await expect.poll(async () => (await sample()).sum).not.toBe(first.sum);
    // Its tone (Opus, or G.711 µ-law for old streams) is decoded and heard: the streamer is the active speaker.
    await expect.poll(async () => Number(await page.locator('#app').getAttribute('data-audio-frames')))
      .toBeGreaterThan(25);
    const speaker = await page.locator('#participants li', { hasText: 'streamer' }).getAttribute('data-pid');
    await expect(page.locator('#app')).toHaveAttribute('data-speaker', speaker);
    await expect(page.locator('#participants li.speaking')).toHaveText(/streamer/);
  } finally {
    stream.kill('SIGINT');
  }
});
}

test("the browser's camera decodes in convene receive", async () => {
  const page = await browser.context.newPage();
  await page.goto(`${server.base}/meeting/Cam/e2e-receive`);
  await expect(page.locator('#preview-status')).toContainText('ready');
  await page.click('#connect');
  await expect(page.locator('#participants li')).toHaveCount(1);
  const r = await convene(['receive', '--server', server.base, '--meeting-id', 'e2e-receive',
    '--frames', '20', '--duration', '60', '--json']);
  expect(r.code, r.stderr).toBe(0);
  const report = JSON.parse(r.stdout);
  const video = report.tracks.find((t) => t.kind === 'video');
  expect(video, r.stdout).toBeTruthy();
  expect(video.display_name).toBe('Cam');
  expect(video.codec).toBe('avc1.42E01F');
  expect(video.frames_decoded).toBeGreaterThanOrEqual(20);
  expect(video.decode_errors).toBe(0);
  expect(video.width).toBeGreaterThan(0);
  const audio = report.tracks.find((t) => t.kind === 'audio');
  expect(audio, r.stdout).toBeTruthy();
  // The browser's Opus decodes in the CLI: every frame that came, no errors.
  expect(audio.codec).toBe('opus');
  expect(audio.frames_received).toBeGreaterThan(0);
  expect(audio.frames_decoded).toBe(audio.frames_received);
  expect(audio.decode_errors).toBe(0);
  await page.close();
});

test('when the server goes away the page says so, reconnects and restores its tracks', async () => {
  // A server of its own, restarted on the same port.
  let own = await startWebServer();
  const ann = await browser.context.newPage();
  const bob = await browser.context.newPage();
  try {
    await ann.goto(`${own.base}/meeting/Ann/e2e-reconnect`);
    await bob.goto(`${own.base}/meeting/Bob/e2e-reconnect`);
    await ann.click('#connect');
    await expect(ann.locator('#participants li')).toHaveCount(1);
    await bob.click('#connect');
    await expect(ann.locator('#participants li')).toHaveCount(2);
    await expect.poll(() => ann.locator('#tiles .tile').getAttribute('data-frames').then(Number)).toBeGreaterThan(5);

    await own.stop();
    for (const page of [ann, bob]) {
      await expect(page.locator('#banner')).toBeVisible();
      await expect(page.locator('#banner')).toContainText('Reconnecting');
    }
    own = await own.restart();
    for (const [page, other] of [[ann, 'Bob'], [bob, 'Ann']]) {
      await expect(page.locator('#banner')).toBeHidden({ timeout: 30_000 });
      await expect(page.locator('#participants li')).toHaveCount(2);
      await expect(page.locator('#participants')).toContainText(other);
      // The other's camera comes back as a fresh tile that draws.
      const tile = page.locator('#tiles .tile');
      await expect(tile.locator('figcaption')).toHaveText(other);
      await expect.poll(() => tile.getAttribute('data-frames').then(Number)).toBeGreaterThan(5);
      await expect.poll(() => page.locator('#app').getAttribute('data-audio-frames').then(Number)).toBeGreaterThan(10);
    }
  } finally {
    await ann.close();
    await bob.close();
    await own.stop();
  }
});

test("the camera's encoder follows the server's congestion hints", async () => {
  // Subscriber queues of 1,500 bytes: nearly every video frame is dropped
  // for the subscriber, so the server asks the publisher to slow down.
  const own = await startWebServer(['--max-queue-bytes', '1500']);
  const ann = await browser.context.newPage();
  const bob = await browser.context.newPage();
  try {
    // One encoding: hints speak for plain tracks; a simulcast track's
    // subscribers move between encodings instead (§6.6.3).
    await ann.goto(`${own.base}/meeting/Ann/e2e-congested?simulcast=0`);
    await ann.click('#connect');
    await expect(ann.locator('#participants li')).toHaveCount(1);
    await expect.poll(() => ann.locator('#app').getAttribute('data-encoder-kbps').then(Number),
      { message: 'the encoder starts at 800 kbit/s' }).toBe(800);
    await bob.goto(`${own.base}/meeting/Bob/e2e-congested`);
    await bob.click('#connect');
    await expect(ann.locator('#participants li')).toHaveCount(2);
    // A hint arrives and the encoder is configured again, lower.
    await expect.poll(() => ann.locator('#app').getAttribute('data-video-kbps').then(Number),
      { message: 'a congestion hint' }).toBeLessThan(800);
    await expect.poll(() => ann.locator('#app').getAttribute('data-encoder-kbps').then(Number),
      { message: 'the encoder reconfigured' }).toBeLessThan(800);
  } finally {
    await ann.close();
    await bob.close();
    await own.stop();
  }
});
