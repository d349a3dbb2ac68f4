// The screens fit the window they are in: on a phone-sized window nothing
// runs off the side and the meeting's buttons stay reachable; on a large
// screen the video grid puts tiles side by side. Screenshots of both are
// written for a person to look at.
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

// How far the page is wider than its window, in CSS pixels.
const overflow = (page) => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);

test('the join and meeting screens fit a phone and use a large screen', async ({}, testInfo) => {
  const phone = await browser.context.newPage();
  await phone.setViewportSize({ width: 360, height: 740 });
  const desk = await browser.context.newPage();
  await desk.setViewportSize({ width: 1440, height: 900 });
  const third = await browser.context.newPage();
  try {
    await phone.goto(`${server.base}/meeting/Pia/layout-room`);
    await expect(phone.locator('#preview-status')).toContainText('ready');
    expect(await overflow(phone), 'the join screen runs off a phone').toBeLessThanOrEqual(0);
    await expect(phone.locator('#connect')).toBeInViewport();

    await phone.click('#connect');
    for (const [page, who] of [[desk, 'Dan'], [third, 'Tess']]) {
      await page.goto(`${server.base}/meeting/${who}/layout-room`);
      await page.click('#connect');
    }
    for (const page of [phone, desk]) {
      await expect(page.locator('#participants li')).toHaveCount(3);
      await expect(page.locator('#tiles .tile')).toHaveCount(2);
    }
    await phone.locator('#tiles .tile').first().scrollIntoViewIfNeeded();
    expect(await overflow(phone), 'the meeting screen runs off a phone').toBeLessThanOrEqual(0);
    // Every control is within the phone's width.
    for (const id of ['#toggle-mic', '#toggle-camera', '#toggle-screen', '#toggle-chat', '#toggle-people', '#toggle-more', '#leave']) {
      const box = await phone.locator(id).boundingBox();
      expect(box.x, `${id} starts on screen`).toBeGreaterThanOrEqual(0);
      expect(box.x + box.width, `${id} ends on screen`).toBeLessThanOrEqual(360);
    }
    // On the phone the tiles stack; on the large screen they sit side by side.
    const boxes = async (page) => Promise.all((await page.locator('#tiles figure').all()).map((f) => f.boundingBox()));
    const onPhone = await boxes(phone);
    expect(new Set(onPhone.map((b) => Math.round(b.y))).size, 'phone: one tile a row').toBe(onPhone.length);
    const onDesk = await boxes(desk);
    expect(new Set(onDesk.map((b) => Math.round(b.y))).size, 'large screen: tiles side by side').toBeLessThan(onDesk.length);
    // The chat opens beside the stage on the large screen and over it on the phone, and closes again.
    await desk.click('#toggle-chat');
    await expect(desk.locator('#chat')).toBeVisible();
    const side = await desk.locator('#side').boundingBox();
    const stage = await desk.locator('#stage').boundingBox();
    expect(side.x, 'large screen: the chat is beside the stage').toBeGreaterThanOrEqual(stage.x + stage.width - 1);
    await desk.click('#chat .close');
    await expect(desk.locator('#side')).toBeHidden();
    await phone.click('#toggle-people');
    await expect(phone.locator('#people')).toBeVisible();
    await expect(phone.locator('#participants li')).toHaveCount(3);
    const sheet = await phone.locator('#side').boundingBox();
    expect(sheet.width, 'phone: the participants cover the width').toBeGreaterThanOrEqual(359);
    await phone.screenshot({ path: `${testInfo.outputDir}/phone-participants.png` });
    await phone.keyboard.press('Escape');
    await expect(phone.locator('#side')).toBeHidden();
    expect(await overflow(desk)).toBeLessThanOrEqual(0);

    const dir = testInfo.outputDir;
    await phone.screenshot({ path: `${dir}/phone.png`, fullPage: true });
    await desk.mouse.move(700, 450);
    await desk.screenshot({ path: `${dir}/large-screen.png`, animations: 'disabled' });
    console.log(`layout screenshots: ${dir}/phone.png, ${dir}/large-screen.png`);
  } finally {
    await phone.close();
    await desk.close();
    await third.close();
  }
});
