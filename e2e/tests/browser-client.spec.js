// The browser client (Rust compiled to WebAssembly, served by convene-server)
// in Debian's Chromium: two people open a meeting link, join, see each
// other, chat, and one leaves.
const { test, expect } = require('@playwright/test');
const { startWebServer, launchChromium } = require('./harness');

let server, browser;

test.beforeAll(async () => {
  server = await startWebServer();
  browser = await launchChromium();
});

test.afterAll(async () => {
  await browser?.close();
  await server?.stop();
});

test('two browsers meet from a meeting link: roster, chat, leaving', async () => {
  const ann = await browser.context.newPage();
  const bob = await browser.context.newPage();
  await ann.goto(`${server.base}/meeting/Ann/e2e-room`);
  await bob.goto(`${server.base}/meeting/Bob%20B/e2e-room`);

  // The join screen is prefilled from the link.
  await expect(ann.locator('#name')).toHaveValue('Ann');
  await expect(bob.locator('#name')).toHaveValue('Bob B');
  await expect(ann.locator('#meeting')).toHaveValue('e2e-room');
  // The camera preview plays (Chromium's fake camera) before joining.
  await expect(ann.locator('#preview-status')).toContainText('ready (2 tracks)');
  await expect.poll(() => ann.evaluate(() => document.getElementById('preview').videoWidth)).toBeGreaterThan(0);

  await ann.click('#connect');
  await expect(ann.locator('#participants li')).toHaveCount(1);
  await bob.click('#connect');

  // Each sees both, themselves marked, and the transport in use.
  await expect(ann.locator('#participants li')).toHaveCount(2);
  await expect(ann.locator('#participants')).toContainText('Bob B');
  await expect(bob.locator('#participants')).toContainText('Ann');
  await expect(bob.locator('#participants')).toContainText('Bob B (you)');
  await expect(ann.locator('#transport')).toHaveText(/WebSocket/);

  // Chat crosses, with the sender's name.
  await ann.fill('#chat-input', 'hello Bob');
  await ann.press('#chat-input', 'Enter');
  await expect(bob.locator('#messages')).toContainText('Ann: hello Bob');
  await expect(ann.locator('#messages')).toContainText('Ann: hello Bob');

  // Leaving removes Bob from Ann's list.
  await bob.click('#leave');
  await expect(ann.locator('#participants li')).toHaveCount(1);
  await expect(bob.locator('#status')).toContainText('left');
});
