// The least of the Convene wire format (spec/PROTOCOL.md) a test page needs,
// written from the spec in plain JavaScript: protobuf varints and
// length-delimited fields, the frame type byte, the u32 length prefix of the
// WebTransport control stream, and the 24-byte media header.

export const FRAME_CONTROL = 0x01;
export const FRAME_MEDIA = 0x02;

// ---- protobuf writing ----------------------------------------------------

function varint(out, value) {
  let v = BigInt(value);
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
}

// A message is a list of [field, value] pairs; value is a number / bigint
// (varint), a string, a Uint8Array, or a nested list (a message).
export function encodeMessage(fields) {
  const out = [];
  for (const [field, value] of fields) {
    if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') {
      varint(out, (field << 3) | 0);
      varint(out, typeof value === 'boolean' ? (value ? 1 : 0) : value);
    } else {
      const bytes = typeof value === 'string' ? new TextEncoder().encode(value)
        : value instanceof Uint8Array ? value
        : encodeMessage(value);
      varint(out, (field << 3) | 2);
      varint(out, bytes.length);
      for (const b of bytes) out.push(b);
    }
  }
  return new Uint8Array(out);
}

// ---- protobuf reading ----------------------------------------------------

// Decodes one message level into {field: [values]}: varints as BigInt,
// length-delimited fields as Uint8Array (decode nested ones again).
export function decodeMessage(bytes) {
  const fields = {};
  let i = 0;
  const readVarint = () => {
    let result = 0n, shift = 0n;
    for (;;) {
      if (i >= bytes.length) throw new Error('truncated varint');
      const b = bytes[i++];
      result |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return result;
      shift += 7n;
      if (shift > 63n) throw new Error('varint too long');
    }
  };
  while (i < bytes.length) {
    const key = readVarint();
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    let value;
    if (wire === 0) value = readVarint();
    else if (wire === 2) {
      const len = Number(readVarint());
      if (i + len > bytes.length) throw new Error('truncated field');
      value = bytes.subarray(i, i + len);
      i += len;
    } else if (wire === 1) { value = bytes.subarray(i, i + 8); i += 8; }
    else if (wire === 5) { value = bytes.subarray(i, i + 4); i += 4; }
    else throw new Error(`unsupported wire type ${wire}`);
    (fields[field] ||= []).push(value);
  }
  return fields;
}

export const text = (b) => (b ? new TextDecoder().decode(b) : '');
export const num = (v) => (v === undefined ? 0 : Number(v));

// ---- frames --------------------------------------------------------------

// A CONTROL frame holding a ClientMessage, with the control stream's length prefix.
export function controlFrame(clientMessageFields) {
  const body = encodeMessage(clientMessageFields);
  const len = body.length + 1;
  const out = new Uint8Array(4 + len);
  new DataView(out.buffer).setUint32(0, len);
  out[4] = FRAME_CONTROL;
  out.set(body, 5);
  return out;
}

// Splits the control stream's bytes into frames, keeping any partial tail.
export class StreamDecoder {
  constructor(maxFrame) { this.buf = new Uint8Array(0); this.maxFrame = maxFrame; }
  push(chunk) {
    const b = new Uint8Array(this.buf.length + chunk.length);
    b.set(this.buf); b.set(chunk, this.buf.length);
    this.buf = b;
  }
  next() {
    if (this.buf.length < 4) return null;
    const len = new DataView(this.buf.buffer, this.buf.byteOffset).getUint32(0);
    if (len < 1 || len > this.maxFrame) throw new Error(`bad frame length ${len}`);
    if (this.buf.length < 4 + len) return null;
    const frame = this.buf.slice(4, 4 + len);
    this.buf = this.buf.slice(4 + len);
    return frame;
  }
}

// The media header (PROTOCOL.md §6.1).
export function parseMedia(frame) {
  if (frame.length < 24 || frame[0] !== FRAME_MEDIA) throw new Error('not a media frame');
  const dv = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const flags = frame[1];
  const configLen = dv.getUint16(2);
  return {
    key: (flags & 1) !== 0,
    sender: dv.getUint32(4),
    track: dv.getUint32(8),
    sequence: dv.getUint32(12),
    captureUs: dv.getBigUint64(16),
    payloadBytes: frame.length - 24 - configLen,
  };
}
