// The browser client in Firefox (Debian's firefox-esr, driven by
// puppeteer-core over WebDriver BiDi): Firefox has no
// MediaStreamTrackProcessor, so the client captures the camera through
// `new VideoFrame(video)` and the microphone through an AudioWorklet. A
// Firefox participant and a Chromium participant meet over WebTransport and
// each sees the other's picture move and decodes the other's sound; and
// again with WebTransport turned off, over WebSocket.
const { test, expect } = require('@playwright/test');
const { startWebServer, launchChromium, launchFirefox, canvasSample } = require('./harness');

let server, chromium, firefox;

test.beforeAll(async () => {
  server = await startWebServer(['--dev-tls']);
  chromium = await launchChromium({ ignoreHTTPSErrors: true });
  firefox = await launchFirefox({ acceptInsecureCerts: true });
});

test.afterAll(async () => {
  await firefox?.close();
  await chromium?.close();
  await server?.stop();
});

// Polls a Firefox page until a condition holds (harness: `firefox.until`).
const until = (...args) => firefox.until(...args);

const attr = (name) => document.querySelector('#app')?.getAttribute(name);

const sample = canvasSample;

for (const transport of ['WebTransport', 'WebSocket']) test(`a Firefox participant and a Chromium participant meet over ${transport}`, async () => {
  const room = `ff-${transport.toLowerCase()}`;
  const query = transport === 'WebSocket' ? '?transport=websocket' : '';
  const fox = await firefox.newPage();
  await fox.goto(`${server.base}/meeting/Fox/${room}${query}`);
  expect(await fox.evaluate(() => typeof MediaStreamTrackProcessor)).toBe('undefined');
  await until(fox, 'camera preview', () => document.getElementById('preview-status')?.textContent, (t) => /ready/.test(t || ''));
  await fox.click('#connect');
  await until(fox, 'joined', () => document.querySelectorAll('#participants li').length, (n) => n === 1);

  const chrome = await chromium.context.newPage();
  await chrome.goto(`${server.base}/meeting/Chrome/${room}${query}`);
  await chrome.click('#connect');
  await expect(chrome.locator('#participants li')).toHaveCount(2);
  await expect(chrome.locator('#app')).toHaveAttribute('data-transport', transport);
  expect(await until(fox, 'transport', attr, (t) => !!t, 'data-transport')).toBe(transport);
  expect(await fox.evaluate(() => document.getElementById('transport').textContent)).toBe(`Connected over ${transport}`);

  // Chromium sees Firefox's camera (captured from a <video>, H.264 from
  // Firefox's WebCodecs) drawing at more than 10 frames a second.
  const tile = chrome.locator('#tiles .tile');
  await expect(tile.locator('figcaption')).toHaveText('Fox');
  await expect.poll(() => tile.getAttribute('data-frames').then(Number), { message: `frames from Firefox (${firefox.console.slice(-10).join(' | ')})` }).toBeGreaterThan(30);
  await expect.poll(() => tile.getAttribute('data-fps').then(Number)).toBeGreaterThan(10);
  const fromFox = await chrome.evaluate(sample);
  expect(fromFox.lit).toBeGreaterThan(100);
  await expect.poll(async () => (await chrome.evaluate(sample)).sum, { message: "Firefox's picture changes" }).not.toBe(fromFox.sum);
  // ... and its microphone (AudioWorklet capture, Opus) decoded.
  await expect.poll(() => chrome.locator('#app').getAttribute('data-audio-frames').then(Number), { message: 'audio from Firefox' }).toBeGreaterThan(25)
    .catch((e) => { throw new Error(`${e.message}\nFirefox console: ${firefox.console.join('\n')}`); });

  // Firefox sees Chromium's camera: frames, rate, and a picture that is not blank and changes.
  await until(fox, 'a tile from Chromium', () => document.querySelector('#tiles .tile figcaption')?.textContent, (t) => t === 'Chrome');
  await until(fox, 'frames from Chromium', () => Number(document.querySelector('#tiles .tile')?.getAttribute('data-frames')), (n) => n > 30);
  await until(fox, 'over 10 fps', () => Number(document.querySelector('#tiles .tile')?.getAttribute('data-fps')), (n) => n > 10);
  const first = await fox.evaluate(sample);
  expect(first.lit).toBeGreaterThan(100);
  await until(fox, 'the picture changes', sample, (s) => s.sum !== first.sum);
  await until(fox, 'audio from Chromium', attr, (n) => Number(n) > 25, 'data-audio-frames');
  await fox.close();
  await chrome.close();
});
