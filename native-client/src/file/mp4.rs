//! MP4 input: H.264 video and Opus sound, demuxed with `shiguredo_mp4`
//! (which does no I/O: it asks for byte ranges and this module reads them,
//! within bounds, so a garbled index never makes us read or hold more than
//! [`MAX_INDEX`] and [`MAX_SAMPLE`] bytes at once).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use shiguredo_mp4::TrackKind;
use shiguredo_mp4::boxes::SampleEntry;
use shiguredo_mp4::demux::{Input, Mp4FileDemuxer};

use super::{FileError, MAX_FILE_HEIGHT, MAX_FILE_WIDTH, Rate, even};

/// The most bytes of header (`ftyp`, `moov`) read: an hour of 60 fps video
/// with sound indexes in a few MB.
const MAX_INDEX: u64 = 64 << 20;
/// The largest sample read: a 4K key frame at a high bitrate is a few MB.
const MAX_SAMPLE: usize = 32 << 20;
/// The most samples a file may hold (about 46 hours at 60 fps with sound):
/// the index is walked once on opening, so a crafted one must not make that
/// walk endless.
const MAX_SAMPLES: u64 = 20_000_000;

/// The H.264 track, as its sample entry describes it.
#[derive(Debug, Clone)]
pub(crate) struct VideoTrack {
    track_id: u32,
    timescale: u32,
    /// Pixels across and down, cropped to even numbers.
    pub(crate) width: usize,
    pub(crate) height: usize,
    /// SPS and PPS as Annex B, put before every key frame so the decoder
    /// can start (or start again) there.
    parameter_sets: Vec<u8>,
    /// Bytes in each NAL unit's length prefix.
    length_size: usize,
    /// The earliest presentation time (timescale units): playback starts there.
    first_pts: i64,
    /// Pictures in the track.
    pub(crate) samples: u64,
    /// From the first picture to the end of the last.
    pub(crate) duration: Duration,
}

impl VideoTrack {
    /// Frames a second: pictures over the time they cover.
    pub(crate) fn rate(&self) -> Option<Rate> {
        let ticks = (self.duration.as_nanos() * u128::from(self.timescale) / 1_000_000_000) as u64;
        Rate::new(self.samples.checked_mul(u64::from(self.timescale))?, ticks)
    }
}

/// The sound track, if any.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Sound {
    /// No sound track.
    None,
    /// Opus, which is played.
    Opus {
        /// Its track.
        track_id: u32,
        /// Samples (at 48 kHz) the decoder makes before the sound starts.
        pre_skip: u16,
        /// The gain to apply, in dB.
        gain_db: f64,
        /// How long the sound lasts.
        duration: Duration,
    },
    /// A codec not played here, by its sample entry's name (`mp4a` is AAC).
    Other(String),
}

/// One access unit of the video, ready for OpenH264.
#[derive(Debug)]
pub(crate) struct VideoSample {
    /// When it is shown, from the start of the file.
    pub(crate) pts: Duration,
    /// Annex B NAL units (with SPS and PPS before a key frame).
    pub(crate) data: Vec<u8>,
}

/// An open MP4 file.
pub(crate) struct Mp4Reader {
    path: PathBuf,
    file: File,
    len: u64,
    /// The demuxer as it was after reading the index, to start again from.
    start: Mp4FileDemuxer,
    demuxer: Mp4FileDemuxer,
    video: VideoTrack,
    sound: Sound,
}

impl std::fmt::Debug for Mp4Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mp4Reader({})", self.path.display())
    }
}

fn entry_name(e: &SampleEntry) -> String {
    match e {
        SampleEntry::Avc1(_) => "H.264 (avc1)".into(),
        SampleEntry::Hev1(_) | SampleEntry::Hvc1(_) => "H.265".into(),
        SampleEntry::Vp08(_) => "VP8".into(),
        SampleEntry::Vp09(_) => "VP9".into(),
        SampleEntry::Av01(_) => "AV1".into(),
        SampleEntry::Opus(_) => "Opus".into(),
        SampleEntry::Mp4a(_) => "AAC (mp4a)".into(),
        SampleEntry::Flac(_) => "FLAC".into(),
        SampleEntry::Unknown(b) => format!("`{}`", b.box_type),
        _ => "a codec convene does not know".into(),
    }
}

