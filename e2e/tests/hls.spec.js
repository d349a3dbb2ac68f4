// The recorder's live HLS stream (`convene record --hls NAME`) played by
// hls.js (npm, pinned) in Debian's Chromium, the way an audience watches
// through an ordinary web server: the playlists and the byte ranges of the
// recording's own MP4 files, served by a plain static file server that
// answers Range requests.
const { test, expect } = require('@playwright/test');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { startWebServer, launchChromium, spawnConvene } = require('./harness');

const HLS_JS = path.join(__dirname, '..', 'node_modules', 'hls.js', 'dist', 'hls.min.js');

const PAGE = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Live</title>
<script src="/hls.min.js"></script></head><body>
<video id="v" muted autoplay playsinline width="320" height="240"></video>
<canvas id="c" width="320" height="240"></canvas>
<script>
  const v = document.getElementById('v');
  window.hlsErrors = [];
  const hls = new Hls({ liveSyncDurationCount: 1 });
  hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) window.hlsErrors.push(d.details); });
  hls.loadSource('/live.m3u8');
  hls.attachMedia(v);
  hls.on(Hls.Events.MANIFEST_PARSED, () => v.play());
  // The picture as a number: the sum of a canvas drawing of it.
  window.pictureSum = () => {
    const c = document.getElementById('c').getContext('2d');
    c.drawImage(v, 0, 0, 320, 240);
    const d = c.getImageData(0, 0, 320, 240).data;
    let s = 0;
    for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2];
    return s;
  };
</script></body></html>`;

// A static file server for `dir` that answers Range requests (HLS byte
// ranges), as nginx or a CDN would.
function serveDir(dir) {
  const server = http.createServer((req, res) => {
    const name = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    if (name === '/') {
      res.writeHead(200, { 'content-type': 'text/html' });
      return res.end(PAGE);
    }
    const file = name === '/hls.min.js' ? HLS_JS : path.join(dir, path.basename(name));
    let data;
    try { data = fs.readFileSync(file); } catch {
      res.writeHead(404);
      return res.end();
    }
    const type = file.endsWith('.m3u8') ? 'application/vnd.apple.mpegurl'
      : file.endsWith('.mp4') ? 'video/mp4' : 'text/javascript';
    const range = /bytes=(\d+)-(\d*)/.exec(req.headers.range || '');
    if (range) {
      const start = Number(range[1]);
      const end = range[2] ? Number(range[2]) : data.length - 1;
      res.writeHead(206, { 'content-type': type, 'content-range': `bytes ${start}-${end}/${data.length}`, 'cache-control': 'no-store' });
      return res.end(data.subarray(start, end + 1));
    }
    res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' });
    res.end(data);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

let server, browser, web, out;

test.beforeAll(async () => {
  server = await startWebServer();
  browser = await launchChromium();
  out = fs.mkdtempSync(path.join(os.tmpdir(), 'convene-hls-'));
  web = await serveDir(out);
});

test.afterAll(async () => {
  await browser?.close();
  await server?.stop();
  web?.close();
  fs.rmSync(out, { recursive: true, force: true });
});

test('a live meeting plays through HLS in the browser: its time advances and its picture changes', async () => {
  const room = 'e2e-hls';
  const stream = spawnConvene(['stream', '--server', server.base, '--meeting-id', room,
    '--user-id', 'speaker', '--source', 'test-pattern', '--resolution', '320x240', '--fps', '15',
    '--audio', 'tone', '--duration', '110']);
  const recorder = spawnConvene(['record', '--server', server.base, '--meeting-id', room,
    '--out', out, '--hls', 'speaker', '--duration', '110']);
  try {
    // The stream is live once its playlist lists a few segments.
    await expect.poll(() => {
      try { return (fs.readFileSync(path.join(out, 'live-video.m3u8'), 'utf8').match(/#EXTINF/g) || []).length; } catch { return 0; }
    }, { message: `segments (recorder: ${recorder.output})`, timeout: 60_000 }).toBeGreaterThanOrEqual(2);
    const master = fs.readFileSync(path.join(out, 'live.m3u8'), 'utf8');
    expect(master).toContain('CODECS="avc1.');
    expect(master).toContain('TYPE=AUDIO');

    const page = await browser.context.newPage();
    await page.goto(`http://127.0.0.1:${web.address().port}/`);
    const time = () => page.evaluate(() => document.getElementById('v').currentTime);
    await expect.poll(time, { message: 'the video plays', timeout: 60_000 }).toBeGreaterThan(0.5);
    const t0 = await time();
    // A picture is shown (a canvas drawn from a video with none stays empty).
    const picture = () => page.evaluate(() => window.pictureSum());
    await expect.poll(picture, { timeout: 30_000 }).toBeGreaterThan(0);
    const p0 = await picture();
    // Time goes on, past what was there when playing began, and the
    // moving test pattern changes the picture.
    await expect.poll(time, { timeout: 60_000 }).toBeGreaterThan(t0 + 3);
    await expect.poll(async () => { const p = await picture(); return p > 0 && p !== p0; }, { timeout: 30_000 }).toBe(true);
    // Both tracks reached the media element: the sound is there too.
    const tracks = await page.evaluate(() => {
      const v = document.getElementById('v');
      return { audio: v.webkitAudioDecodedByteCount ?? -1, video: v.webkitVideoDecodedByteCount ?? -1 };
    });
    expect(tracks.video).toBeGreaterThan(0);
    expect(tracks.audio).toBeGreaterThan(0);
    expect(await page.evaluate(() => window.hlsErrors)).toEqual([]);
    await page.close();
  } finally {
    recorder.kill('SIGTERM');
    stream.kill('SIGINT');
  }
});
