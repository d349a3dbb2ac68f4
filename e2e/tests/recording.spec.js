// Recording (PROTOCOL.md §5.10) from the browser client: a moderator's
// More menu has Record (a guest's has not); on a server without a recorder
// it says why and no badge shows; on a server run with --recorder-command
// (the real `convene record`) and --recordings-dir, the moderator starts a
// recorder, another page sees the "Recording" badge and the recorder in the
// participant list (with no tile), the moderator stops it, the badge goes,
// and the recording is on disk.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { test, expect } = require('@playwright/test');
const { startWebServer, launchChromium, convene } = require('./harness');

const ROOT = path.resolve(__dirname, '..', '..');
const BIN_DIR = process.env.CONVENE_BIN_DIR
  || path.join(process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target'), 'debug');

let browser, dir, secretFile;

async function token(meeting, args) {
  const r = await convene(['token', '--secret-file', secretFile, '--meeting', meeting, ...args]);
  if (r.code !== 0) throw new Error(`convene token failed: ${r.stderr}`);
  return r.stdout.trim();
}

test.beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'convene-recording-'));
  secretFile = path.join(dir, 'secret');
  fs.writeFileSync(secretFile, crypto.randomBytes(24).toString('hex'));
  browser = await launchChromium();
});

test.afterAll(async () => {
  await browser?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const AXE = require.resolve('axe-core/axe.min.js');

// The serious and critical accessibility violations axe finds on the page now.
async function violations(page, where) {
  await page.addScriptTag({ path: AXE });
  const found = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 4).map((n) => n.target.join(' ')) }));
  });
  console.log(`axe, ${where}: ${found.length} serious or critical`);
  return found;
}

// A moderator's page and a guest's, both in `meeting`.
async function twoPages(server, meeting) {
  const moToken = await token(meeting, ['--user', 'mo', '--name', 'Mo', '--grants', 'publish_video,publish_audio,subscribe,chat,moderate']);
  const gusToken = await token(meeting, ['--user', 'gus', '--name', 'Gus', '--grants', 'publish_video,publish_audio,subscribe,chat']);
  const mo = await browser.context.newPage();
  const gus = await browser.context.newPage();
  await mo.goto(`${server.base}/meeting/Mo/${meeting}#token=${moToken}`);
  await mo.click('#connect');
  await expect(mo.locator('#meeting-name')).toHaveText(meeting);
  await gus.goto(`${server.base}/meeting/Gus/${meeting}#token=${gusToken}`);
  await gus.click('#connect');
  await expect(gus.locator('#meeting-name')).toHaveText(meeting);
  await expect(mo.locator('#participants li')).toHaveCount(2);
  return { mo, gus };
}

test('on a server without a recorder, Record says why and nothing is recorded', async () => {
  const server = await startWebServer(['--auth-secret-file', secretFile]);
  const { mo, gus } = await twoPages(server, 'rec-none');
  try {
    await expect(gus.locator('#recording')).toBeHidden();
    // A guest has no Record.
    await gus.click('#toggle-more');
    await expect(gus.locator('#more-menu')).toBeVisible();
    await expect(gus.locator('#menu-record')).toHaveCount(0);
    await mo.click('#toggle-more');
    await expect(mo.locator('#menu-record')).toHaveText('Record');
    await mo.click('#menu-record');
    await expect(mo.locator('#events')).toHaveAttribute('data-last', /Recording: .*no recorder configured/);
    await expect(mo.locator('#recording')).toBeHidden();
    await expect(gus.locator('#recording')).toBeHidden();
  } finally {
    await mo.close();
    await gus.close();
    await server.stop();
  }
});

test('a moderator starts and stops a recording: the badge shows on another page and goes, and the files are on disk', async () => {
  const convene = path.join(BIN_DIR, 'convene');
  const recordings = path.join(dir, 'recordings');
  const server = await startWebServer([
    '--auth-secret-file', secretFile,
    '--recorder-command', convene,
    '--recordings-dir', recordings,
  ]);
  const meeting = 'rec-real';
  const { mo, gus } = await twoPages(server, meeting);
  try {
    await expect(gus.locator('#recording')).toBeHidden();
    await mo.click('#toggle-more');
    await expect(mo.locator('#menu-record')).toHaveText('Record');
    await mo.click('#menu-record');
    // The recorder joins: everyone sees the badge, the list marks it, and it has no tile.
    await expect(gus.locator('#recording')).toBeVisible({ timeout: 30_000 });
    await expect(gus.locator('#recording')).toHaveText('Recording');
    await expect(gus.locator('#recording')).toHaveAttribute('role', 'status');
    await expect(mo.locator('#recording')).toBeVisible();
    await gus.click('#toggle-people');
    await expect(gus.locator('#participants li')).toHaveCount(3);
    await expect(gus.locator('#participants li .tag.recorder')).toHaveCount(1);
    const recorderId = await gus.locator('#participants li', { has: gus.locator('.tag.recorder') }).getAttribute('data-pid');
    await expect(gus.locator(`#tiles .tile[data-pid="${recorderId}"]`)).toHaveCount(0);
    expect(await violations(gus, 'the Recording badge and the recorder in the list')).toEqual([]);
    // Pictures and sound reach the recorder for a moment (the pages publish
    // the fake camera and microphone), then the moderator stops it.
    const dirOf = path.join(recordings, meeting);
    await expect.poll(() => fs.existsSync(dirOf) && fs.readdirSync(dirOf).length, { timeout: 30_000 }).toBe(1);
    const out = path.join(dirOf, fs.readdirSync(dirOf)[0]);
    expect(path.basename(out)).toMatch(/^\d{8}T\d{6}Z$/);
    const mp4 = (suffix) => fs.readdirSync(out).some((f) => f.endsWith(suffix) && fs.statSync(path.join(out, f)).size > 4096);
    await expect.poll(() => mp4('-video.mp4') && mp4('-audio.mp4'), { timeout: 30_000 }).toBe(true);
    await mo.click('#toggle-more');
    await expect(mo.locator('#menu-record')).toHaveText('Stop recording');
    expect(await violations(mo, "a moderator's More menu while recording")).toEqual([]);
    await mo.click('#menu-record');
    await expect(gus.locator('#recording')).toBeHidden({ timeout: 30_000 });
    await expect(mo.locator('#recording')).toBeHidden();
    await expect(gus.locator('#participants li')).toHaveCount(2);
    // The recorder finished its files on SIGTERM: their list is written last.
    await expect.poll(() => fs.existsSync(path.join(out, 'recording.json')), { timeout: 30_000 }).toBe(true);
    const listed = JSON.parse(fs.readFileSync(path.join(out, 'recording.json'), 'utf8'));
    console.log(`recorded ${out}: ${listed.files.map((f) => `${path.basename(f.path)} (${f.samples} samples)`).join(', ')}`);
    expect(listed.files.filter((f) => f.display_name === 'Mo' || f.display_name === 'Gus').length).toBeGreaterThanOrEqual(2);
  } finally {
    await mo.close();
    await gus.close();
    await server.stop();
  }
});
