// The meeting screen in Firefox (Debian's firefox-esr through puppeteer-core;
// its pages open at 1440x900, as this WebDriver BiDi cannot resize a page
// that runs): with four participants the tiles fill the stage without
// overlapping; axe-core finds no serious or critical violation with the
// panels closed and open; and from the keyboard Firefox raises a hand (a
// Chromium page sees it), chats, mutes, turns the camera off, opens the
// participants and leaves; a reaction from its palette reaches Chromium.
const { test, expect } = require('@playwright/test');
const { startWebServer, launchChromium, launchFirefox, spawnConvene } = require('./harness');

let server, chromium, firefox;
const room = 'fox-screen';
const streams = [];

test.beforeAll(async () => {
  server = await startWebServer();
  chromium = await launchChromium();
  firefox = await launchFirefox({ viewport: { width: 1440, height: 900 } });
  for (const n of [1, 2]) {
    streams.push(spawnConvene(['stream', '--server', server.base, '--meeting-id', room,
      '--user-id', `Guest ${n}`, '--source', 'test-pattern', '--resolution', '320x180', '--fps', '5',
      '--audio', 'none', '--duration', '120']));
  }
});

test.afterAll(async () => {
  for (const s of streams) s.kill('SIGINT');
  await firefox?.close();
  await chromium?.close();
  await server?.stop();
});

// Polls a Firefox page until a condition holds (harness: `firefox.until`).
const until = (...args) => firefox.until(...args);

function geometry() {
  const box = (e) => { const r = e.getBoundingClientRect(); return { x: r.x, y: r.y, w: r.width, h: r.height }; };
  const stage = box(document.getElementById('stage'));
  const tiles = [...document.querySelectorAll('#tiles > figure')].filter((f) => !f.hidden).map(box);
  return { stage, tiles };
}

async function axe(page, where) {
  await page.addScriptTag({ path: require.resolve('axe-core/axe.min.js') });
  const found = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => ({ id: v.id, nodes: v.nodes.slice(0, 4).map((n) => n.target.join(' ')) }));
  });
  console.log(`axe in Firefox, ${where}: ${found.length} serious or critical`);
  return found;
}

test('Firefox: the stage fills the window, no serious accessibility violation, and the keyboard runs the meeting', async ({}, testInfo) => {
  const chrome = await chromium.context.newPage();
  const fox = await firefox.newPage();
  try {
    await chrome.goto(`${server.base}/meeting/Cleo/${room}`);
    await chrome.click('#connect');
    await fox.goto(`${server.base}/meeting/Fox/${room}`);
    await until(fox, 'camera preview', () => document.getElementById('preview-status')?.textContent, (t) => /ready/.test(t || ''));
    expect(await axe(fox, 'the join screen')).toEqual([]);
    await fox.click('#connect');
    await until(fox, 'four here', () => document.getElementById('count')?.textContent, (t) => t === '4 here');
    // Four tiles inside the stage, and settled (the same in two readings).
    let last = '';
    const g = await until(fox, 'four tiles inside the stage, settled', geometry, (v) => {
      const now = JSON.stringify(v);
      const settled = now === last;
      last = now;
      return settled && v.tiles.length === 4
        && v.tiles.every((t) => t.x >= v.stage.x - 1 && t.x + t.w <= v.stage.x + v.stage.w + 1
          && t.y >= v.stage.y - 1 && t.y + t.h <= v.stage.y + v.stage.h + 1);
    });
    const covered = g.tiles.reduce((s, t) => s + t.w * t.h, 0) / (g.stage.w * g.stage.h);
    const size = await fox.evaluate(() => `${window.innerWidth}x${window.innerHeight}`);
    console.log(`Firefox, 4 participants at ${size}: tiles cover ${(covered * 100).toFixed(0)} % of the stage`);
    expect(covered).toBeGreaterThanOrEqual(0.6);
    for (let i = 0; i < g.tiles.length; i++) {
      expect(g.tiles[i].w).toBeGreaterThanOrEqual(160);
      for (let j = i + 1; j < g.tiles.length; j++) {
        const [a, b] = [g.tiles[i], g.tiles[j]];
        const overlap = a.x < b.x + b.w - 1 && b.x < a.x + a.w - 1 && a.y < b.y + b.h - 1 && b.y < a.y + a.h - 1;
        expect(overlap, `tiles ${i} and ${j} overlap`).toBe(false);
      }
    }
    expect(await axe(fox, 'the meeting screen')).toEqual([]);

    // The keyboard: h raises the hand, which Chromium sees.
    await fox.keyboard.press('h');
    await expect(chrome.locator('#participants li', { hasText: 'Fox' })).toContainText('hand raised');
    // c opens the chat with the cursor in its box.
    await fox.keyboard.press('c');
    await until(fox, 'the chat box focused', () => document.activeElement?.id, (id) => id === 'chat-input');
    await fox.keyboard.type('from Firefox');
    await fox.keyboard.press('Enter');
    await expect(chrome.locator('#messages')).toContainText('Fox: from Firefox');
    expect(await axe(fox, 'the chat open')).toEqual([]);
    await fox.keyboard.press('Escape');
    await until(fox, 'the chat closed', () => document.getElementById('side')?.hidden, (h) => h === true);
    // m mutes, v turns the camera off.
    await fox.keyboard.press('m');
    await expect(chrome.locator('#participants li', { hasText: 'Fox' })).toContainText('muted');
    await fox.keyboard.press('v');
    await expect(chrome.locator('#tiles .tile', { hasText: 'Fox' })).toHaveAttribute('data-muted', 'true');
    // A reaction from the palette reaches Chromium.
    await fox.click('#toggle-reactions');
    await fox.click('#reactions-menu button[data-kind="1"]');
    await expect(chrome.locator('#events')).toHaveAttribute('data-last', '👍 Fox');
    // p opens the participants; a screenshot of it.
    await fox.keyboard.press('p');
    await until(fox, 'the participants open', () => document.getElementById('people')?.hidden, (h) => h === false);
    await fox.screenshot({ path: testInfo.outputPath('firefox-4-1440x900-participants.png') });
    // Tab to Leave, and Enter: Fox leaves.
    let focused = '';
    for (let i = 0; i < 60 && focused !== 'leave'; i++) {
      await fox.keyboard.press('Tab');
      focused = await fox.evaluate(() => document.activeElement?.id || '');
    }
    expect(focused, 'Leave is reachable with Tab in Firefox').toBe('leave');
    await fox.keyboard.press('Enter');
    await expect(chrome.locator('#participants li')).toHaveCount(3);
  } finally {
    await fox.close();
    await chrome.close();
  }
});
