// The meeting screen as people see it: the stage fills the window for any
// number of participants (a Chromium page and `convene stream` test
// patterns), no tile overlaps another or is too small to see, and the
// screenshots at a phone's, a tablet's and a laptop's size are kept as test
// artifacts for a person to look at.
const { test, expect } = require('@playwright/test');
const { startWebServer, launchChromium, convene, spawnConvene } = require('./harness');

let server, browser;
const room = 'team-standup';
const streams = [];

test.beforeAll(async () => {
  server = await startWebServer();
  browser = await launchChromium();
});

test.afterAll(async () => {
  for (const s of streams) s.kill('SIGINT');
  await browser?.close();
  await server?.stop();
});

const SIZES = [[360, 740], [768, 1024], [1440, 900]];

// Joins `meeting` as `name` from `page`, and waits until the page is in it.
async function join(page, name, meeting) {
  await page.goto(`${server.base}/meeting/${name}/${meeting}`);
  await page.click('#connect');
  await expect(page.locator('#meeting-name')).toHaveText(meeting);
}

// Sound frames `page` has decoded from participant `pid` (#app[data-audio-by]).
function heardFrom(page, pid) {
  return page.evaluate((p) => {
    const by = (document.querySelector('#app')?.getAttribute('data-audio-by') || '').split(' ');
    const e = by.find((x) => x.startsWith(`${p}=`));
    return e ? Number(e.split('=')[1]) : 0;
  }, pid);
}

// The stage's box and every shown tile's, from the page.
async function geometry(page) {
  return page.evaluate(() => {
    const box = (e) => { const r = e.getBoundingClientRect(); return { x: r.x, y: r.y, w: r.width, h: r.height }; };
    const stage = box(document.getElementById('stage'));
    const tiles = [...document.querySelectorAll('#tiles > figure')].filter((f) => !f.hidden).map(box);
    return { stage, tiles };
  });
}

function overlaps(a, b) {
  return a.x < b.x + b.w - 1 && b.x < a.x + a.w - 1 && a.y < b.y + b.h - 1 && b.y < a.y + a.h - 1;
}

test('the stage fills the window for 1, 2, 3, 4, 6, 9 and 16 participants', async ({}, testInfo) => {
  test.setTimeout(240_000);
  const page = await browser.context.newPage();
  await page.setViewportSize({ width: 1440, height: 900 });
  const dir = testInfo.outputDir;
  try {
    await page.goto(`${server.base}/meeting/Maya/${room}`);
    await page.click('#connect');
    await expect(page.locator('#meeting-name')).toHaveText(room);
    // Words people use: no backticks, no participant numbers.
    await expect(page.locator('#meeting-screen')).not.toContainText('`');
    await expect(page.locator('#meeting-screen')).not.toContainText('participant ');
    let others = 0;
    for (const n of [1, 2, 3, 4, 6, 9, 16]) {
      while (others < n - 1) {
        others += 1;
        streams.push(spawnConvene(['stream', '--server', server.base, '--meeting-id', room,
          '--user-id', `Guest ${others}`, '--source', 'test-pattern', '--resolution', '320x180', '--fps', '5',
          '--audio', 'none', '--duration', '230']));
      }
      await expect(page.locator('#count')).toHaveText(`${n} here`, { timeout: 30_000 });
      await expect(page.locator('#tiles .tile')).toHaveCount(n - 1, { timeout: 30_000 });
      for (const [w, h] of SIZES) {
        await page.setViewportSize({ width: w, height: h });
        // The layout follows the window: wait until it has settled (the
        // same in two readings) with every tile inside the stage.
        let last = '';
        await expect.poll(async () => {
          const g = await geometry(page);
          const inside = g.tiles.length > 0 && g.tiles.every((t) => t.x >= g.stage.x - 1 && t.x + t.w <= g.stage.x + g.stage.w + 1
            && t.y >= g.stage.y - 1 && t.y + t.h <= g.stage.y + g.stage.h + 1);
          const now = JSON.stringify(g);
          const settled = now === last;
          last = now;
          return inside && settled;
        }, { message: `${n} at ${w}x${h}: every tile inside the stage, settled`, timeout: 15_000 }).toBe(true);
        const g = await geometry(page);
        for (let i = 0; i < g.tiles.length; i++) {
          expect(g.tiles[i].w, `${n} at ${w}x${h}: tile ${i} is legible`).toBeGreaterThanOrEqual(160);
          for (let j = i + 1; j < g.tiles.length; j++) {
            expect(overlaps(g.tiles[i], g.tiles[j]), `${n} at ${w}x${h}: tiles ${i} and ${j} overlap`).toBe(false);
          }
        }
        if (w === 1440 && n >= 2 && n <= 9) {
          // Every participant on one page, and together most of the stage.
          expect(g.tiles).toHaveLength(n);
          const covered = g.tiles.reduce((s, t) => s + t.w * t.h, 0) / (g.stage.w * g.stage.h);
          console.log(`${n} participants at 1440x900: tiles cover ${(covered * 100).toFixed(0)} % of the stage`);
          expect(covered, `${n} participants at 1440x900`).toBeGreaterThanOrEqual(0.6);
        }
        // Nothing runs off the side.
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        expect(overflow, `${n} at ${w}x${h}: the page is wider than the window`).toBeLessThanOrEqual(0);
        // The bars showing (they fade on a large stage while nothing moves).
        await page.mouse.move(w / 2, h / 2);
        await page.screenshot({ path: `${dir}/meeting-${n}-${w}x${h}.png`, animations: 'disabled' });
      }
      await page.setViewportSize({ width: 1440, height: 900 });
    }
    console.log(`meeting screenshots: ${dir}`);
  } finally {
    await page.close();
  }
});

