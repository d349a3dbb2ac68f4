// What the browser's simulcast camera costs (benches/README.md): a
// Chromium page sends its fake camera (640x480) to three `convene receive`s
// that ask for 120, 240 and all lines, so every encoding is in demand, and
// the CPU time of Chromium's processes is read from /proc over the window,
// first with one encoding (?simulcast=0), then with three. A measurement
// run by hand, not a test:
//
//   cargo build -p convene-server -p convene-cli -p convene-testkit --features convene-server/test-hooks
//   cargo xtask web
//   node e2e/bench/simulcast-cost.js [seconds]
const fs = require('fs');
const { startWebServer, launchChromium, spawnConvene } = require('../tests/harness');

const SECONDS = Number(process.argv[2] || 20);
const WARM_UP_MS = 5000;

// Clock ticks (user + system) of every process whose command line names chromium.
function chromiumTicks() {
  let ticks = 0;
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmd.includes('chromium')) continue;
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch { /* gone meanwhile */ }
  }
  return ticks;
}

async function run(server, browser, simulcast) {
  const room = `cost-${simulcast}`;
  const page = await browser.context.newPage();
  await page.goto(`${server.base}/meeting/Ann/${room}?simulcast=${simulcast}`);
  await page.click('#connect');
  await page.locator('#participants li').first().waitFor();
  const viewers = ['', '--max-height 240', '--max-height 120'].map((extra) => spawnConvene(
    ['receive', '--server', server.base, '--meeting-id', room, '--duration', String(SECONDS + 10),
      ...extra.split(' ').filter(Boolean)]));
  await new Promise((r) => setTimeout(r, WARM_UP_MS));
  const before = chromiumTicks();
  const started = Date.now();
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  const used = (chromiumTicks() - before) / 100;
  const wall = (Date.now() - started) / 1000;
  const sizes = await page.locator('#app').getAttribute('data-simulcast');
  const active = await page.locator('#app').getAttribute('data-encodings-active');
  for (const v of viewers) v.kill('SIGINT');
  await page.close();
  return { simulcast, sizes, active, cpuPercent: (100 * used) / wall };
}

(async () => {
  const server = await startWebServer();
  const browser = await launchChromium();
  try {
    const one = await run(server, browser, 0);
    const three = await run(server, browser, 1);
    for (const r of [one, three]) {
      console.log(`simulcast=${r.simulcast}: encodings [${r.sizes || 'one'}] active mask ${r.active ?? '-'}: Chromium ${r.cpuPercent.toFixed(1)} % of a core`);
    }
    console.log(`three encodings cost ${(three.cpuPercent - one.cpuPercent).toFixed(1)} points more (${((three.cpuPercent / one.cpuPercent - 1) * 100).toFixed(0)} %)`);
  } finally {
    await browser.close();
    await server.stop();
  }
})();
