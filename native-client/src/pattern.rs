//! The test pattern: a moving picture that carries its own frame counter and
//! capture time in the pixels, so a receiver can measure latency and see
//! freezes by looking at the decoded picture alone.
//!
//! The stamp is 96 bits drawn as black and white squares along the top of
//! the picture, 32 to a row, three rows: the counter (32 bits), the capture
//! time in ms since the Unix epoch (48 bits) and a Fletcher-16 check of
//! those ten bytes (XOR 0xA55A), most significant bit first. Squares are
//! `width / 32` pixels (at most 16, at least 4) so they survive H.264 at
//! ordinary bitrates; the check tells a reader when they did not.

use crate::frame::I420;

/// Stamp squares per row.
const CELLS_PER_ROW: usize = 32;
/// Rows of squares: 96 bits.
const ROWS: usize = 3;
/// Luma of a 0 and a 1 (limited range black and white).
const BLACK: u8 = 16;
const WHITE: u8 = 235;

/// What a frame says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Frames since the stream started.
    pub(crate) counter: u32,
    /// Capture time, ms since the Unix epoch (low 48 bits).
    pub(crate) unix_ms: u64,
}

/// Smallest picture the stamp fits in.
pub(crate) const MIN_WIDTH: usize = CELLS_PER_ROW * 4;
/// Smallest height: the stamp plus room for the moving part.
pub(crate) const MIN_HEIGHT: usize = 96;

fn cell(width: usize) -> usize {
    (width / CELLS_PER_ROW).clamp(4, 16) & !1
}

fn bits(stamp: Stamp) -> [bool; CELLS_PER_ROW * ROWS] {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&stamp.counter.to_be_bytes());
    bytes[4..10].copy_from_slice(&stamp.unix_ms.to_be_bytes()[2..]);
    let check = fletcher16(&bytes[..10]);
    bytes[10..].copy_from_slice(&check.to_be_bytes());
    let mut out = [false; CELLS_PER_ROW * ROWS];
    for (i, b) in out.iter_mut().enumerate() {
        *b = bytes[i / 8] & (0x80 >> (i % 8)) != 0;
    }
    out
}

fn fletcher16(data: &[u8]) -> u16 {
    let (mut a, mut b) = (0u16, 0u16);
    for &d in data {
        a = (a + u16::from(d)) % 255;
        b = (b + a) % 255;
    }
    // Offset so that an all-black (or all-white) band is not a valid stamp.
    ((b << 8) | a) ^ 0xA55A
}

/// Draws frame `stamp.counter` of the pattern into `frame`.
pub(crate) fn render(frame: &mut I420, stamp: Stamp) {
    let (w, h) = (frame.width(), frame.height());
    let n = stamp.counter as usize;
    let c = cell(w);
    let band = c * ROWS;
    let (y, u, v) = frame.planes_mut();
    // A diagonal gradient that scrolls a little every frame.
    for r in 0..h {
        let row = &mut y[r * w..(r + 1) * w];
        for (x, p) in row.iter_mut().enumerate() {
            *p = 48 + ((x + r + 2 * n) % 160) as u8;
        }
    }
    // A white box that travels left to right below the stamp.
    let side = (h / 6).max(8);
    let span = w.saturating_sub(side).max(1);
    let bx = (n * 4) % span;
    let by = band + (h - band).saturating_sub(side) / 2;
    for r in by..(by + side).min(h) {
        y[r * w + bx..r * w + (bx + side).min(w)].fill(WHITE);
    }
    // Colour bars that drift the other way.
    let (cw, ch) = (w / 2, h / 2);
    for r in 0..ch {
        for x in 0..cw {
            let bar = (((x + cw - (n % cw)) % cw) * 8 / cw) as u8;
            u[r * cw + x] = 64 + bar * 16;
            v[r * cw + x] = 192 - bar * 16;
        }
    }
    // The stamp, on neutral chroma so it reads the same in every format.
    for (i, bit) in bits(stamp).iter().enumerate() {
        let (row, col) = (i / CELLS_PER_ROW, i % CELLS_PER_ROW);
        let luma = if *bit { WHITE } else { BLACK };
        for r in row * c..(row + 1) * c {
            y[r * w + col * c..r * w + (col + 1) * c].fill(luma);
        }
    }
    for r in 0..band / 2 {
        u[r * cw..r * cw + CELLS_PER_ROW * c / 2].fill(128);
        v[r * cw..r * cw + CELLS_PER_ROW * c / 2].fill(128);
    }
}

/// Reads the stamp from a decoded picture's luma plane, if it is there and intact.
pub(crate) fn read(y: &[u8], width: usize, height: usize) -> Option<Stamp> {
    let c = cell(width);
    if width < MIN_WIDTH || height < c * ROWS || y.len() < width * height {
        return None;
    }
    let mut bytes = [0u8; 12];
    for i in 0..CELLS_PER_ROW * ROWS {
        let (row, col) = (i / CELLS_PER_ROW, i % CELLS_PER_ROW);
        // The middle half of the square: edges blur under compression.
        let (r0, x0) = (row * c + c / 4, col * c + c / 4);
        let mut sum = 0u32;
        let mut count = 0u32;
        for r in r0..r0 + c / 2 {
            for x in x0..x0 + c / 2 {
                sum += u32::from(y[r * width + x]);
                count += 1;
            }
        }
        if sum / count.max(1) > 125 {
            bytes[i / 8] |= 0x80 >> (i % 8);
        }
    }
    let check = u16::from_be_bytes([bytes[10], bytes[11]]);
    if fletcher16(&bytes[..10]) != check {
        return None;
    }
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&bytes[4..10]);
    Some(Stamp {
        counter: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        unix_ms: u64::from_be_bytes(ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_reads_back_at_every_supported_width() {
        for (w, h) in [(128, 96), (320, 240), (640, 360), (1280, 720), (1920, 1080)] {
            let mut f = I420::black(w, h);
            let stamp = Stamp {
                counter: 0xDEAD_BEEF ^ w as u32,
                unix_ms: 1_790_000_000_123,
            };
            render(&mut f, stamp);
            assert_eq!(read(f.y(), w, h), Some(stamp), "{w}x{h}");
        }
    }

    #[test]
    fn a_damaged_stamp_is_rejected() {
        let mut f = I420::black(320, 240);
        render(
            &mut f,
            Stamp {
                counter: 7,
                unix_ms: 42,
            },
        );
        // Flip one square (cell 10 px): the check no longer matches.
        let (y, _, _) = f.planes_mut();
        for r in 0..10 {
            for x in 0..10 {
                y[r * 320 + x] = 255 - y[r * 320 + x];
            }
        }
        assert_eq!(read(f.y(), 320, 240), None);
        assert_eq!(read(I420::black(320, 240).y(), 320, 240), None);
    }

    #[test]
    fn the_picture_moves() {
        let mut a = I420::black(320, 240);
        let mut b = I420::black(320, 240);
        let s = |counter| Stamp {
            counter,
            unix_ms: 0,
        };
        render(&mut a, s(1));
        render(&mut b, s(2));
        // Below the stamp band, most of the picture changed.
        let band = 30 * 320;
        let changed = a.y()[band..]
            .iter()
            .zip(&b.y()[band..])
            .filter(|(x, y)| x != y)
            .count();
        assert!(changed > (320 * 210) / 2, "only {changed} pixels changed");
    }
}