/// What the index walk finds about one track.
#[derive(Debug, Default)]
struct Walk {
    entry: Option<SampleEntry>,
    samples: u64,
    first_pts: Option<i64>,
    end: i64,
}

impl Mp4Reader {
    /// Opens `path`, reads its index and checks it: an H.264 track, samples
    /// inside the file, a frame rate above zero.
    pub(crate) fn open(path: &Path) -> Result<Mp4Reader, FileError> {
        let name = path.display().to_string();
        let bad = |why: String| FileError::Bad {
            file: name.clone(),
            why,
        };
        let mut file = File::open(path).map_err(|e| FileError::open(path, e))?;
        let len = file.metadata().map_err(|e| FileError::open(path, e))?.len();
        let mut demuxer = Mp4FileDemuxer::new();
        // The last range asked for ran past the end of the file.
        let mut short = false;
        while let Some(want) = demuxer.required_input() {
            if want.position >= len && want.position > 0 {
                return Err(bad(
                    "it has no index (`moov` box): it was cut short before the end was written, \
                     or it is not an MP4 file"
                        .into(),
                ));
            }
            short = want
                .size
                .is_some_and(|s| want.position.saturating_add(s as u64) > len);
            let size = want
                .size
                .map_or(len - want.position, |s| s as u64)
                .min(len - want.position);
            if size > MAX_INDEX {
                return Err(bad(format!(
                    "its index is {size} bytes, more than the {MAX_INDEX} convene reads"
                )));
            }
            let mut data = vec![0; size as usize];
            read_at(&mut file, want.position, &mut data).map_err(|e| FileError::open(path, e))?;
            demuxer.handle_input(Input {
                position: want.position,
                data: &data,
            });
        }
        let tracks = demuxer
            .tracks()
            .map_err(|e| {
                bad(if short {
                    "it is cut short: its header or index runs past the end of the file \
                     (an interrupted recording or download?)"
                        .into()
                } else {
                    format!("it is not an MP4 file convene can read ({e})")
                })
            })?
            .to_vec();
        let start = demuxer.clone();
        let mut walks: Vec<(u32, TrackKind, u32, Walk)> = tracks
            .iter()
            .map(|t| (t.track_id, t.kind, t.timescale.get(), Walk::default()))
            .collect();
        let mut total = 0u64;
        loop {
            let s = match demuxer.next_sample() {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(e) => return Err(bad(format!("its index does not read ({e})"))),
            };
            total += 1;
            if total > MAX_SAMPLES {
                return Err(bad(format!(
                    "it holds more than {MAX_SAMPLES} samples, more than convene plays"
                )));
            }
            let end = s.data_offset.checked_add(s.data_size as u64);
            if end.is_none_or(|end| end > len) {
                return Err(bad(format!(
                    "it is cut short: a sample of track {} lies beyond the end of the file",
                    s.track.track_id
                )));
            }
            if s.data_size > MAX_SAMPLE {
                return Err(bad(format!(
                    "a sample of track {} is {} bytes, more than the {MAX_SAMPLE} convene reads",
                    s.track.track_id, s.data_size
                )));
            }
            let Some((_, _, _, w)) = walks.iter_mut().find(|w| w.0 == s.track.track_id) else {
                continue;
            };
            if w.entry.is_none() {
                w.entry = s.sample_entry.cloned();
            }
            w.samples += 1;
            let pts = s.timestamp as i64 + s.composition_time_offset.unwrap_or(0);
            w.first_pts = Some(w.first_pts.map_or(pts, |f| f.min(pts)));
            w.end = w.end.max(pts + i64::from(s.duration));
        }
        let since = |w: &Walk, timescale: u32| {
            let ticks = (w.end - w.first_pts.unwrap_or(0)).max(0) as u128;
            Duration::from_nanos((ticks * 1_000_000_000 / u128::from(timescale)) as u64)
        };
        let mut video = None;
        let mut other_video = None;
        for (track_id, kind, timescale, w) in &walks {
            if *kind != TrackKind::Video || video.is_some() {
                continue;
            }
            match &w.entry {
                Some(SampleEntry::Avc1(avc1)) => {
                    let (fw, fh) = (
                        usize::from(avc1.visual.width),
                        usize::from(avc1.visual.height),
                    );
                    if !(2..=MAX_FILE_WIDTH).contains(&fw) || !(2..=MAX_FILE_HEIGHT).contains(&fh) {
                        return Err(bad(format!(
                            "its pictures are {fw}x{fh}; convene reads files from 2x2 to \
                             {MAX_FILE_WIDTH}x{MAX_FILE_HEIGHT}"
                        )));
                    }
                    let mut parameter_sets = Vec::new();
                    for nal in avc1.avcc_box.sps_list.iter().chain(&avc1.avcc_box.pps_list) {
                        parameter_sets.extend_from_slice(&[0, 0, 0, 1]);
                        parameter_sets.extend_from_slice(nal);
                    }
                    video = Some(VideoTrack {
                        track_id: *track_id,
                        timescale: *timescale,
                        width: even(fw),
                        height: even(fh),
                        parameter_sets,
                        length_size: usize::from(avc1.avcc_box.length_size_minus_one.get()) + 1,
                        first_pts: w.first_pts.unwrap_or(0),
                        samples: w.samples,
                        duration: since(w, *timescale),
                    });
                }
                Some(e) => other_video = Some(entry_name(e)),
                None => {}
            }
        }
        let Some(video) = video else {
            return Err(bad(match other_video {
                Some(codec) => format!(
                    "its video is {codec}; convene plays H.264: convert with \
                     `ffmpeg -i {name} -c:v libx264 -pix_fmt yuv420p -c:a libopus out.mp4`"
                ),
                None => "it has no video track with pictures".into(),
            }));
        };
        if video.rate().is_none() {
            return Err(bad(
                "its pictures all have the same time, so it has no frame rate".into(),
            ));
        }
        let sound = walks
            .iter()
            .find(|w| w.1 == TrackKind::Audio && w.3.entry.is_some())
            .map_or(Sound::None, |(track_id, _, timescale, w)| {
                match w.entry.as_ref() {
                    Some(SampleEntry::Opus(opus)) => Sound::Opus {
                        track_id: *track_id,
                        pre_skip: opus.dops_box.pre_skip,
                        gain_db: f64::from(opus.dops_box.output_gain) / 256.0,
                        duration: since(w, *timescale),
                    },
                    Some(e) => Sound::Other(entry_name(e)),
                    None => Sound::None,
                }
            });
        Ok(Mp4Reader {
            path: path.to_path_buf(),
            file,
            len,
            demuxer: start.clone(),
            start,
            video,
            sound,
        })
    }

