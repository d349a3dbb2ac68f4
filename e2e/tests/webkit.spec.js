// The browser client in WebKit (Safari's engine): Debian's WebKitGTK
// MiniBrowser, driven through WebKitWebDriver on an Xvfb of its own, with
// WebKit's mock camera and microphone. A WebKit page, a Chromium page
// (Playwright) and `convene stream` meet: each page draws changing pictures
// from both others and decodes both others' sound, and `convene receive`
// decodes the WebKit page's camera without a single decode error; Chromium
// draws the WebKit page's shared screen. Then two WebKit pages (two
// MiniBrowsers) see and hear each other through end-to-end encryption. Last,
// with WebKit's experimental WebTransport turned on, the session it refuses
// is reported at once and leaves no unhandled rejection.
//
// What WebKit does differently, and what the client does about it (each
// checked here): its VideoEncoder ignores `avc: { format: "annexb" }` and
// emits length-prefixed H.264 with the SPS/PPS in `decoderConfig`, which
// the client turns into Annex B; it has no MediaStreamTrackProcessor on the
// main thread, so the camera is read from a `<video>`; it has no
// WebTransport by default, so the client goes straight to WebSocket.
//
// Tagged @webkit: `cargo xtask test` runs it on its own, after the others.
const { test, expect } = require('@playwright/test');
const { By } = require('selenium-webdriver');
const { startWebServer, launchChromium, launchWebKit, spawnConvene, convene } = require('./harness');

// Generous: two browsers, a streamer, a server and a build may share two cores.
const DEADLINE_MS = 90_000;
const H264 = 'avc1.42E01F';

let server, chromium, webkit, stream;
// Each check by name, and whether it passed; printed as one summary line.
const checks = [];
const measured = {};

test.beforeAll(async () => {
  test.setTimeout(180_000);
  server = await startWebServer();
  chromium = await launchChromium();
  webkit = await launchWebKit();
});

test.afterAll(async () => {
  stream?.kill('SIGINT');
  await webkit?.close();
  await chromium?.close();
  await server?.stop();
  const failed = checks.filter((c) => !c.ok);
  const numbers = Object.entries(measured).map(([k, v]) => `${k} ${v}`).join(', ');
  console.log(`WebKit: ${checks.length - failed.length} checks passed, ${failed.length} failed`
    + `${failed.length ? ` (${failed.map((c) => c.name).join('; ')})` : ''}${numbers ? `; ${numbers}` : ''}`);
});

/// Runs one named check, recording whether it passed.
async function check(name, fn) {
  try {
    const v = await fn();
    checks.push({ name, ok: true });
    return v;
  } catch (e) {
    checks.push({ name, ok: false });
    throw e;
  }
}

/// Polls `fn(arg)` in the WebKit page until `ok(value)`, or fails naming `what`.
function inWebKit(what, fn, ok, arg) {
  return inWebKitOf(webkit.driver, what, fn, ok, arg);
}

/// Polls `fn(arg)` in the page of WebDriver session `driver` until `ok(value)`.
async function inWebKitOf(driver, what, fn, ok, arg) {
  const deadline = Date.now() + DEADLINE_MS;
  let value;
  while (Date.now() < deadline) {
    value = await driver.executeScript(fn, arg);
    if (ok(value)) return value;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`WebKit: ${what} (last: ${JSON.stringify(value)})\nMiniBrowser log (end):\n${webkit.log().slice(-4000)}`);
}

/// Polls `fn(arg)` in a Chromium page until `ok(value)`.
async function inChromium(page, what, fn, ok, arg) {
  let value;
  await expect.poll(async () => { value = await page.evaluate(fn, arg); return ok(value); },
    { message: `Chromium: ${what} (last: ${JSON.stringify(value)})`, timeout: DEADLINE_MS }).toBe(true);
  return value;
}

