//! Where `convene stream` gets pictures: a camera (through nokhwa, with the
//! `camera` feature), the test pattern, or a file. The camera and the
//! pattern hand out raw bytes in the requested frame format, so the same
//! conversion runs either way; a file's pictures are decoded already.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::file::{FilePictures, Playback};
use crate::frame::{FrameFormat, I420};
use crate::media::unix_micros;
use crate::pattern::{self, Stamp};

/// Which source, from the command line (`--source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourceKind {
    /// A local camera (V4L2 on Linux).
    Camera,
    /// A generated moving picture with a frame counter and timestamp in it.
    TestPattern,
    /// A video file (Y4M, or MP4 with H.264).
    File(PathBuf),
}

/// `--source`: the keywords `camera` and `test-pattern`, anything else a
/// file, which must exist (a typo of a keyword says so rather than "no such file").
pub(crate) fn parse_source(s: &str) -> Result<SourceKind, String> {
    match s {
        "camera" => return Ok(SourceKind::Camera),
        "test-pattern" => return Ok(SourceKind::TestPattern),
        "" => return Err("give camera, test-pattern or a file".into()),
        _ => {}
    }
    let path = PathBuf::from(s);
    if path.is_file() {
        Ok(SourceKind::File(path))
    } else if path.exists() {
        Err(format!("{s} is not a file"))
    } else {
        Err(format!(
            "{s} is neither `camera`, `test-pattern` nor a file that exists"
        ))
    }
}

/// What to open.
#[derive(Debug, Clone)]
pub(crate) struct SourceSpec {
    /// Camera, pattern or file.
    pub(crate) kind: SourceKind,
    /// With a file: how it is played.
    pub(crate) file: Option<Playback>,
    /// Camera index (`/dev/videoN`).
    pub(crate) device_index: u32,
    /// Pixels across.
    pub(crate) width: usize,
    /// Pixels down.
    pub(crate) height: usize,
    /// Frames a second.
    pub(crate) fps: u32,
    /// Raw layout delivered.
    pub(crate) format: FrameFormat,
}

/// One captured picture.
#[derive(Debug)]
pub(crate) struct Captured {
    /// The picture.
    pub(crate) picture: Picture,
    /// When it was captured, µs since the Unix epoch.
    pub(crate) capture_us: u64,
}

/// A picture as a source gives it.
#[derive(Debug)]
pub(crate) enum Picture {
    /// Bytes in the spec's frame format (camera, pattern).
    Raw(Vec<u8>),
    /// Decoded already, at the spec's size (file).
    I420(I420),
}

/// An open source.
pub(crate) enum Source {
    /// A file, paced by its timestamps.
    File(Box<FilePictures>),
    /// The test pattern, paced by the clock.
    Pattern {
        /// Frames a second.
        fps: u32,
        /// The layout the picture is handed out in.
        format: FrameFormat,
        /// Pictures made so far.
        counter: u32,
        /// When picture 0 was due.
        started: Instant,
        /// Reused picture.
        picture: I420,
    },
    /// A camera, paced by the device.
    #[cfg(feature = "camera")]
    Camera(Box<camera::CameraSource>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Pattern { fps, format, .. } => write!(f, "TestPattern({fps} fps, {format})"),
            Source::File(p) => write!(f, "{p:?}"),
            #[cfg(feature = "camera")]
            Source::Camera(_) => f.write_str("Camera"),
        }
    }
}