    /// The H.264 track.
    pub(crate) fn video(&self) -> &VideoTrack {
        &self.video
    }

    /// The sound track.
    pub(crate) fn sound(&self) -> &Sound {
        &self.sound
    }

    /// Starts again at the beginning.
    pub(crate) fn rewind(&mut self) {
        self.demuxer = self.start.clone();
    }

    /// The next picture's access unit, `None` at the end.
    pub(crate) fn next_video(&mut self) -> Result<Option<VideoSample>, FileError> {
        let (track_id, first_pts, timescale) = (
            self.video.track_id,
            self.video.first_pts,
            self.video.timescale,
        );
        loop {
            let s = match self.demuxer.next_sample() {
                Ok(Some(s)) => s,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.bad(format!("its index does not read ({e})"))),
            };
            if s.track.track_id != track_id {
                continue;
            }
            let (offset, size, key) = (s.data_offset, s.data_size, s.keyframe);
            let pts = (s.timestamp as i64 + s.composition_time_offset.unwrap_or(0) - first_pts)
                .max(0) as u128;
            let pts = Duration::from_nanos((pts * 1_000_000_000 / u128::from(timescale)) as u64);
            let raw = self.read_sample(offset, size)?;
            let mut data = Vec::with_capacity(raw.len() + self.video.parameter_sets.len() + 16);
            if key {
                data.extend_from_slice(&self.video.parameter_sets);
            }
            to_annexb(&raw, self.video.length_size, &mut data).map_err(|why| self.bad(why))?;
            return Ok(Some(VideoSample { pts, data }));
        }
    }

    /// The next Opus packet of the sound track, `None` at the end (or
    /// without an Opus track).
    pub(crate) fn next_opus(&mut self) -> Result<Option<Vec<u8>>, FileError> {
        let Sound::Opus { track_id, .. } = self.sound else {
            return Ok(None);
        };
        loop {
            let s = match self.demuxer.next_sample() {
                Ok(Some(s)) => s,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.bad(format!("its index does not read ({e})"))),
            };
            if s.track.track_id == track_id {
                let (offset, size) = (s.data_offset, s.data_size);
                return self.read_sample(offset, size).map(Some);
            }
        }
    }

    fn read_sample(&mut self, offset: u64, size: usize) -> Result<Vec<u8>, FileError> {
        // Checked on opening too; the file may have shrunk since.
        if size > MAX_SAMPLE || offset.saturating_add(size as u64) > self.len {
            return Err(self.bad("a sample lies beyond the end of the file".into()));
        }
        let mut data = vec![0; size];
        read_at(&mut self.file, offset, &mut data).map_err(|e| FileError::open(&self.path, e))?;
        Ok(data)
    }

    fn bad(&self, why: String) -> FileError {
        FileError::Bad {
            file: self.path.display().to_string(),
            why,
        }
    }
}