test('joining with the microphone and camera off: the others see both off until turned on', async () => {
  const meeting = 'quiet-start';
  const rae = await browser.context.newPage();
  const sol = await browser.context.newPage();
  try {
    await rae.goto(`${server.base}/meeting/Rae/${meeting}`);
    await expect(rae.locator('#preview-status')).toContainText('ready');
    await rae.check('#join-mic-off');
    await rae.check('#join-camera-off');
    await rae.click('#connect');
    await expect(rae.locator('#toggle-mic')).toContainText('Unmute');
    await expect(rae.locator('#toggle-camera')).toContainText('Start camera');
    await sol.goto(`${server.base}/meeting/Sol/${meeting}`);
    await sol.click('#connect');
    const raeRow = sol.locator('#participants li', { hasText: 'Rae' });
    await expect(raeRow).toContainText('muted');
    const raeTile = sol.locator('#tiles .tile', { hasText: 'Rae' });
    await expect(raeTile).toHaveAttribute('data-muted', 'true');
    // Turned on from the bar: the others hear and see Rae.
    await rae.click('#toggle-mic');
    await rae.click('#toggle-camera');
    await expect(raeRow).not.toContainText('muted');
    await expect(raeTile).toHaveAttribute('data-muted', 'false');
    await expect.poll(() => raeTile.getAttribute('data-frames').then(Number)).toBeGreaterThan(10);
  } finally {
    await rae.close();
    await sol.close();
  }
});

test('a raised hand and a reaction reach the others: pages, and convene receive', async () => {
  const meeting = 'hands-up';
  const ann = await browser.context.newPage();
  const ben = await browser.context.newPage();
  try {
    await join(ann, 'Ann', meeting);
    await join(ben, 'Ben', meeting);
    await expect(ben.locator('#participants li')).toHaveCount(2);
    // Ann raises her hand from the reactions palette.
    await ann.click('#toggle-reactions');
    await ann.click('#raise-hand');
    await expect(ann.locator('#toggle-reactions')).toContainText('Hand raised');
    const annRow = ben.locator('#participants li', { hasText: 'Ann' });
    await expect(annRow).toContainText('hand raised');
    await expect(ben.locator('#tiles .tile', { hasText: 'Ann' })).toHaveAttribute('data-hand', 'true');
    await expect(ben.locator('#events')).toHaveAttribute('data-last', '✋ Ann raised a hand');

    // A native client joining now learns of the hand from Joined, and of a
    // reaction sent while it is there.
    const receiving = convene(['receive', '--server', server.base, '--meeting-id', meeting,
      '--user-id', 'watcher', '--duration', '6', '--json']);
    await expect(ben.locator('#participants li')).toHaveCount(3, { timeout: 30_000 });
    await ann.click('#toggle-reactions');
    await ann.click('#reactions-menu button[data-kind="2"]');
    await expect(ben.locator('#events')).toHaveAttribute('data-last', '👏 Ann');
    await expect(ann.locator('#events')).toHaveAttribute('data-last', '👏 Ann');
    const r = await receiving;
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.hands_raised, r.stdout).toEqual(['Ann']);
    expect(report.reactions, r.stdout).toEqual([{ from: 'Ann', kind: 'clap' }]);

    // h lowers it again.
    await ann.keyboard.press('h');
    await expect(annRow).not.toContainText('hand raised');
    await expect(ann.locator('#toggle-reactions')).toContainText('React');
  } finally {
    await ann.close();
    await ben.close();
  }
});