impl Source {
    /// Opens the source; for a camera this is where a missing device shows.
    pub(crate) fn open(spec: SourceSpec) -> anyhow::Result<Source> {
        match spec.kind {
            SourceKind::File(_) => {
                let playback = spec
                    .file
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("a file source needs its playback"))?;
                Ok(Source::File(Box::new(FilePictures::open(
                    playback,
                    spec.width,
                    spec.height,
                )?)))
            }
            SourceKind::TestPattern => Ok(Source::Pattern {
                picture: I420::black(spec.width, spec.height),
                fps: spec.fps,
                format: spec.format,
                counter: 0,
                started: Instant::now(),
            }),
            SourceKind::Camera => open_camera(spec),
        }
    }

    /// The next picture; blocks until it is due (pattern, file) or
    /// delivered (camera). `None`: the file is over (or its clock stopped).
    pub(crate) fn capture(&mut self) -> anyhow::Result<Option<Captured>> {
        match self {
            Source::File(f) => Ok(f.next()?.map(|p| Captured {
                picture: Picture::I420(p),
                capture_us: unix_micros(),
            })),
            Source::Pattern {
                fps,
                format,
                counter,
                started,
                picture,
            } => {
                let period = Duration::from_secs_f64(1.0 / f64::from((*fps).max(1)));
                let due = *started + period * *counter;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                } else if now - due > period * 2 {
                    // Far behind (a slow encoder): skip ahead rather than burst.
                    let behind = ((now - due).as_secs_f64() / period.as_secs_f64()) as u32;
                    *counter += behind;
                }
                let capture_us = unix_micros();
                pattern::render(
                    picture,
                    Stamp {
                        counter: *counter,
                        unix_ms: capture_us / 1000,
                    },
                );
                *counter += 1;
                Ok(Some(Captured {
                    picture: Picture::Raw(picture.encode_as(*format)),
                    capture_us,
                }))
            }
            #[cfg(feature = "camera")]
            Source::Camera(c) => c.capture().map(Some),
        }
    }
}

#[cfg(not(feature = "camera"))]
fn open_camera(spec: SourceSpec) -> anyhow::Result<Source> {
    anyhow::bail!(
        "cannot open camera {}: this convene was built without the `camera` feature; rebuild with default features, or stream without a camera: --source test-pattern",
        spec.device_index
    )
}

#[cfg(feature = "camera")]
fn open_camera(spec: SourceSpec) -> anyhow::Result<Source> {
    Ok(Source::Camera(Box::new(camera::CameraSource::open(spec)?)))
}

#[cfg(feature = "camera")]
mod camera {
    use anyhow::Context;
    use nokhwa::Camera;
    use nokhwa::pixel_format::RgbFormat;
    use nokhwa::utils::{
        CameraFormat, CameraIndex, FrameFormat as NFormat, RequestedFormat, RequestedFormatType,
        Resolution,
    };

    use super::{Captured, Picture, SourceSpec};
    use crate::frame::FrameFormat;
    use crate::media::unix_micros;

    /// An open camera delivering raw frames.
    pub(crate) struct CameraSource {
        camera: Camera,
    }

    impl CameraSource {
        pub(super) fn open(spec: SourceSpec) -> anyhow::Result<CameraSource> {
            let hint = "or stream without a camera: --source test-pattern";
            if cfg!(target_os = "linux") {
                let dev = format!("/dev/video{}", spec.device_index);
                if !std::path::Path::new(&dev).exists() {
                    anyhow::bail!(
                        "no camera at --video-device-index {} ({dev} does not exist); list cameras with `ls /dev/video*`, {hint}",
                        spec.device_index
                    );
                }
            }
            let format = match spec.format {
                FrameFormat::Nv12 => NFormat::NV12,
                FrameFormat::Yuyv => NFormat::YUYV,
                FrameFormat::Mjpeg => NFormat::MJPEG,
                FrameFormat::I420 => anyhow::bail!(
                    "cameras deliver NV12, YUYV or MJPEG here, not I420; pick one of those with --frame-format"
                ),
            };
            let wanted = CameraFormat::new(
                Resolution::new(spec.width as u32, spec.height as u32),
                format,
                spec.fps,
            );
            let mut camera = Camera::new(
                CameraIndex::Index(spec.device_index),
                RequestedFormat::new::<RgbFormat>(RequestedFormatType::Exact(wanted)),
            )
            .with_context(|| {
                format!(
                    "cannot open camera {} at {}x{} {} {} fps; try another --resolution, --fps or --frame-format, {hint}",
                    spec.device_index, spec.width, spec.height, spec.format, spec.fps
                )
            })?;
            camera
                .open_stream()
                .with_context(|| format!("camera {} will not stream; {hint}", spec.device_index))?;
            Ok(CameraSource { camera })
        }

        pub(super) fn capture(&mut self) -> anyhow::Result<Captured> {
            let frame = self
                .camera
                .frame()
                .context("the camera stopped delivering frames")?;
            Ok(Captured {
                capture_us: unix_micros(),
                picture: Picture::Raw(frame.buffer().to_vec()),
            })
        }
    }
}