// In a page: the tile captioned `name` (its frames, frame rate and a sample
// of its canvas: a checksum that changes with the picture and how many
// sampled pixels are lit), or null.
function tile(name) {
  const fig = [...document.querySelectorAll('#tiles .tile')]
    .find((f) => f.querySelector('figcaption')?.textContent === name);
  if (!fig) return null;
  const c = fig.querySelector('canvas');
  let sum = 0, lit = 0;
  if (c.width > 0 && c.height > 0) {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < d.length; i += 4 * 61) {
      sum += d[i] + 3 * d[i + 1] + 7 * d[i + 2];
      if (d[i] + d[i + 1] + d[i + 2] > 30) lit += 1;
    }
  }
  return {
    frames: Number(fig.getAttribute('data-frames')),
    fps: Number(fig.getAttribute('data-fps')),
    width: c.width, height: c.height, sum, lit,
  };
}

// In a page: the frames and frame rate of the tile captioned `name`, or
// null (cheap: no canvas read, for the rate measurements).
function count(name) {
  const fig = [...document.querySelectorAll('#tiles .tile')]
    .find((f) => f.querySelector('figcaption')?.textContent === name);
  return fig ? { frames: Number(fig.getAttribute('data-frames')), fps: Number(fig.getAttribute('data-fps')) } : null;
}

// In a page: audio frames decoded from the participant named `name`
// (from `#app[data-audio-by]` and the participant list), or 0.
function audioFrom(name) {
  const li = [...document.querySelectorAll('#participants li')].find((l) => {
    const text = l.querySelector('span')?.textContent || '';
    return text === name || text.startsWith(`${name} `);
  });
  const pid = li?.getAttribute('data-pid');
  const by = (document.querySelector('#app')?.getAttribute('data-audio-by') || '').split(' ');
  const entry = by.find((e) => e.startsWith(`${pid}=`));
  return entry ? Number(entry.split('=')[1]) : 0;
}

const appAttr = (name) => document.querySelector('#app')?.getAttribute(name);

