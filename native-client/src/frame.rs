//! Raw pictures: planar I420, which the encoder takes and the decoder gives,
//! and conversion from and to the formats cameras deliver.

use std::fmt;

/// A raw pixel layout a camera (or the test pattern) can deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "UPPER")]
pub(crate) enum FrameFormat {
    /// Y plane, then interleaved U/V at half resolution (4:2:0).
    Nv12,
    /// Packed 4:2:2: Y0 U Y1 V for every two pixels.
    Yuyv,
    /// One JPEG picture per frame.
    Mjpeg,
    /// Y plane, U plane, V plane (4:2:0).
    I420,
}

impl fmt::Display for FrameFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameFormat::Nv12 => "NV12",
            FrameFormat::Yuyv => "YUYV",
            FrameFormat::Mjpeg => "MJPEG",
            FrameFormat::I420 => "I420",
        })
    }
}

/// Why raw bytes could not be turned into a picture.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The buffer is not the size the format and resolution imply.
    #[error("a {format} frame of {width}x{height} needs {expected} bytes, got {got}")]
    Size {
        /// The format.
        format: FrameFormat,
        /// Pixels across.
        width: usize,
        /// Pixels down.
        height: usize,
        /// Bytes the layout needs.
        expected: usize,
        /// Bytes there were.
        got: usize,
    },
    /// The JPEG did not decode.
    #[error("the MJPEG frame does not decode: {0}")]
    Jpeg(String),
    /// The JPEG decoded to another size than the stream's.
    #[error("the MJPEG frame is {got_w}x{got_h}, the stream is {width}x{height}")]
    JpegSize {
        /// Expected width.
        width: usize,
        /// Expected height.
        height: usize,
        /// Decoded width.
        got_w: usize,
        /// Decoded height.
        got_h: usize,
    },
}

/// A planar 4:2:0 picture with even width and height and no row padding.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct I420 {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl fmt::Debug for I420 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "I420({}x{})", self.width, self.height)
    }
}

impl I420 {
    /// A black picture. Width and height must be even.
    pub(crate) fn black(width: usize, height: usize) -> I420 {
        debug_assert!(width.is_multiple_of(2) && height.is_multiple_of(2));
        let y = width * height;
        let mut data = vec![16u8; y + y / 2];
        data[y..].fill(128);
        I420 {
            width,
            height,
            data,
        }
    }

    /// Copies a picture given as three planes with strides (as decoders give them).
    pub(crate) fn from_planes(
        width: usize,
        height: usize,
        (y, u, v): (&[u8], &[u8], &[u8]),
        (sy, su, sv): (usize, usize, usize),
    ) -> I420 {
        let mut out = I420::black(width, height);
        let (cw, ch) = (width / 2, height / 2);
        let (oy, ou, ov) = out.planes_mut();
        for r in 0..height {
            oy[r * width..(r + 1) * width].copy_from_slice(&y[r * sy..r * sy + width]);
        }
        for r in 0..ch {
            ou[r * cw..(r + 1) * cw].copy_from_slice(&u[r * su..r * su + cw]);
            ov[r * cw..(r + 1) * cw].copy_from_slice(&v[r * sv..r * sv + cw]);
        }
        out
    }

    /// The picture at half its width and height (each 2×2 block averaged),
    /// rounded down to even sizes: a simulcast encoding's input.
    pub(crate) fn half(&self) -> I420 {
        let (w, h) = ((self.width / 2) & !1, (self.height / 2) & !1);
        let mut out = I420::black(w.max(2), h.max(2));
        let (sy, su, sv) = self.planes();
        let (sw, cw) = (self.width, self.width / 2);
        let (oy, ou, ov) = out.planes_mut();
        let avg = |p: &[u8], stride: usize, x: usize, y: usize| {
            let a = p[y * stride + x] as u16 + p[y * stride + x + 1] as u16;
            let b = p[(y + 1) * stride + x] as u16 + p[(y + 1) * stride + x + 1] as u16;
            ((a + b + 2) / 4) as u8
        };
        for y in 0..h {
            for x in 0..w {
                oy[y * w + x] = avg(sy, sw, 2 * x, 2 * y);
            }
        }
        for y in 0..h / 2 {
            for x in 0..w / 2 {
                ou[y * (w / 2) + x] = avg(su, cw, 2 * x, 2 * y);
                ov[y * (w / 2) + x] = avg(sv, cw, 2 * x, 2 * y);
            }
        }
        out
    }

