//! Y4M (YUV4MPEG2) input: raw 8-bit 4:2:0 pictures behind a one-line
//! header. The `y4m` crate reads the frames; the header is checked here
//! first, because the crate multiplies width by height unchecked and takes
//! any size up to its 1 GiB limit.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::{FileError, MAX_FILE_HEIGHT, MAX_FILE_WIDTH, Rate, even};
use crate::frame::I420;

/// The longest header line read before giving up (the crate's own limit).
const MAX_HEADER: u64 = 1024;

/// An open Y4M file, read frame by frame.
pub(crate) struct Y4mReader {
    path: PathBuf,
    decoder: y4m::Decoder<BufReader<File>>,
    /// The file's size; pictures are cropped to even sizes.
    width: usize,
    height: usize,
    rate: Rate,
    /// Complete frames read since the start of this pass.
    frames: u64,
}

impl std::fmt::Debug for Y4mReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Y4mReader({}, {}x{})",
            self.path.display(),
            self.width,
            self.height
        )
    }
}

/// What the header says, checked.
#[derive(Debug, Clone, Copy)]
struct Header {
    width: usize,
    height: usize,
    rate: Rate,
}

/// Reads and checks the header line without trusting its numbers.
fn read_header(path: &Path) -> Result<Header, FileError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| FileError::open(path, e))?;
    let mut line = Vec::new();
    BufReader::new(file)
        .take(MAX_HEADER)
        .read_until(b'\n', &mut line)
        .map_err(|e| FileError::open(path, e))?;
    let bad = |why: String| FileError::Bad {
        file: name.clone(),
        why,
    };
    let Some(params) = line.strip_prefix(b"YUV4MPEG2") else {
        return Err(bad(
            "it does not start with `YUV4MPEG2`, so it is not a Y4M file".into(),
        ));
    };
    if line.last() != Some(&b'\n') {
        return Err(bad(
            "its header line does not end within 1 KiB (a truncated or garbled file)".into(),
        ));
    }
    let (mut width, mut height, mut rate) = (None, None, None);
    for p in params
        .split(|&b| b == b' ' || b == b'\n')
        .filter(|p| !p.is_empty())
    {
        let value = std::str::from_utf8(&p[1..]).unwrap_or("");
        match p[0] {
            b'W' => width = value.parse::<usize>().ok(),
            b'H' => height = value.parse::<usize>().ok(),
            b'F' => {
                let (n, d) = value.split_once(':').unwrap_or((value, "1"));
                rate = match (n.parse::<u64>(), d.parse::<u64>()) {
                    (Ok(n), Ok(d)) => Some(Rate::new(n, d).ok_or_else(|| {
                        bad(format!(
                            "its frame rate is F{value}, which is zero or not a rate"
                        ))
                    })?),
                    _ => return Err(bad(format!("its frame rate `F{value}` is not N:D"))),
                };
            }
            b'C' if !matches!(value, "420" | "420jpeg" | "420paldv" | "420mpeg2") => {
                return Err(bad(format!(
                    "its pictures are C{value}; convene reads 8-bit 4:2:0 (C420): convert with \
                     `ffmpeg -i {name} -pix_fmt yuv420p out.y4m`"
                )));
            }
            _ => {}
        }
    }
    let (Some(width), Some(height)) = (width, height) else {
        return Err(bad(
            "its header has no valid W (width) and H (height)".into()
        ));
    };
    if !(2..=MAX_FILE_WIDTH).contains(&width) || !(2..=MAX_FILE_HEIGHT).contains(&height) {
        return Err(bad(format!(
            "its pictures are {width}x{height}; convene reads files from 2x2 to \
             {MAX_FILE_WIDTH}x{MAX_FILE_HEIGHT}"
        )));
    }
    // The y4m crate defaults to 25 fps when F is missing, as ffmpeg does.
    let rate = rate.unwrap_or(Rate { num: 25, den: 1 });
    Ok(Header {
        width,
        height,
        rate,
    })
}

impl Y4mReader {
    /// Opens `path` and checks its header: 8-bit 4:2:0, a sane size, a
    /// frame rate above zero.
    pub(crate) fn open(path: &Path) -> Result<Y4mReader, FileError> {
        let header = read_header(path)?;
        let file = File::open(path).map_err(|e| FileError::open(path, e))?;
        let frame_bytes = header.width * header.height * 3 / 2 + header.width + header.height + 4;
        let limits = y4m::Limits { bytes: frame_bytes };
        let decoder = y4m::Decoder::new_with_limits(BufReader::new(file), limits).map_err(|e| {
            FileError::Bad {
                file: path.display().to_string(),
                why: format!("its header does not parse: {e}"),
            }
        })?;
        Ok(Y4mReader {
            path: path.to_path_buf(),
            decoder,
            width: even(header.width),
            height: even(header.height),
            rate: header.rate,
            frames: 0,
        })
    }

    /// Pixels across and down (cropped to even numbers, as the encoder needs).
    pub(crate) fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Frames a second, from the header.
    pub(crate) fn rate(&self) -> Rate {
        self.rate
    }

