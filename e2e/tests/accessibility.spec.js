// The screens for everyone: axe-core (npm, pinned) finds no serious or
// critical violation on the join screen, on the meeting screen with its
// panels and cards closed and open, and in a moderator's view with someone
// waiting to join; and a meeting can be joined, run and left with the
// keyboard alone.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { test, expect } = require('@playwright/test');
const { startWebServer, launchChromium, convene } = require('./harness');

let server, browser, dir, secretFile;

async function token(meeting, args) {
  const r = await convene(['token', '--secret-file', secretFile, '--meeting', meeting, ...args]);
  if (r.code !== 0) throw new Error(`convene token failed: ${r.stderr}`);
  return r.stdout.trim();
}

test.beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'convene-a11y-'));
  secretFile = path.join(dir, 'secret');
  fs.writeFileSync(secretFile, crypto.randomBytes(24).toString('hex'));
  server = await startWebServer(['--auth-secret-file', secretFile, '--waiting-room', 'wait-*']);
  browser = await launchChromium();
});

test.afterAll(async () => {
  await browser?.close();
  await server?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const AXE = require.resolve('axe-core/axe.min.js');

// The serious and critical violations axe finds on the page as it is now.
async function violations(page, where) {
  if (!(await page.evaluate(() => typeof window.axe !== 'undefined'))) {
    await page.addScriptTag({ path: AXE });
  }
  const found = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 4).map((n) => n.target.join(' ')) }));
  });
  console.log(`axe, ${where}: ${found.length} serious or critical`);
  return found;
}

test('no serious or critical accessibility violations, joining or in a meeting, as a guest or a moderator', async () => {
  const meeting = 'wait-a11y';
  const mo = await browser.context.newPage();
  const gus = await browser.context.newPage();
  try {
    const moToken = await token(meeting, ['--user', 'mo', '--name', 'Mo', '--grants', 'publish_video,subscribe,chat,moderate']);
    await mo.goto(`${server.base}/meeting/Mo/${meeting}#token=${moToken}`);
    await expect(mo.locator('#preview-status')).toContainText('ready');
    // axe finds what it should: an image without a text alternative.
    await mo.evaluate(() => { const i = document.createElement('img'); i.id = 'axe-probe'; i.src = '/nothing.png'; document.body.append(i); });
    expect((await violations(mo, 'a page with an unlabelled image')).map((v) => v.id)).toContain('image-alt');
    await mo.evaluate(() => document.getElementById('axe-probe').remove());
    expect(await violations(mo, 'the join screen')).toEqual([]);

    await mo.click('#connect');
    await expect(mo.locator('#meeting-name')).toHaveText(meeting);
    expect(await violations(mo, 'the meeting screen, panels closed')).toEqual([]);

    // Someone waits to join: the moderator sees them, with the panel open.
    const gusToken = await token(meeting, ['--user', 'gus', '--name', 'Gus', '--grants', 'publish_video,subscribe,chat']);
    await gus.goto(`${server.base}/meeting/Gus/${meeting}#token=${gusToken}`);
    await gus.click('#connect');
    await expect(mo.locator('#admissions li')).toContainText('Gus');
    await mo.click('#toggle-people');
    await expect(mo.locator('#moderation')).toBeVisible();
    expect(await violations(mo, 'the moderator view, someone waiting')).toEqual([]);
    await mo.locator('#admissions button[data-action=admit]').click();
    await expect(mo.locator('#participants li')).toHaveCount(2);
    await expect(gus.locator('#meeting-name')).toHaveText(meeting);
    expect(await violations(mo, 'the moderator view, two in the meeting')).toEqual([]);

    await mo.click('#toggle-chat');
    await expect(mo.locator('#chat')).toBeVisible();
    await mo.fill('#chat-input', 'hello');
    await mo.press('#chat-input', 'Enter');
    await expect(gus.locator('#messages')).toContainText('Mo: hello');
    expect(await violations(mo, 'the chat open')).toEqual([]);
    await mo.click('#toggle-info');
    await expect(mo.locator('#info')).toBeVisible();
    expect(await violations(mo, 'the meeting information open')).toEqual([]);
    await mo.click('#toggle-more');
    await expect(mo.locator('#more-menu')).toBeVisible();
    // A moderator's menu has Record (recording.1, PROTOCOL.md §5.10).
    await expect(mo.locator('#menu-record')).toHaveText('Record');
    expect(await violations(mo, 'the More menu open')).toEqual([]);
    await mo.click('#menu-help');
    await expect(mo.locator('#help')).toBeVisible();
    expect(await violations(mo, 'the shortcuts open')).toEqual([]);
    await mo.keyboard.press('Escape');
    await mo.click('#toggle-reactions');
    await mo.click('#raise-hand');
    await expect(gus.locator('#participants li', { hasText: 'Mo' })).toContainText('hand raised');
    await mo.click('#toggle-reactions');
    await expect(mo.locator('#reactions-menu')).toBeVisible();
    expect(await violations(mo, 'the reactions open, a hand raised')).toEqual([]);
    await mo.keyboard.press('Escape');
    await mo.locator('#tiles .tile', { hasText: 'Gus' }).locator('button.tile-menu').click();
    await expect(mo.locator('#tile-remove')).toBeVisible();
    expect(await violations(mo, "a tile's menu, as a moderator")).toEqual([]);
    expect(await violations(gus, "a guest's meeting screen")).toEqual([]);
  } finally {
    await mo.close();
    await gus.close();
  }
});

