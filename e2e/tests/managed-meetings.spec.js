// Managed meetings in the browser: a meeting created through the admin API
// (`convene admin meeting create`) with a waiting room, a limit of two and
// end-to-end encryption required, on a server that serves only created
// meetings. The moderator walks in, the guest waits and is admitted, both
// pages encrypt without being asked (the link says nothing about E2EE), a
// third page is refused, and after a restart on the same --data-dir the
// meeting still has its waiting room.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { test, expect } = require('@playwright/test');
const { freePort, startWebServer, launchChromium, convene } = require('./harness');

let server, browser, dir, secretFile, adminToken, adminUrl;

async function token(args, meeting = 'clinic-7') {
  const r = await convene(['token', '--secret-file', secretFile, '--meeting', meeting, ...args]);
  if (r.code !== 0) throw new Error(`convene token failed: ${r.stderr}`);
  return r.stdout.trim();
}

async function admin(args) {
  const r = await convene(['admin', '--url', adminUrl, '--token', adminToken, '--json', ...args]);
  if (r.code !== 0) throw new Error(`convene admin ${args.join(' ')} failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

async function join(name, tok, meeting = 'clinic-7') {
  const page = await browser.context.newPage();
  await page.goto(`${server.base}/meeting/${name}/${meeting}#token=${tok}`);
  await page.click('#connect');
  return page;
}

test.beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'convene-managed-'));
  secretFile = path.join(dir, 'secret');
  fs.writeFileSync(secretFile, crypto.randomBytes(24).toString('hex'));
  adminToken = crypto.randomBytes(16).toString('hex');
  const adminFile = path.join(dir, 'admin-token');
  fs.writeFileSync(adminFile, adminToken);
  const adminPort = await freePort();
  adminUrl = `http://127.0.0.1:${adminPort}`;
  server = await startWebServer([
    '--auth-secret-file', secretFile,
    '--admin-token-file', adminFile,
    '--admin-listen', `127.0.0.1:${adminPort}`,
    '--ad-hoc-meetings=false',
    '--data-dir', path.join(dir, 'data'),
  ]);
  browser = await launchChromium();
  const created = await admin(['meeting', 'create', 'clinic-7',
    '--waiting-room', '--max-participants', '2', '--e2ee-required']);
  expect(created.e2ee_required).toBe(true);
});

test.afterAll(async () => {
  await browser?.close();
  await server?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('a created meeting holds its waiting room, limit and encryption for browser participants, across a restart', async () => {
  const mo = await join('Mo', await token(['--user', 'mo', '--name', 'Mo',
    '--grants', 'publish_video,publish_audio,subscribe,chat,moderate']));
  await expect(mo.locator('#participants li')).toHaveCount(1);
  // Nobody asked for encryption in the link: the meeting requires it.
  await expect(mo.locator('#app')).toHaveAttribute('data-e2ee', 'on');
  await expect(mo.locator('#e2ee-state')).toContainText('End-to-end encrypted');

  const guestToken = await token(['--user', 'gus', '--name', 'Gus',
    '--grants', 'publish_video,publish_audio,subscribe,chat']);
  const gus = await join('Gus', guestToken);
  await expect(gus.locator('#status')).toHaveText(/Waiting for a moderator/);
  await mo.click('#toggle-people');
  const waiting = mo.locator('#admissions li');
  await expect(waiting).toContainText('Gus');
  await waiting.locator('button[data-action=admit]').click();
  await expect(gus.locator('#participants li')).toHaveCount(2);
  await expect(gus.locator('#app')).toHaveAttribute('data-e2ee', 'on');
  // Both encrypt, so the pictures get through and decrypt.
  await expect.poll(() => mo.locator('#tiles .tile').getAttribute('data-frames').then(Number),
    { timeout: 30_000 }).toBeGreaterThan(5);
  await expect.poll(() => mo.locator('#app').getAttribute('data-e2ee-decrypted').then(Number),
    { timeout: 30_000 }).toBeGreaterThan(0);
  expect(Number(await mo.locator('#app').getAttribute('data-e2ee-rejected'))).toBe(0);

  // The limit of two: a third page is refused with ROOM_FULL (a moderator
  // skips the waiting room, so the limit is what stops it).
  const third = await join('Mo2', await token(['--user', 'mo2', '--name', 'Mo2',
    '--grants', 'subscribe,moderate']));
  await expect(third.locator('#status')).toContainText('maximum of 2 participants');

  // A meeting nobody created is refused on this server.
  const stray = await join('Gus', await token(['--user', 'gus', '--grants', 'subscribe'], 'clinic-8'), 'clinic-8');
  await expect(stray.locator('#status')).toContainText('not created');

  // Restarted on the same --data-dir: the meeting is still there, with its waiting room.
  for (const p of [mo, gus, third, stray]) await p.close();
  await server.stop();
  server = await server.restart();
  const again = await join('Gus', guestToken);
  await expect(again.locator('#status')).toHaveText(/Waiting for a moderator/);
  const kept = await admin(['meeting', 'get', 'clinic-7']);
  expect(kept.waiting_room).toBe(true);
  expect(kept.max_participants).toBe(2);
  await again.close();
});