    /// Pixels across.
    pub(crate) fn width(&self) -> usize {
        self.width
    }

    /// Pixels down.
    pub(crate) fn height(&self) -> usize {
        self.height
    }

    /// The luma plane, `width` bytes per row.
    pub(crate) fn y(&self) -> &[u8] {
        &self.data[..self.width * self.height]
    }

    /// The three planes, writable.
    pub(crate) fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let ys = self.width * self.height;
        let (y, uv) = self.data.split_at_mut(ys);
        let (u, v) = uv.split_at_mut(ys / 4);
        (y, u, v)
    }

    fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        let ys = self.width * self.height;
        let (y, uv) = self.data.split_at(ys);
        let (u, v) = uv.split_at(ys / 4);
        (y, u, v)
    }

    /// The picture as raw bytes in `format` (JPEG at quality 90 for MJPEG).
    pub(crate) fn encode_as(&self, format: FrameFormat) -> Vec<u8> {
        let (w, h) = (self.width, self.height);
        let (y, u, v) = self.planes();
        match format {
            FrameFormat::I420 => self.data.clone(),
            FrameFormat::Nv12 => {
                let mut out = Vec::with_capacity(self.data.len());
                out.extend_from_slice(y);
                for (a, b) in u.iter().zip(v) {
                    out.push(*a);
                    out.push(*b);
                }
                out
            }
            FrameFormat::Yuyv => {
                let mut out = Vec::with_capacity(w * h * 2);
                for r in 0..h {
                    let yr = &y[r * w..(r + 1) * w];
                    let c = (r / 2) * (w / 2);
                    for x in 0..w / 2 {
                        out.extend_from_slice(&[yr[2 * x], u[c + x], yr[2 * x + 1], v[c + x]]);
                    }
                }
                out
            }
            FrameFormat::Mjpeg => {
                // Chroma up to 4:4:4 by repetition; the encoder samples it back to 4:2:0.
                let mut ycbcr = Vec::with_capacity(w * h * 3);
                for r in 0..h {
                    for x in 0..w {
                        let c = (r / 2) * (w / 2) + x / 2;
                        ycbcr.extend_from_slice(&[y[r * w + x], u[c], v[c]]);
                    }
                }
                let mut out = Vec::new();
                let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
                enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
                // Sizes were checked when the stream was configured (at most 4096).
                let _ = enc.encode(&ycbcr, w as u16, h as u16, jpeg_encoder::ColorType::Ycbcr);
                out
            }
        }
    }

    /// Reads a picture of `width`x`height` delivered in `format`.
    pub(crate) fn decode_from(
        format: FrameFormat,
        data: &[u8],
        width: usize,
        height: usize,
    ) -> Result<I420, FrameError> {
        let expected = match format {
            FrameFormat::I420 | FrameFormat::Nv12 => width * height * 3 / 2,
            FrameFormat::Yuyv => width * height * 2,
            FrameFormat::Mjpeg => 0,
        };
        if format != FrameFormat::Mjpeg && data.len() != expected {
            return Err(FrameError::Size {
                format,
                width,
                height,
                expected,
                got: data.len(),
            });
        }
        let mut out = I420::black(width, height);
        let (w, h) = (width, height);
        let (cw, ch) = (w / 2, h / 2);
        match format {
            FrameFormat::I420 => out.data.copy_from_slice(data),
            FrameFormat::Nv12 => {
                let (oy, ou, ov) = out.planes_mut();
                oy.copy_from_slice(&data[..w * h]);
                for (i, uv) in data[w * h..].chunks_exact(2).enumerate() {
                    ou[i] = uv[0];
                    ov[i] = uv[1];
                }
            }
            FrameFormat::Yuyv => {
                let (oy, ou, ov) = out.planes_mut();
                for r in 0..h {
                    let row = &data[r * w * 2..(r + 1) * w * 2];
                    for (x, px) in row.chunks_exact(4).enumerate() {
                        oy[r * w + 2 * x] = px[0];
                        oy[r * w + 2 * x + 1] = px[2];
                    }
                }
                // 4:2:2 to 4:2:0: average each pair of chroma rows.
                for r in 0..ch {
                    let a = &data[2 * r * w * 2..(2 * r + 1) * w * 2];
                    let b = &data[(2 * r + 1) * w * 2..(2 * r + 2) * w * 2];
                    for x in 0..cw {
                        let i = 4 * x;
                        ou[r * cw + x] = avg(a[i + 1], b[i + 1]);
                        ov[r * cw + x] = avg(a[i + 3], b[i + 3]);
                    }
                }
            }
            FrameFormat::Mjpeg => {
                // Bounded by the stream's size, so a bad frame cannot ask for a huge buffer.
                let options = zune_jpeg::zune_core::options::DecoderOptions::default()
                    .set_max_width(w)
                    .set_max_height(h)
                    .jpeg_set_out_colorspace(zune_jpeg::zune_core::colorspace::ColorSpace::YCbCr);
                let mut dec = zune_jpeg::JpegDecoder::new_with_options(
                    zune_jpeg::zune_core::bytestream::ZCursor::new(data),
                    options,
                );
                let pixels = dec.decode().map_err(|e| FrameError::Jpeg(e.to_string()))?;
                let (gw, gh) = dec
                    .dimensions()
                    .ok_or_else(|| FrameError::Jpeg("no dimensions".into()))?;
                if (gw, gh) != (w, h) || pixels.len() != w * h * 3 {
                    return Err(FrameError::JpegSize {
                        width: w,
                        height: h,
                        got_w: gw,
                        got_h: gh,
                    });
                }
                let (oy, ou, ov) = out.planes_mut();
                for (i, px) in pixels.chunks_exact(3).enumerate() {
                    oy[i] = px[0];
                }
                for r in 0..ch {
                    for x in 0..cw {
                        let p = |rr: usize, xx: usize, k: usize| {
                            u16::from(pixels[(rr * w + xx) * 3 + k])
                        };
                        let (r0, r1, x0, x1) = (2 * r, 2 * r + 1, 2 * x, 2 * x + 1);
                        let sum = |k| p(r0, x0, k) + p(r0, x1, k) + p(r1, x0, k) + p(r1, x1, k);
                        ou[r * cw + x] = ((sum(1) + 2) / 4) as u8;
                        ov[r * cw + x] = ((sum(2) + 2) / 4) as u8;
                    }
                }
            }
        }
        Ok(out)
    }

    /// The picture as 8-bit RGB (BT.601, limited range), for PNG files.
    pub(crate) fn to_rgb(&self) -> Vec<u8> {
        let (w, h) = (self.width, self.height);
        let (y, u, v) = self.planes();
        let mut out = Vec::with_capacity(w * h * 3);
        for r in 0..h {
            for x in 0..w {
                let c = (r / 2) * (w / 2) + x / 2;
                let yy = (i32::from(y[r * w + x]) - 16) * 298;
                let (d, e) = (i32::from(u[c]) - 128, i32::from(v[c]) - 128);
                let clamp = |n: i32| ((n + 128) >> 8).clamp(0, 255) as u8;
                out.push(clamp(yy + 409 * e));
                out.push(clamp(yy - 100 * d - 208 * e));
                out.push(clamp(yy + 516 * d));
            }
        }
        out
    }

    /// The raw planes, Y then U then V, as a Y4M frame carries them.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.data
    }
}

