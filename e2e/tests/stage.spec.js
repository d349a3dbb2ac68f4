// The stage with six in the meeting (PROTOCOL.md §6.6.3): a browser page and
// five `convene stream --simulcast` publishers (320x180 and 160x90). The
// grid pages, and a tile on another page asks for nothing and receives
// nothing; a pinned tile is the large one of the speaker view and receives
// the top encoding while the strip's small tiles receive the small one; and
// clients without the extension (`convene receive` without sfu flags, and
// the conformance suite's reference client, v1 only) in the same room still
// receive every camera, in one encoding.
const { test, expect } = require('@playwright/test');
const { startWebServer, launchChromium, launchFirefox, convene, runBin, spawnConvene } = require('./harness');

let server, browser, firefox;
const room = 'e2e-stage';
const streams = [];

test.beforeAll(async () => {
  server = await startWebServer();
  browser = await launchChromium();
  for (const n of [1, 2, 3, 4, 5]) {
    streams.push(spawnConvene(['stream', '--server', server.base, '--meeting-id', room,
      '--user-id', `cam${n}`, '--source', 'test-pattern', '--resolution', '320x180', '--fps', '10',
      '--simulcast', '--audio', 'tone', '--duration', '150']));
  }
});

test.afterAll(async () => {
  for (const s of streams) s.kill('SIGINT');
  await firefox?.close();
  await browser?.close();
  await server?.stop();
});

const frames = (loc) => loc.getAttribute('data-frames').then(Number);

// The frames each tile has drawn, by participant.
async function drawn(page) {
  return page.evaluate(() => Object.fromEntries([...document.querySelectorAll('#tiles .tile')]
    .map((t) => [t.dataset.pid, Number(t.dataset.frames)])));
}

// Waits until every tile in `growing` has drawn `more` pictures past `from`;
// then the tiles in `still` must have drawn none. The tiles in `still` must
// have asked for nothing already; pictures on their way when they asked
// are drawn first (the others' five more pictures are half a second).
async function onlyThese(page, growing, still, more = 10) {
  for (const p of still) {
    await expect(page.locator(`#tiles .tile[data-pid="${p}"]`)).toHaveAttribute('data-asked', 'paused');
  }
  const settled = await drawn(page);
  await expect.poll(async () => {
    const now = await drawn(page);
    return growing.every((p) => now[p] >= settled[p] + 5);
  }, { message: `tiles ${growing} draw`, timeout: 30_000 }).toBe(true);
  const from = await drawn(page);
  await expect.poll(async () => {
    const now = await drawn(page);
    return growing.every((p) => now[p] >= from[p] + more);
  }, { message: `tiles ${growing} keep drawing`, timeout: 30_000 }).toBe(true);
  const now = await drawn(page);
  for (const p of still) expect(now[p], `tile ${p} is not shown and receives nothing`).toBe(from[p]);
}

