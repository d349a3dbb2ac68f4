// Playwright drives Debian's Chromium (/usr/bin/chromium); nothing is downloaded.
const { defineConfig } = require('@playwright/test');

module.exports = defineConfig({
  testDir: './tests',
  // Each test starts its own server and browser; two cores run them one at a time.
  workers: 1,
  fullyParallel: false,
  timeout: 120_000,
  expect: { timeout: 30_000 },
  reporter: [['list']],
  retries: 0,
});