fn avg(a: u8, b: u8) -> u8 {
    (u16::from(a) + u16::from(b)).div_ceil(2) as u8
}

impl openh264::formats::YUVSource for I420 {
    fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn strides(&self) -> (usize, usize, usize) {
        (self.width, self.width / 2, self.width / 2)
    }

    fn y(&self) -> &[u8] {
        self.planes().0
    }

    fn u(&self) -> &[u8] {
        self.planes().1
    }

    fn v(&self) -> &[u8] {
        self.planes().2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_averages_blocks_and_keeps_even_sizes() {
        let mut p = I420::black(8, 6);
        {
            let (y, u, _) = p.planes_mut();
            for (i, v) in y.iter_mut().enumerate() {
                *v = (i % 8) as u8 * 10; // columns 0, 10, 20, ...
            }
            u.fill(200);
        }
        let h = p.half();
        assert_eq!((h.width(), h.height()), (4, 2), "6/2 = 3 rounds down to 2");
        // Each output column averages two input columns: 5, 25, 45, 65.
        assert_eq!(&h.y()[..4], &[5, 25, 45, 65]);
        let (_, u, v) = h.planes();
        assert!(u.iter().all(|&x| x == 200) && v.iter().all(|&x| x == 128));
    }

    fn sample(w: usize, h: usize) -> I420 {
        let mut f = I420::black(w, h);
        let (y, u, v) = f.planes_mut();
        for (i, p) in y.iter_mut().enumerate() {
            *p = (16 + (i * 7) % 220) as u8;
        }
        // Chroma constant over 2x2 blocks is what 4:2:0 can carry exactly.
        for (i, p) in u.iter_mut().enumerate() {
            *p = (40 + (i * 3) % 180) as u8;
        }
        for (i, p) in v.iter_mut().enumerate() {
            *p = (200 - (i * 5) % 170) as u8;
        }
        f
    }

    #[test]
    fn lossless_formats_round_trip_exactly() {
        let f = sample(64, 48);
        for format in [FrameFormat::I420, FrameFormat::Nv12, FrameFormat::Yuyv] {
            let raw = f.encode_as(format);
            let back = I420::decode_from(format, &raw, 64, 48).unwrap();
            assert_eq!(back, f, "{format}");
        }
    }

    #[test]
    fn nv12_and_yuyv_layouts_are_the_standard_ones() {
        let f = sample(4, 2);
        let nv12 = f.encode_as(FrameFormat::Nv12);
        let (y, u, v) = f.planes();
        assert_eq!(&nv12[..8], y);
        assert_eq!(&nv12[8..], &[u[0], v[0], u[1], v[1]]);
        let yuyv = f.encode_as(FrameFormat::Yuyv);
        assert_eq!(&yuyv[..4], &[y[0], u[0], y[1], v[0]]);
        assert_eq!(&yuyv[8..12], &[y[4], u[0], y[5], v[0]]);
    }

    #[test]
    fn mjpeg_round_trip_is_close() {
        let mut f = I420::black(64, 32);
        let (y, _, _) = f.planes_mut();
        // Smooth content: JPEG keeps it within a few levels.
        for r in 0..32 {
            for x in 0..64 {
                y[r * 64 + x] = (40 + x * 2 + r) as u8;
            }
        }
        let jpeg = f.encode_as(FrameFormat::Mjpeg);
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "a JPEG starts with SOI");
        let back = I420::decode_from(FrameFormat::Mjpeg, &jpeg, 64, 32).unwrap();
        let worst = f
            .y()
            .iter()
            .zip(back.y())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 8, "luma differs by up to {worst}");
    }

    #[test]
    fn wrong_sizes_are_errors_not_panics() {
        let err = I420::decode_from(FrameFormat::Nv12, &[0; 10], 64, 48).unwrap_err();
        assert!(
            err.to_string().contains("needs 4608 bytes, got 10"),
            "{err}"
        );
        assert!(I420::decode_from(FrameFormat::Mjpeg, &[0xFF, 0xD8, 0, 1], 64, 48).is_err());
        let other = I420::black(32, 32).encode_as(FrameFormat::Mjpeg);
        let err = I420::decode_from(FrameFormat::Mjpeg, &other, 64, 48).unwrap_err();
        assert!(err.to_string().contains("32x32"), "{err}");
    }

    #[test]
    fn rgb_of_limited_range_white_and_black() {
        let mut f = I420::black(2, 2);
        assert_eq!(f.to_rgb(), vec![0; 12]);
        f.planes_mut().0.fill(235);
        assert!(f.to_rgb().iter().all(|&c| c == 255));
    }
}