test('join, mute, turn the camera off, chat, open the participants and leave with the keyboard alone', async () => {
  const meeting = 'keys-only';
  const other = await browser.context.newPage();
  const page = await browser.context.newPage();
  try {
    const t = await token(meeting, ['--user', 'kim', '--name', 'Kim', '--grants', 'publish_audio,publish_video,subscribe,chat']);
    const o = await token(meeting, ['--user', 'ola', '--name', 'Ola', '--grants', 'publish_video,subscribe,chat']);
    await other.goto(`${server.base}/meeting/Ola/${meeting}#token=${o}`);
    await other.click('#connect');
    await expect(other.locator('#meeting-name')).toHaveText(meeting);

    await page.goto(`${server.base}/meeting/Kim/${meeting}#token=${t}`);
    await expect(page.locator('#preview-status')).toContainText('ready');
    // Tab to the name field and press Enter: the form joins.
    await page.keyboard.press('Tab');
    await expect(page.locator('#name')).toBeFocused();
    await page.keyboard.press('Enter');
    await expect(page.locator('#meeting-name')).toHaveText(meeting);
    await expect(other.locator('#participants li')).toHaveCount(2);

    // m mutes: the other side sees it; v turns the camera off.
    await page.keyboard.press('m');
    await expect(page.locator('#toggle-mic')).toHaveAttribute('aria-pressed', 'true');
    await expect(other.locator('#participants li', { hasText: 'Kim' })).toContainText('muted');
    await page.keyboard.press('v');
    await expect(page.locator('#toggle-camera')).toHaveAttribute('aria-pressed', 'true');
    await expect(page.locator('#toggle-camera')).toContainText('Start camera');
    await expect(page.locator('#self')).toHaveAttribute('data-muted', 'true');

    // c opens the chat with the cursor in its box; Enter sends.
    await page.keyboard.press('c');
    await expect(page.locator('#chat-input')).toBeFocused();
    await page.keyboard.type('typed, not clicked');
    await page.keyboard.press('Enter');
    await expect(other.locator('#messages')).toContainText('Kim: typed, not clicked');
    // Escape closes it, even from its box; p opens the participants.
    await page.keyboard.press('Escape');
    await expect(page.locator('#side')).toBeHidden();
    await page.keyboard.press('p');
    await expect(page.locator('#people')).toBeVisible();
    await expect(page.locator('#participants li')).toHaveCount(2);
    // ? lists the shortcuts.
    await page.keyboard.press('?');
    await expect(page.locator('#help')).toBeVisible();
    await expect(page.locator('#help')).toContainText('Mute or unmute the microphone');
    await page.keyboard.press('Escape');
    await expect(page.locator('#help')).toBeHidden();

    // Tab through the controls to Leave, every stop with a visible focus ring.
    let stops = 0;
    for (; stops < 60; stops++) {
      await page.keyboard.press('Tab');
      const f = await page.evaluate(() => {
        const e = document.activeElement;
        const s = getComputedStyle(e);
        return { id: e.id, ring: s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2 };
      });
      expect(f.ring, `focus on #${f.id || '(no id)'} is visible`).toBe(true);
      if (f.id === 'leave') break;
    }
    expect(stops, 'Leave is reachable with Tab').toBeLessThan(60);
    await page.keyboard.press('Enter');
    await expect(page.locator('#status')).toContainText('left');
    await expect(other.locator('#participants li')).toHaveCount(1);
  } finally {
    await page.close();
    await other.close();
  }
});