test('a shared screen takes the stage, and the grid is one click away', async () => {
  const meeting = 'screen-first';
  const ann = await browser.context.newPage();
  const ben = await browser.context.newPage();
  try {
    await join(ann, 'Ann', meeting);
    await join(ben, 'Ben', meeting);
    await expect(ben.locator('#tiles .tile')).toHaveCount(1);
    await expect(ben.locator('#tiles')).toHaveAttribute('data-mode', 'grid');
    await ann.click('#toggle-screen');
    // The sharer is told, with a way to stop.
    await expect(ann.locator('#sharing')).toContainText('You are sharing your screen');
    const screen = ben.locator('#tiles .tile[data-kind="screen"]');
    await expect(screen).toHaveCount(1);
    await expect(ben.locator('#tiles')).toHaveAttribute('data-mode', 'speaker');
    await expect(screen).toHaveAttribute('data-place', 'main');
    await expect.poll(() => screen.getAttribute('data-frames').then(Number)).toBeGreaterThan(5);
    // Back to the grid: the screen stays first.
    await ben.click('#toggle-layout');
    await expect(ben.locator('#tiles')).toHaveAttribute('data-mode', 'grid');
    await expect(screen).toHaveAttribute('data-place', 'grid');
    await ann.click('#stop-sharing');
    await expect(screen).toHaveCount(0);
    await expect(ann.locator('#sharing')).toHaveCount(0);
  } finally {
    await ann.close();
    await ben.close();
  }
});

test("a tile's menu: mute for me stops that participant's sound here only", async () => {
  const meeting = 'tile-menu';
  const ann = await browser.context.newPage();
  const ben = await browser.context.newPage();
  try {
    await join(ann, 'Ann', meeting);
    await join(ben, 'Ben', meeting);
    const annTile = ben.locator('#tiles .tile', { hasText: 'Ann' });
    await expect(annTile).toHaveCount(1);
    const annPid = await annTile.getAttribute('data-pid');
    const heard = () => heardFrom(ben, annPid);
    const pictures = () => annTile.getAttribute('data-frames').then(Number);
    await expect.poll(heard, { message: "Ann's sound plays" }).toBeGreaterThan(25);
    // The participant list says how Ann's connection looks from here, in words.
    await expect(ben.locator('#participants li', { hasText: 'Ann' })).toContainText(/(good|fair|poor) connection/);
    await expect(annTile).toHaveAttribute('title', /Ann: (good|fair|poor) connection/);
    await annTile.locator('button.tile-menu').click();
    await expect(ben.locator('#tile-menu')).toBeVisible();
    await ben.click('#tile-mute-for-me');
    await expect(ben.locator('#tile-menu')).toBeHidden();
    // What was on its way is played (up to a second of it, on a busy
    // machine); then nothing while three seconds of pictures go on, which
    // unmuted would be some 150 frames of sound.
    const settled = (await heard()) + 50;
    const from = await pictures();
    await expect.poll(pictures, { message: "Ann's picture goes on" }).toBeGreaterThan(from + 90);
    expect(await heard(), 'no sound of Ann played while muted for me').toBeLessThanOrEqual(settled);
    // Ann's own page and the server know nothing of it: she is not muted.
    await expect(ann.locator('#toggle-mic')).toHaveAttribute('aria-pressed', 'false');
    await annTile.locator('button.tile-menu').click();
    await expect(ben.locator('#tile-mute-for-me')).toHaveText('Unmute for me');
    await ben.click('#tile-mute-for-me');
    const back = await heard();
    await expect.poll(heard, { message: "Ann's sound plays again" }).toBeGreaterThan(back + 25);
  } finally {
    await ann.close();
    await ben.close();
  }
});

