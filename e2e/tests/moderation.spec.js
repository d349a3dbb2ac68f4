// The browser client against a server that requires tokens and gives
// `lobby*` meetings a waiting room: tokens from the link's fragment or from
// the sign-in service the server names, the name others see is the token's,
// and a moderator admits, denies, asks to mute, locks, removes and ends the
// meeting from the page.
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');
const { test, expect } = require('@playwright/test');
const { startWebServer, launchChromium, convene } = require('./harness');

let server, browser, login, dir, secretFile;

async function token(args) {
  const r = await convene(['token', '--secret-file', secretFile, '--meeting', 'lobby-1', ...args]);
  if (r.code !== 0) throw new Error(`convene token failed: ${r.stderr}`);
  return r.stdout.trim();
}

test.beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'convene-moderation-'));
  secretFile = path.join(dir, 'secret');
  fs.writeFileSync(secretFile, crypto.randomBytes(24).toString('hex'));
  // The sign-in service: a token for whoever has the session cookie, 401 otherwise.
  const lee = await token(['--user', 'lee', '--name', 'Lee', '--grants', 'subscribe,chat']);
  login = http.createServer((req, res) => {
    const origin = req.headers.origin || '*';
    const headers = {
      'access-control-allow-origin': origin,
      'access-control-allow-credentials': 'true',
      'content-type': 'application/json',
    };
    const url = new URL(req.url, 'http://x');
    const signedIn = /(^|;\s*)session=ok/.test(req.headers.cookie || '');
    if (url.pathname !== '/token' || url.searchParams.get('meeting') !== 'lobby-1' || !signedIn) {
      res.writeHead(401, headers);
      res.end('{"error":"sign in"}');
      return;
    }
    res.writeHead(200, headers);
    res.end(JSON.stringify({ token: lee }));
  });
  await new Promise((r) => login.listen(0, '127.0.0.1', r));
  const loginUrl = `http://127.0.0.1:${login.address().port}/token`;
  server = await startWebServer([
    '--auth-secret-file', secretFile,
    '--waiting-room', 'lobby*',
    '--login-url', loginUrl,
  ]);
  server.loginUrl = loginUrl;
  browser = await launchChromium();
});

test.afterAll(async () => {
  await browser?.close();
  await server?.stop();
  await new Promise((r) => (login ? login.close(r) : r()));
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('a moderator runs the waiting room and the meeting from the page', async () => {
  const modToken = await token(['--user', 'mo', '--name', 'Mo',
    '--grants', 'publish_video,subscribe,chat,moderate']);
  const guestToken = await token(['--user', 'gus', '--name', 'Gus',
    '--grants', 'publish_video,subscribe,chat']);

  const mo = await browser.context.newPage();
  await mo.goto(`${server.base}/meeting/Mo/lobby-1#token=${modToken}`);
  await mo.click('#connect');
  await expect(mo.locator('#participants li')).toHaveCount(1);
  await expect(mo.locator('#participants')).toContainText('Mo · moderator (you)');
  // The moderator's actions are in the participant list.
  await mo.click('#toggle-people');
  await expect(mo.locator('#moderation')).toBeVisible();

  // The guest's link says "Impostor"; the token says Gus, and Gus it is.
  const gus = await browser.context.newPage();
  await gus.goto(`${server.base}/meeting/Impostor/lobby-1#token=${guestToken}`);
  await gus.click('#connect');
  await expect(gus.locator('#status')).toHaveText(/Waiting for a moderator/);
  await expect(gus.locator('#moderation')).toBeHidden();
  const waiting = mo.locator('#admissions li');
  await expect(waiting).toHaveCount(1);
  await expect(waiting).toContainText('Gus');
  await waiting.locator('button[data-action=admit]').click();
  await expect(gus.locator('#participants li')).toHaveCount(2);
  await expect(gus.locator('#meeting-name')).toHaveText('lobby-1');
  await expect(mo.locator('#participants')).toContainText('Gus');
  await expect(mo.locator('#participants')).not.toContainText('Impostor');
  await expect(mo.locator('#admissions li')).toHaveCount(0);
  // Gus's token has no publish_audio: the page says it will not send the
  // microphone and sends the camera only.
  await expect(gus.locator('#notice')).toContainText('Not sending your microphone');
  await expect(gus.locator('#toggle-mic')).toBeDisabled();
  await expect.poll(() => mo.locator('#tiles .tile').getAttribute('data-frames').then(Number)).toBeGreaterThan(5);

  // Asking to mute reaches the guest (from the participant list).
  await mo.locator('#participants li', { hasText: 'Gus' }).locator('button[data-action=mute]').click();
  await expect(gus.locator('#notice')).toHaveText('Mo asked you to mute.');

  // Lock and unlock: everyone sees it.
  await mo.click('#lock');
  await expect(gus.locator('#room-state')).toHaveText('Room locked');
  await expect(mo.locator('#lock')).toHaveText('Unlock room');
  await mo.click('#lock');
  await expect(gus.locator('#room-state')).toHaveText('');

  // No token in the link: the page asks the sign-in service, which wants a
  // session first; signed in, it hands over a token and Lee waits, to be denied.
  const lee = await browser.context.newPage();
  await lee.goto(`${server.base}/meeting/Lee/lobby-1`);
  await lee.click('#connect');
  await expect(lee.locator('#status')).toContainText('Sign in first');
  await expect(lee.locator('#login-link')).toHaveAttribute('href', server.loginUrl);
  await browser.context.addCookies([{ name: 'session', value: 'ok', url: server.loginUrl }]);
  await lee.click('#connect');
  await expect(lee.locator('#status')).toHaveText(/Waiting for a moderator/);
  await expect(mo.locator('#admissions li')).toContainText('Lee');
  await mo.locator('#admissions li', { hasText: 'Lee' }).locator('button[data-action=deny]').click();
  await expect(lee.locator('#status')).toHaveText('A moderator did not let you in.');

  // Removing the guest, then ending the meeting.
  await mo.locator('#participants li', { hasText: 'Gus' }).locator('button[data-action=remove]').click();
  await expect(gus.locator('#status')).toHaveText('A moderator removed you from the meeting.');
  await expect(mo.locator('#participants li')).toHaveCount(1);
  await mo.click('#end-meeting');
  await expect(mo.locator('#status')).toHaveText('The meeting has ended.');
});