fn read_at(file: &mut File, at: u64, into: &mut [u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(into)
}

/// Length-prefixed NAL units (as MP4 stores them) to Annex B (as OpenH264
/// takes them), appended to `out`.
fn to_annexb(mut data: &[u8], length_size: usize, out: &mut Vec<u8>) -> Result<(), String> {
    while !data.is_empty() {
        if data.len() < length_size {
            return Err("a video sample ends inside a NAL unit's length".into());
        }
        let (len, rest) = data.split_at(length_size);
        let len = len.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
        if len > rest.len() {
            return Err("a video sample's NAL unit runs past the sample".into());
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(&rest[..len]);
        data = &rest[len..];
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::frame::I420;
    use crate::h264::{EncoderSettings, H264Encoder};
    use shiguredo_mp4::mux::{Mp4FileMuxer, Sample as MuxSample};

    /// A directory of the test's own (tests run in parallel).
    fn dir(test: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("convene-mp4-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Writes an MP4 of `frames` pictures of 160x120 at `fps` (H.264 from
    /// OpenH264, luma rising by 8 a picture) and, with `tone`, Opus packets of
    /// a 440 Hz tone (pre-skip 312) as long as the pictures.
    pub(crate) fn write(path: &Path, frames: u32, fps: u32, tone: bool) {
        write_with(path, frames, fps, tone, 1, None);
    }

    /// [`write`] with each picture lasting `ticks` of 1/`fps` s, and the
    /// sample entry claiming `width` pixels across if given.
    fn write_with(path: &Path, frames: u32, fps: u32, tone: bool, ticks: u32, width: Option<u16>) {
        use shiguredo_mp4::bitstream::h264::{
            H264SampleEntryConfig, LengthSize, build_avc1_box_from_annexb,
        };
        use shiguredo_mp4::bitstream::opus::{ChannelCount, OpusSampleEntryConfig, build_opus_box};
        use std::io::Write;
        use std::num::NonZeroU32;

        let mut muxer = Mp4FileMuxer::new().unwrap();
        let mut out = muxer.initial_boxes_bytes().to_vec();
        let mut encoder = H264Encoder::new(EncoderSettings {
            bitrate_kbps: 300,
            fps,
        })
        .unwrap();
        let mut opus = crate::audio::Encoder::new(crate::audio::Codec::Opus).unwrap();
        let mut sine = crate::audio::Tone::at(440.0, -12.0, 48_000);
        let audio_frames = frames * 50 / fps;
        let (mut v, mut a) = (0, 0);
        while v < frames || (tone && a < audio_frames) {
            // Interleave by time, as a muxer would.
            let video_first = v < frames && (!tone || a >= audio_frames || v * 50 <= a * fps);
            let (kind, entry, key, timescale, duration, data) = if video_first {
                let mut p = I420::black(160, 120);
                p.planes_mut().0.fill((16 + 8 * v) as u8);
                let e = encoder.encode(&p, false).unwrap();
                assert!(!e.data.is_empty());
                let entry = (v == 0).then(|| {
                    let mut avc1 = build_avc1_box_from_annexb(
                        &e.data,
                        &H264SampleEntryConfig {
                            length_size: LengthSize::FourBytes,
                        },
                    )
                    .unwrap();
                    if let Some(w) = width {
                        avc1.visual.width = w;
                    }
                    SampleEntry::Avc1(avc1)
                });
                let mut data = Vec::new();
                for nal in shiguredo_mp4::bitstream::h264::parse_annexb_nal_units(&e.data).unwrap()
                {
                    let nal: &[u8] = nal.data;
                    data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                    data.extend_from_slice(nal);
                }
                v += 1;
                (TrackKind::Video, entry, e.key, fps, ticks, data)
            } else {
                let packet = loop {
                    // DTX leaves out silence; a tone is never silent.
                    if let Some(p) = opus.encode(&sine.next_samples(960)).unwrap() {
                        break p;
                    }
                };
                let entry = (a == 0).then(|| {
                    SampleEntry::Opus(build_opus_box(&OpusSampleEntryConfig {
                        channel_count: ChannelCount::Mono,
                        pre_skip: 312,
                        input_sample_rate: 48_000,
                        output_gain: 0,
                    }))
                });
                a += 1;
                (TrackKind::Audio, entry, true, 50, 1, packet)
            };
            muxer
                .append_sample(&MuxSample {
                    track_kind: kind,
                    sample_entry: entry,
                    keyframe: key,
                    timescale: NonZeroU32::new(timescale).unwrap(),
                    duration,
                    composition_time_offset: None,
                    data_offset: out.len() as u64,
                    data_size: data.len(),
                })
                .unwrap();
            out.extend_from_slice(&data);
        }
        let finalized = muxer.finalize().unwrap();
        for (offset, bytes) in finalized.offset_and_bytes_pairs() {
            let end = offset as usize + bytes.len();
            if out.len() < end {
                out.resize(end, 0);
            }
            out[offset as usize..end].copy_from_slice(bytes);
        }
        std::fs::File::create(path)
            .unwrap()
            .write_all(&out)
            .unwrap();
    }

    #[test]
    fn an_mp4_gives_its_pictures_in_order_and_its_opus_packets() {
        let d = dir("an_mp4_gives_its_pictures_in_order_and_its_opus_packets");
        let path = d.join("clip.mp4");
        write(&path, 20, 10, true);
        let mut r = Mp4Reader::open(&path).unwrap();
        let v = r.video().clone();
        assert_eq!((v.width, v.height, v.samples), (160, 120, 20));
        assert_eq!(v.duration, Duration::from_secs(2));
        assert!((v.rate().unwrap().fps() - 10.0).abs() < 1e-9);
        let Sound::Opus {
            pre_skip, duration, ..
        } = r.sound().clone()
        else {
            panic!("{:?}", r.sound());
        };
        assert_eq!((pre_skip, duration), (312, Duration::from_secs(2)));
        let mut decoder = crate::h264::H264Decoder::new().unwrap();
        let mut pts = Vec::new();
        while let Some(s) = r.next_video().unwrap() {
            pts.push(s.pts.as_millis());
            let p = decoder
                .decode(&s.data)
                .unwrap()
                .expect("a picture per sample");
            assert_eq!((p.width(), p.height()), (160, 120));
            let expected = 16 + 8 * (pts.len() as i32 - 1);
            assert!(
                (i32::from(p.y()[80 * 60]) - expected).abs() <= 3,
                "picture {}",
                pts.len()
            );
        }
        assert_eq!(pts, (0..20).map(|n| n * 100).collect::<Vec<_>>());
        r.rewind();
        let mut packets = 0;
        let mut opus = crate::audio::Decoder::for_codec("opus").unwrap();
        while let Some(p) = r.next_opus().unwrap() {
            assert_eq!(opus.decode(&p).unwrap().len(), 960);
            packets += 1;
        }
        assert_eq!(packets, 100);
        r.rewind();
        assert_eq!(r.next_video().unwrap().unwrap().pts, Duration::ZERO);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_file_without_a_frame_rate_or_with_huge_pictures_is_refused() {
        let d = dir("a_file_without_a_frame_rate_or_with_huge_pictures_is_refused");
        let still = d.join("still.mp4");
        write_with(&still, 5, 10, false, 0, None);
        let e = Mp4Reader::open(&still).unwrap_err().to_string();
        assert!(e.contains("no frame rate"), "{e}");
        let huge = d.join("huge-pictures.mp4");
        write_with(&huge, 5, 10, false, 1, Some(20_000));
        let e = Mp4Reader::open(&huge).unwrap_err().to_string();
        assert!(e.contains("20000x120"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_file_cut_in_its_samples_is_refused_on_opening() {
        let d = dir("a_file_cut_in_its_samples_is_refused_on_opening");
        let path = d.join("moov-first.mp4");
        write(&path, 10, 10, false);
        // The muxer writes the index first (it reserves room for it), so
        // cutting the end cuts samples, which the index still points at.
        let bytes = std::fs::read(&path).unwrap();
        let cut = d.join("cut-samples.mp4");
        std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
        let e = Mp4Reader::open(&cut).unwrap_err().to_string();
        assert!(e.contains("cut short"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn nal_lengths_become_start_codes() {
        let mut out = Vec::new();
        to_annexb(&[0, 0, 0, 2, 0x65, 1, 0, 0, 0, 1, 0x41], 4, &mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 1, 0x65, 1, 0, 0, 0, 1, 0x41]);
        assert!(to_annexb(&[0, 0, 0, 9, 0x65], 4, &mut Vec::new()).is_err());
        assert!(to_annexb(&[0, 0], 4, &mut Vec::new()).is_err());
    }

    #[test]
    fn garbage_and_cut_files_say_what_is_wrong() {
        let d = dir("garbage_and_cut_files_say_what_is_wrong");
        let garbage = d.join("garbage.mp4");
        std::fs::write(&garbage, [0xA5u8; 10_000]).unwrap();
        let e = Mp4Reader::open(&garbage).unwrap_err().to_string();
        assert!(e.contains("garbage.mp4"), "{e}");
        let empty = d.join("empty.mp4");
        std::fs::write(&empty, []).unwrap();
        assert!(Mp4Reader::open(&empty).is_err());
        // An ftyp box and then nothing: the index never came.
        let cut = d.join("cut.mp4");
        let mut ftyp = vec![0, 0, 0, 20];
        ftyp.extend_from_slice(b"ftypisom\0\0\0\0isom");
        std::fs::write(&cut, &ftyp).unwrap();
        let e = Mp4Reader::open(&cut).unwrap_err().to_string();
        assert!(e.contains("cut short"), "{e}");
        // A box claiming 4 GiB after the ftyp.
        let mut huge = ftyp.clone();
        huge.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xF0]);
        huge.extend_from_slice(b"moov");
        huge.extend_from_slice(&[0; 64]);
        let path = d.join("huge.mp4");
        std::fs::write(&path, &huge).unwrap();
        assert!(Mp4Reader::open(&path).is_err());
        let _ = std::fs::remove_dir_all(d);
    }
}
