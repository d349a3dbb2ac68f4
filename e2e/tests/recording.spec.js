// Recording (PROTOCOL.md §5.10) from the browser client: a moderator's
// More menu has Record (a guest's has not), and on a server without a
// recorder it says why and no badge shows.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { test, expect } = require('@playwright/test');
const { startWebServer, launchChromium, convene } = require('./harness');

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