test('on a large stage the bars fade while nothing moves, and come back at a touch', async () => {
  const page = await browser.context.newPage();
  await page.setViewportSize({ width: 1440, height: 900 });
  try {
    await page.goto(`${server.base}/meeting/Ida/quiet-bars`);
    await page.click('#connect');
    await expect(page.locator('#meeting-name')).toHaveText('quiet-bars');
    const screen = page.locator('#meeting-screen');
    await expect(screen).toHaveAttribute('data-idle', 'true', { timeout: 20_000 });
    await expect.poll(() => page.locator('#controls').evaluate((e) => getComputedStyle(e).opacity)).toBe('0');
    await page.mouse.move(700, 400);
    await expect(screen).toHaveAttribute('data-idle', 'false');
    await expect.poll(() => page.locator('#controls').evaluate((e) => getComputedStyle(e).opacity)).toBe('1');
  } finally {
    await page.close();
  }
});

test('the join screen shows the microphone level before joining', async () => {
  const page = await browser.context.newPage();
  try {
    await page.goto(`${server.base}/meeting/Mel/level-check`);
    await expect(page.locator('#preview-status')).toContainText('ready');
    // Browsers start sound after a gesture: a click in the name field.
    await page.click('#name');
    const level = () => page.locator('#mic-level').evaluate((m) => m.value);
    await expect.poll(level, { message: 'the fake microphone moves the meter', timeout: 20_000 }).toBeGreaterThan(0.2);
    await page.click('#connect');
    await expect(page.locator('#meeting-name')).toHaveText('level-check');
    await expect(page.locator('#mic-level')).toHaveCount(0);
  } finally {
    await page.close();
  }
});

test('camera and microphone switched mid-meeting: the others keep seeing and hearing, nobody leaves', async () => {
  const meeting = 'switch-devices';
  const ann = await browser.context.newPage();
  const ben = await browser.context.newPage();
  try {
    await join(ann, 'Ann', meeting);
    await join(ben, 'Ben', meeting);
    const annTile = ben.locator('#tiles .tile', { hasText: 'Ann' });
    await expect(annTile).toHaveCount(1);
    const annPid = await annTile.getAttribute('data-pid');
    const heard = () => heardFrom(ben, annPid);
    const pictures = () => annTile.getAttribute('data-frames').then(Number);
    await expect.poll(pictures).toBeGreaterThan(10);
    await expect.poll(heard).toBeGreaterThan(25);

    await ann.click('#toggle-more');
    await ann.click('#menu-devices');
    await expect(ann.locator('#devices-card')).toBeVisible();
    // Another microphone where the browser lists one (Chromium's fake
    // devices list several), the camera there is.
    const mics = await ann.locator('#meeting-mic-select option').evaluateAll((os) => os.map((o) => o.value));
    expect(mics.length).toBeGreaterThan(0);
    await ann.selectOption('#meeting-mic-select', mics[mics.length - 1]);
    await expect(ann.locator('#app')).toHaveAttribute('data-device-switches', '1');
    // The old devices were stopped: pictures and sound that go on come
    // from the new ones, through the same tracks.
    const [p0, h0] = [await pictures(), await heard()];
    await expect.poll(pictures, { message: "Ann's picture after the switch" }).toBeGreaterThan(p0 + 30);
    await expect.poll(heard, { message: "Ann's sound after the switch" }).toBeGreaterThan(h0 + 50);
    await expect(ben.locator('#participants li')).toHaveCount(2);
    await ann.keyboard.press('Escape');
    await expect(ann.locator('#devices-card')).toBeHidden();
  } finally {
    await ann.close();
    await ben.close();
  }
});

test('a refused camera and microphone: the join screen says what to do, and joining without them works', async () => {
  const page = await browser.context.newPage();
  try {
    // The browser refuses, as it does when the person said no.
    await page.addInitScript(() => {
      navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));
    });
    await page.goto(`${server.base}/meeting/Noor/no-devices`);
    await expect(page.locator('#preview-status')).toContainText('not allowed to use the camera and microphone');
    await expect(page.locator('#preview-status')).toContainText('join without them');
    await page.click('#connect');
    await expect(page.locator('#meeting-name')).toHaveText('no-devices');
    await expect(page.locator('#participants li')).toHaveCount(1);
  } finally {
    await page.close();
  }
});
