// Plays the samples the page posts (Float32Array chunks at the context's
// rate) with a small jitter buffer: it starts once 60 ms are queued, drops the
// oldest audio when more than 200 ms pile up (so delay cannot grow), and on
// running dry plays silence until 60 ms are queued again. It reports the
// samples it has played to the page.
class ConvenePlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];
    this.offset = 0;
    this.buffered = 0;
    this.playing = false;
    this.played = 0;
    this.reported = 0;
    this.port.onmessage = (e) => {
      const chunk = e.data;
      this.queue.push(chunk);
      this.buffered += chunk.length;
      const most = sampleRate * 0.2;
      while (this.buffered > most && this.queue.length > 1) {
        this.buffered -= this.queue[0].length - this.offset;
        this.queue.shift();
        this.offset = 0;
      }
    };
  }

  process(_inputs, outputs) {
    const channels = outputs[0];
    const out = channels[0];
    if (!this.playing && this.buffered >= sampleRate * 0.06) this.playing = true;
    let i = 0;
    while (this.playing && i < out.length && this.queue.length) {
      const head = this.queue[0];
      const n = Math.min(out.length - i, head.length - this.offset);
      out.set(head.subarray(this.offset, this.offset + n), i);
      i += n;
      this.offset += n;
      this.buffered -= n;
      if (this.offset >= head.length) { this.queue.shift(); this.offset = 0; }
    }
    if (i < out.length) {
      out.fill(0, i);
      if (this.playing && !this.queue.length) this.playing = false;
    }
    for (let c = 1; c < channels.length; c++) channels[c].set(out);
    // Tell the page how much it played, about twice a second.
    this.played += i;
    if (currentTime - this.reported >= 0.5) {
      this.reported = currentTime;
      this.port.postMessage(this.played);
    }
    return true;
  }
}

registerProcessor('convene-player', ConvenePlayer);

// Captures the microphone where the browser has no MediaStreamTrackProcessor
// (Firefox): posts 20 ms of mono samples at a time to the page, which makes
// AudioData of them for the Opus encoder. Writes silence to its output.
class ConveneCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate / 50);
    this.chunk = new Float32Array(this.size);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (input) {
      let at = 0;
      while (at < input.length) {
        const n = Math.min(input.length - at, this.size - this.filled);
        this.chunk.set(input.subarray(at, at + n), this.filled);
        this.filled += n;
        at += n;
        if (this.filled === this.size) {
          this.port.postMessage(this.chunk, [this.chunk.buffer]);
          this.chunk = new Float32Array(this.size);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor('convene-capture', ConveneCapture);