    /// The next picture, `None` at the end. A last frame cut short ends the
    /// file; a file without one complete frame is an error.
    pub(crate) fn next(&mut self) -> Result<Option<I420>, FileError> {
        let (w, h) = (self.width, self.height);
        let fw = self.decoder.get_width();
        let frame = match self.decoder.read_frame() {
            Ok(f) => f,
            // A frame cut short is the end too (the crate says EOF for both).
            Err(y4m::Error::EOF) if self.frames > 0 => return Ok(None),
            Err(e) => {
                let why = match e {
                    // The crate reports a frame cut short as the end of the file.
                    y4m::Error::EOF => "it holds no complete frame (an empty or cut file)".into(),
                    e => format!("frame {} does not parse: {e}", self.frames + 1),
                };
                return Err(FileError::Bad {
                    file: self.path.display().to_string(),
                    why,
                });
            }
        };
        self.frames += 1;
        let cw = fw.div_ceil(2);
        Ok(Some(I420::from_planes(
            w,
            h,
            (
                frame.get_y_plane(),
                frame.get_u_plane(),
                frame.get_v_plane(),
            ),
            (fw, cw, cw),
        )))
    }

    /// Starts again at the first frame.
    pub(crate) fn rewind(&mut self) -> Result<(), FileError> {
        *self = Y4mReader::open(&self.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Y4M file of `frames` pictures whose luma is the frame's number.
    fn write(dir: &Path, name: &str, header: &str, w: usize, h: usize, frames: u8) -> PathBuf {
        let mut bytes = format!("YUV4MPEG2 {header}\n").into_bytes();
        for n in 0..frames {
            bytes.extend_from_slice(b"FRAME\n");
            bytes.extend(std::iter::repeat_n(n, w * h));
            bytes.extend(std::iter::repeat_n(128, 2 * w.div_ceil(2) * h.div_ceil(2)));
        }
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A directory of the test's own (tests run in parallel).
    fn dir(test: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("convene-y4m-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn error(path: &Path) -> String {
        match Y4mReader::open(path).and_then(|mut r| r.next().map(|_| r)) {
            Ok(_) => panic!("{} opened", path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn frames_come_out_in_order_at_the_header_rate_and_rewind() {
        let d = dir("frames_come_out_in_order_at_the_header_rate_and_rewind");
        let path = write(
            &d,
            "ok.y4m",
            "W16 H8 F30000:1001 Ip A1:1 C420jpeg",
            16,
            8,
            3,
        );
        let mut r = Y4mReader::open(&path).unwrap();
        assert_eq!(r.size(), (16, 8));
        assert!((r.rate().fps() - 29.97).abs() < 0.01);
        let mut lumas = Vec::new();
        while let Some(p) = r.next().unwrap() {
            assert_eq!((p.width(), p.height()), (16, 8));
            lumas.push(p.y()[0]);
        }
        assert_eq!(lumas, [0, 1, 2]);
        r.rewind().unwrap();
        assert_eq!(r.next().unwrap().unwrap().y()[0], 0);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn odd_sizes_are_cropped_to_even() {
        let d = dir("odd_sizes_are_cropped_to_even");
        let path = write(&d, "odd.y4m", "W17 H9 F15:1", 17, 9, 2);
        let mut r = Y4mReader::open(&path).unwrap();
        assert_eq!(r.size(), (16, 8));
        assert_eq!(r.next().unwrap().unwrap().y()[0], 0);
        assert_eq!(r.next().unwrap().unwrap().y()[0], 1);
        assert!(r.next().unwrap().is_none());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_last_frame_cut_short_ends_the_file() {
        let d = dir("a_last_frame_cut_short_ends_the_file");
        let path = write(&d, "cut.y4m", "W16 H8 F15:1", 16, 8, 3);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let mut r = Y4mReader::open(&path).unwrap();
        assert!(r.next().unwrap().is_some());
        assert!(r.next().unwrap().is_some());
        assert!(r.next().unwrap().is_none());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let d = dir("bad_files_say_what_is_wrong");
        let e = error(&write(&d, "444.y4m", "W16 H8 F15:1 C444", 16, 8, 1));
        assert!(e.contains("C444") && e.contains("-pix_fmt yuv420p"), "{e}");
        let e = error(&write(&d, "p10.y4m", "W16 H8 F15:1 C420p10", 16, 8, 1));
        assert!(e.contains("C420p10"), "{e}");
        let e = error(&write(&d, "zero.y4m", "W16 H8 F0:1", 16, 8, 1));
        assert!(e.contains("zero"), "{e}");
        let e = error(&write(&d, "zero-den.y4m", "W16 H8 F30:0", 16, 8, 1));
        assert!(e.contains("zero"), "{e}");
        let e = error(&write(
            &d,
            "huge.y4m",
            "W99999999999999 H99999999999 F15:1",
            0,
            0,
            0,
        ));
        assert!(e.contains("99999999999999x99999999999"), "{e}");
        let e = error(&write(&d, "nosize.y4m", "F15:1", 0, 0, 0));
        assert!(e.contains("W (width)"), "{e}");
        let e = error(&write(&d, "empty.y4m", "W16 H8 F15:1", 16, 8, 0));
        assert!(e.contains("no complete frame"), "{e}");
        let garbage = d.join("garbage.y4m");
        std::fs::write(&garbage, [0xFFu8; 4096]).unwrap();
        assert!(error(&garbage).contains("not a Y4M file"));
        let cut = write(&d, "first-cut.y4m", "W16 H8 F15:1", 16, 8, 1);
        let bytes = std::fs::read(&cut).unwrap();
        std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
        assert!(error(&cut).contains("no complete frame"));
        let _ = std::fs::remove_dir_all(d);
    }
}