test('a WebKit page, a Chromium page and convene stream meet; convene receive decodes WebKit @webkit', async () => {
  test.setTimeout(600_000);
  const room = 'webkit-room';
  stream = spawnConvene(['stream', '--server', server.base, '--meeting-id', room,
    '--user-id', 'streamer', '--source', 'test-pattern', '--resolution', '320x240', '--fps', '15',
    '--audio', 'tone', '--duration', '600']);
  const wk = webkit.driver;
  await wk.get(`${server.base}/meeting/Safari/${room}`);

  await check('WebKit probes its codecs and picks H.264', async () => {
    const codec = await inWebKit('codec probe', appAttr, (v) => !!v, 'data-video-codec');
    expect(codec).toBe(H264);
    const decoders = await wk.executeScript(appAttr, 'data-video-decoders');
    expect(decoders.split(' ')).toContain(H264);
    measured['decoders'] = `[${decoders}]`;
  });
  await check('WebKit has no MediaStreamTrackProcessor on the main thread', async () => {
    expect(await wk.executeScript('return typeof MediaStreamTrackProcessor')).toBe('undefined');
  });
  await check('WebKit opens its mock camera and microphone', async () => {
    await inWebKit('camera preview', () => document.getElementById('preview-status')?.textContent,
      (t) => /ready \(2 tracks\)/.test(t || ''));
  });
  const t0 = Date.now();
  await wk.findElement(By.css('#connect')).click();
  await check('WebKit joins over WebSocket at once, saying it has no WebTransport', async () => {
    await inWebKit('joined with the streamer', () => document.querySelectorAll('#participants li').length, (n) => n === 2);
    measured['WebKit join'] = `${Date.now() - t0} ms`;
    expect(await wk.executeScript(appAttr, 'data-transport')).toBe('WebSocket');
    expect(await wk.executeScript(() => document.getElementById('transport').textContent))
      .toBe('Connected over WebSocket (this browser has no WebTransport)');
  });

  const chrome = await chromium.context.newPage();
  await chrome.goto(`${server.base}/meeting/Chrome/${room}`);
  await chrome.click('#connect');
  await expect(chrome.locator('#participants li')).toHaveCount(3, { timeout: DEADLINE_MS });

  await check("WebKit's encoder output form is read from its decoderConfig", async () => {
    const form = await inWebKit('encoder form', appAttr, (v) => !!v, 'data-encoder-form');
    measured['WebKit H.264 form'] = form;
    expect(['avcc', 'annexb']).toContain(form);
  });

  // Each page draws changing pictures from both others.
  for (const [viewer, name] of [['WebKit', 'Chrome'], ['WebKit', 'streamer'], ['Chromium', 'Safari'], ['Chromium', 'streamer']]) {
    await check(`${viewer} draws changing pictures from ${name}`, async () => {
      const poll = viewer === 'WebKit'
        ? (what, ok, fn = tile) => inWebKit(what, fn, ok, name)
        : (what, ok, fn = tile) => inChromium(chrome, what, fn, ok, name);
      const first = await poll(`over 30 pictures from ${name}`, (t) => t && t.frames > 30 && t.lit > 100);
      expect(first.width).toBeGreaterThan(0);
      await poll(`${name}'s picture changes`, (t) => t && t.sum !== first.sum);
      // Pictures keep coming: 5 a second or more by the tile's own count
      // (a busy machine may start slower), then the rate over 4 s is noted.
      await poll(`5 pictures a second from ${name}`, (t) => t && t.fps >= 5, count);
      const a = await poll('a count', (t) => !!t, count);
      const started = Date.now();
      const b = await poll('4 s of pictures', (t) => t && Date.now() - started >= 4000, count);
      measured[`${name}→${viewer}`] = `${((b.frames - a.frames) * 1000 / (Date.now() - started)).toFixed(1)} fps`;
    });
  }

  // Sound is decoded both ways.
  await check("WebKit decodes Chromium's and the streamer's sound", async () => {
    await inWebKit("Chromium's Opus", audioFrom, (n) => n > 25, 'Chrome');
    await inWebKit("the streamer's G.711", audioFrom, (n) => n > 25, 'streamer');
    await inWebKit('samples played', appAttr, (n) => Number(n) > 48000, 'data-audio-played');
  });
  await check("Chromium decodes WebKit's sound", async () => {
    await inChromium(chrome, "WebKit's Opus", audioFrom, (n) => n > 25, 'Safari');
  });

  await check("convene receive decodes WebKit's camera with no decode error", async () => {
    const r = await convene(['receive', '--server', server.base, '--meeting-id', room,
      '--user-id', 'checker', '--duration', '20', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    const video = report.tracks.find((t) => t.kind === 'video' && t.display_name === 'Safari');
    expect(video, r.stdout).toBeTruthy();
    expect(video.codec).toBe(H264);
    expect(video.decode_errors, r.stdout).toBe(0);
    expect(video.frames_decoded, r.stdout).toBeGreaterThanOrEqual(20);
    expect(video.width).toBeGreaterThan(0);
    measured['WebKit→receive'] = `${video.frames_decoded} pictures ${video.width}x${video.height}, ${video.decode_errors} errors`;
  });

  await check("Chromium draws the WebKit page's shared screen", async () => {
    await wk.findElement(By.css('#toggle-screen')).click();
    await inWebKit('sharing', () => document.getElementById('toggle-screen')?.textContent, (t) => t === 'Stop sharing');
    const first = await inChromium(chrome, 'pictures of the screen', tile, (t) => t && t.frames > 5 && t.lit > 100, 'Safari · screen');
    await inChromium(chrome, 'the screen picture changes', tile, (t) => t && t.sum !== first.sum, 'Safari · screen');
    await wk.findElement(By.css('#toggle-screen')).click();
    await inChromium(chrome, 'the screen tile goes', tile, (t) => t === null, 'Safari · screen');
  });
  stream.kill('SIGINT');
  await chrome.close();
});

test('two WebKit pages see and hear each other, end-to-end encrypted @webkit', async () => {
  test.setTimeout(600_000);
  // A second MiniBrowser: in a second tab of the same one, getUserMedia
  // did not answer while the first tab captured.
  const other = await launchWebKit();
  try {
    const room = 'webkit-pair';
    const pages = [['Safari', webkit.driver], ['Safari2', other.driver]];
    for (const [name, d] of pages) {
      await d.get(`${server.base}/meeting/${name}/${room}#e2ee=1`);
      await inWebKitOf(d, 'camera preview', () => document.getElementById('preview-status')?.textContent,
        (t) => /ready \(2 tracks\)/.test(t || ''));
      await d.findElement(By.css('#connect')).click();
    }
    for (const [[name, d], [from]] of [[pages[0], pages[1]], [pages[1], pages[0]]]) {
      await check(`${name} draws changing pictures from ${from} and decodes its sound`, async () => {
        const first = await inWebKitOf(d, `over 30 pictures from ${from}`, tile, (t) => t && t.frames > 30 && t.lit > 100, from);
        await inWebKitOf(d, `${from}'s picture changes`, tile, (t) => t && t.sum !== first.sum, from);
        await inWebKitOf(d, `${from}'s Opus`, audioFrom, (n) => n > 25, from);
        const a = await inWebKitOf(d, 'a count', count, (t) => !!t, from);
        const started = Date.now();
        const b = await inWebKitOf(d, '4 s of pictures', count, (t) => t && Date.now() - started >= 4000, from);
        measured[`${from}→${name}`] = `${((b.frames - a.frames) * 1000 / (Date.now() - started)).toFixed(1)} fps`;
      });
    }
    await check('both WebKit pages decrypt (SFrame) and show the same safety code', async () => {
      const codes = [];
      for (const [name, d] of pages) {
        expect(await d.executeScript(appAttr, 'data-e2ee')).toBe('on');
        await inWebKitOf(d, `${name} decrypts`, appAttr, (n) => Number(n) > 50, 'data-e2ee-decrypted');
        expect(Number(await d.executeScript(appAttr, 'data-e2ee-rejected'))).toBe(0);
        codes.push(await d.executeScript(appAttr, 'data-safety-code'));
      }
      expect(codes[0]).toMatch(/^\d{5} \d{5} \d{5} \d{5}$/);
      expect(codes[1]).toBe(codes[0]);
    });
  } finally {
    await other.close();
  }
});

test("WebKit with its experimental WebTransport: the refusal is reported at once, nothing unhandled @webkit", async () => {
  test.setTimeout(300_000);
  // WebKit's WebTransport is off unless this flag is set; with it, sessions
  // are refused at once (without an error value).
  const tls = await startWebServer(['--dev-tls']);
  const flagged = await launchWebKit({ extraArgs: ['--features=+WebTransport'], acceptInsecureCerts: true });
  try {
    const d = flagged.driver;
    await d.get(`${tls.base}/meeting/Safari/webkit-wt`);
    await check('WebKit reports its refused WebTransport session at once and joins over WebSocket', async () => {
      expect(await d.executeScript('return typeof WebTransport')).toBe('function');
      await inWebKitOf(d, 'camera preview', () => document.getElementById('preview-status')?.textContent,
        (t) => /ready/.test(t || ''));
      // Registered before Connect, so it sees whatever connecting leaves unhandled.
      await d.executeScript(() => {
        window.unhandled = [];
        window.addEventListener('unhandledrejection', (e) => window.unhandled.push(String(e.reason)));
      });
      await d.findElement(By.css('#connect')).click();
      await inWebKitOf(d, 'joined', () => document.querySelectorAll('#participants li').length, (n) => n === 1);
      const text = await d.executeScript(() => document.getElementById('transport').textContent);
      measured['WebKit WebTransport'] = JSON.stringify(text);
      const m = text.match(/^Connected over WebSocket \(WebTransport failed after (\d+\.\d) s: (.+)\)$/);
      expect(m, text).toBeTruthy();
      expect(Number(m[1]), text).toBeLessThan(4);
      expect(m[2]).not.toContain('no session within');
      expect(await d.executeScript(() => window.unhandled)).toEqual([]);
    });
  } finally {
    await flagged.close();
    await tls.stop();
  }
});