test('six in a meeting: the grid pages, a pinned tile gets the top encoding, the strip the small one', async () => {
  const page = await browser.context.newPage();
  await page.setViewportSize({ width: 1280, height: 800 });
  try {
    await page.goto(`${server.base}/meeting/Viewer/${room}?page_size=3`);
    await page.click('#connect');
    const tiles = page.locator('#tiles .tile');
    await expect(tiles).toHaveCount(5);
    await expect(page.locator('#participants li')).toHaveCount(6);

    // The grid: three on the first page, two on the second.
    await expect(page.locator('#page-of')).toHaveText('Page 1 of 2');
    const shown = page.locator('#tiles .tile[data-place="grid"]');
    const hidden = page.locator('#tiles .tile[data-place="hidden"]');
    await expect(shown).toHaveCount(3);
    await expect(hidden).toHaveCount(2);
    const pids = async (loc) => (await loc.evaluateAll((ts) => ts.map((t) => t.dataset.pid)));
    const first = await pids(shown);
    const second = await pids(hidden);
    for (const p of second) {
      await expect(page.locator(`#tiles .tile[data-pid="${p}"]`)).toHaveAttribute('data-asked', 'paused');
    }
    await onlyThese(page, first, second);

    // The next page: the other two draw, the first three pause.
    await page.click('#page-next');
    await expect(page.locator('#page-of')).toHaveText('Page 2 of 2');
    for (const p of first) {
      await expect(page.locator(`#tiles .tile[data-pid="${p}"]`)).toHaveAttribute('data-asked', 'paused');
    }
    await onlyThese(page, second, first);

    // Pin one of them: the speaker view, with it large and the top
    // encoding, two more small in the strip with the small encoding.
    const pinnedPid = second[0];
    const pinned = page.locator(`#tiles .tile[data-pid="${pinnedPid}"]`);
    await pinned.locator('button.pin').click();
    await expect(pinned).toHaveAttribute('data-place', 'main');
    await expect(pinned).toHaveAttribute('data-pinned', 'true');
    await expect(pinned.locator('button.pin')).toHaveText('Unpin');
    await expect(page.locator('#tiles')).toHaveAttribute('data-mode', 'speaker');
    const strip = page.locator('#tiles .tile[data-place="strip"]');
    await expect(strip).toHaveCount(2);
    await expect(pinned).toHaveAttribute('data-encoding', '1', { timeout: 30_000 });
    const stripPids = await pids(strip);
    for (const p of stripPids) {
      await expect(page.locator(`#tiles .tile[data-pid="${p}"]`)).toHaveAttribute('data-encoding', '0', { timeout: 30_000 });
    }
    // What is drawn is what was sent: 320 wide large, 160 in the strip.
    const canvasWidth = (pid) => page.locator(`#tiles .tile[data-pid="${pid}"] canvas`).evaluate((c) => c.width);
    await expect.poll(() => canvasWidth(pinnedPid)).toBe(320);
    for (const p of stripPids) await expect.poll(() => canvasWidth(p)).toBe(160);
    const rest = (await pids(page.locator('#tiles .tile[data-place="hidden"]')));
    expect(rest).toHaveLength(2);
    await onlyThese(page, [pinnedPid, ...stripPids], rest);

    // The v1 client meanwhile: every camera, each in the one encoding the
    // server picks for it (the top), and sound.
    const r = await convene(['receive', '--server', server.base, '--meeting-id', room,
      '--frames', '200', '--duration', '60', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    const videos = report.tracks.filter((t) => t.kind === 'video' && /^cam/.test(t.display_name));
    expect(videos, r.stdout).toHaveLength(5);
    for (const v of videos) {
      expect(v.frames_decoded, v.display_name).toBeGreaterThanOrEqual(10);
      expect(v.decode_errors, v.display_name).toBe(0);
      expect(v.width, v.display_name).toBe(320);
    }
    expect(report.tracks.filter((t) => t.kind === 'audio' && t.frames_received > 0).length).toBeGreaterThanOrEqual(5);

    // The reference client, written from the v1 spec alone: v1 frames of
    // every camera and microphone, key frames among them, and never a
    // sequence number that does not move forward (which a second encoding
    // of the same picture would be).
    const ws = `${server.base.replace(/^http/, 'ws')}/convene/ws`;
    const ref = await runBin('convene-reference-client', [ws, room, '--no-publish', '--seconds', '6']);
    expect(ref.code, ref.stderr).toBe(0);
    const got = Object.values(JSON.parse(ref.stdout).tracks);
    const refVideo = got.filter((t) => t.kind === 'video');
    // Five cameras and the page's own.
    expect(refVideo, ref.stdout).toHaveLength(6);
    for (const t of refVideo) {
      expect(t.frames, ref.stdout).toBeGreaterThanOrEqual(20);
      expect(t.keys, ref.stdout).toBeGreaterThanOrEqual(1);
      expect(t.not_ahead, ref.stdout).toBe(0);
    }
    expect(got.filter((t) => t.kind === 'audio' && t.frames >= 100), ref.stdout).toHaveLength(6);

    // Unpin: back to the speaker view's own choice, the grid one click away.
    await pinned.locator('button.pin').click();
    await expect(pinned).toHaveAttribute('data-pinned', 'false');
    await page.click('#toggle-layout');
    await expect(page.locator('#tiles')).toHaveAttribute('data-mode', 'grid');
    await expect(page.locator('#tiles .tile[data-place="grid"]')).toHaveCount(3);
  } finally {
    await page.close();
  }
});

test('the same stage in Firefox: paging pauses, a pinned tile gets the top encoding', async () => {
  firefox = await launchFirefox();
  const fox = await firefox.newPage();
  // Polls `fn` in the Firefox page until `ok(value)`.
  const until = async (what, fn, ok, arg) => {
    const deadline = Date.now() + 30_000;
    let value;
    while (Date.now() < deadline) {
      value = await fox.evaluate(fn, arg);
      if (ok(value)) return value;
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error(`Firefox: ${what} (last: ${JSON.stringify(value)}; console: ${firefox.console.slice(-15).join(' | ')})`);
  };
  const places = () => Object.fromEntries([...document.querySelectorAll('#tiles .tile')]
    .map((t) => [t.dataset.pid, { place: t.dataset.place, asked: t.dataset.asked, encoding: t.dataset.encoding,
      frames: Number(t.dataset.frames), width: t.querySelector('canvas')?.width }]));
  try {
    await fox.goto(`${server.base}/meeting/Fox/${room}?page_size=3`);
    await until('camera preview', () => document.getElementById('preview-status')?.textContent, (t) => /ready/.test(t || ''));
    await fox.click('#connect');
    // Whether this Firefox's encoders make temporal layers (L1T2), as its
    // isConfigSupported answers: reported, not required.
    const layers = await until('the encoder probe', () => document.getElementById('app')?.dataset.temporalLayers,
      (v) => v === '1' || v === '2');
    console.log(`Firefox temporal layers: ${layers}`);
    await until('five tiles', () => document.querySelectorAll('#tiles .tile').length, (n) => n === 5);
    await until('two pages', () => document.getElementById('page-of')?.textContent, (t) => t === 'Page 1 of 2');
    // Three drawn, two paused.
    const paged = await until('three shown and two paused', places, (p) => {
      const v = Object.values(p);
      return v.filter((t) => t.place === 'grid' && t.frames > 10).length === 3
        && v.filter((t) => t.place === 'hidden' && t.asked === 'paused').length === 2;
    });
    const hidden = Object.keys(paged).filter((pid) => paged[pid].place === 'hidden');
    // Pin the first shown tile: it is large and gets the top encoding, the
    // strip the small one.
    const pid = Object.keys(paged).find((p) => paged[p].place === 'grid');
    await fox.click(`#tiles .tile[data-pid="${pid}"] button.pin`);
    await until('the pinned tile large, in the top encoding, drawn 320 wide', places,
      (p) => p[pid].place === 'main' && p[pid].encoding === '1' && p[pid].width === 320);
    await until('the strip in the small encoding, drawn 160 wide', places, (p) => {
      const strip = Object.values(p).filter((t) => t.place === 'strip');
      return strip.length === 2 && strip.every((t) => t.encoding === '0' && t.width === 160);
    });
    // What is on another page still receives nothing (once it has asked
    // for nothing and what was on its way has been drawn).
    const settle = await until('the others paused', places,
      (p) => Object.values(p).filter((t) => t.place === 'hidden').every((t) => t.asked === 'paused'));
    await until('a moment', places, (p) => p[pid].frames >= settle[pid].frames + 5);
    const before = await fox.evaluate(places);
    const off = Object.keys(before).filter((p) => before[p].place === 'hidden');
    expect(off).toHaveLength(2);
    await until('the shown tiles draw on', places, (p) => p[pid].frames >= before[pid].frames + 10);
    const after = await fox.evaluate(places);
    for (const p of off) expect(after[p].frames, `tile ${p} is not shown`).toBe(before[p].frames);
    expect(hidden.length).toBe(2);
  } finally {
    await fox.close();
  }
});
