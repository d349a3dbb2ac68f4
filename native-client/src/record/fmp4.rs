//! Fragmented MP4 (ISO/IEC 14496-12), one track a file, written so that a
//! crash loses nothing before the last complete fragment: the header
//! (`ftyp` + `moov`) goes to disk first, then each fragment (`moof` +
//! `mdat`) in one write followed by `fdatasync`. A player reads the file
//! while it grows, and after a `kill -9` up to its last whole fragment.
//!
//! H.264 goes in an `avc1` sample entry (parameter sets in `avcC`, and kept
//! in band too, so a change of picture size mid-recording still decodes);
//! Opus in an `Opus` sample entry with its `dOps` box (the Opus in ISOBMFF
//! encapsulation). Fragments are also the units of the HLS playlists
//! (`hls.rs`): the same bytes serve the recording and the live stream.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Pictures are timed in 1/90000 s, as in RTP.
pub(crate) const VIDEO_TIMESCALE: u32 = 90_000;
/// Sound is timed in samples at 48 kHz (Opus's clock, whatever its bandwidth).
pub(crate) const AUDIO_TIMESCALE: u32 = 48_000;
/// The movie's own timescale (durations in `mvhd`/`mehd`): milliseconds.
const MOVIE_TIMESCALE: u32 = 1000;
/// Opus's encoder delay at 48 kHz (libopus and browsers alike), in samples.
pub(crate) const OPUS_PRE_SKIP: u16 = 312;
/// A fragment is closed before every key frame (so fragments, and HLS
/// segments made of them, start where a decoder can), and before any
/// sample once it holds this long: what a crash may lose.
const FRAGMENT_MAX_SECONDS: f64 = 1.0;
/// A fragment is closed once it holds this many bytes, whatever its length.
const FRAGMENT_MAX_BYTES: usize = 8 << 20;

/// What the one track of a file carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Media {
    /// H.264 pictures of this size, with these parameter sets (without start codes).
    H264 {
        /// Pixels.
        width: u16,
        /// Pixels.
        height: u16,
        /// The sequence parameter set.
        sps: Vec<u8>,
        /// The picture parameter set.
        pps: Vec<u8>,
    },
    /// Opus sound with this many channels.
    Opus {
        /// 1 or 2.
        channels: u8,
    },
}

impl Media {
    fn timescale(&self) -> u32 {
        match self {
            Media::H264 { .. } => VIDEO_TIMESCALE,
            Media::Opus { .. } => AUDIO_TIMESCALE,
        }
    }

    /// The RFC 6381 codec string (HLS's CODECS attribute).
    pub(crate) fn codec_string(&self) -> String {
        match self {
            Media::H264 { sps, .. } if sps.len() >= 4 => {
                format!("avc1.{:02X}{:02X}{:02X}", sps[1], sps[2], sps[3])
            }
            Media::H264 { .. } => "avc1.42E01F".into(),
            Media::Opus { .. } => "opus".into(),
        }
    }
}

/// One fragment as written: where it is and what time it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fragment {
    /// Byte offset of its `moof` in the file.
    pub(crate) offset: u64,
    /// Bytes of `moof` + `mdat`.
    pub(crate) size: u64,
    /// Decode time of its first sample, in the track's timescale.
    pub(crate) start: u64,
    /// Its length, in the track's timescale.
    pub(crate) duration: u64,
    /// It begins with a key frame (every sound fragment does).
    pub(crate) starts_with_key: bool,
}

/// A sample waiting for the fragment it will close in.
struct Pending {
    dts: u64,
    data: Vec<u8>,
    key: bool,
}

/// A single-track fragmented MP4 file being written.
pub(crate) struct TrackFile {
    file: File,
    path: PathBuf,
    timescale: u32,
    /// Where `mehd`'s duration is, to set it when the file is finished.
    mehd_at: u64,
    /// Bytes of `ftyp` + `moov`.
    init_len: u64,
    len: u64,
    sequence: u32,
    pending: Vec<Pending>,
    pending_bytes: usize,
    /// Decode time of the last sample taken.
    last_dts: Option<u64>,
    /// Decode time where the first sample starts.
    first_dts: Option<u64>,
    /// Every fragment written, oldest first.
    fragments: Vec<Fragment>,
    key_aligned: bool,
    samples: u64,
    codec: String,
}

impl TrackFile {
    /// Creates `path` for `media` and writes its header to disk.
    pub(crate) fn create(path: &Path, media: &Media) -> std::io::Result<TrackFile> {
        let mut file = File::create(path)?;
        let ftyp = ftyp();
        let (moov, mehd_in_moov) = moov(media);
        let mut init = ftyp;
        let mehd_at = (init.len() + mehd_in_moov) as u64;
        init.extend_from_slice(&moov);
        file.write_all(&init)?;
        file.sync_data()?;
        Ok(TrackFile {
            file,
            path: path.to_path_buf(),
            timescale: media.timescale(),
            mehd_at,
            init_len: init.len() as u64,
            len: init.len() as u64,
            sequence: 0,
            pending: Vec::new(),
            pending_bytes: 0,
            last_dts: None,
            first_dts: None,
            fragments: Vec::new(),
            key_aligned: matches!(media, Media::H264 { .. }),
            samples: 0,
            codec: media.codec_string(),
        })
    }

    /// The file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The RFC 6381 codec string of the track.
    pub(crate) fn codec(&self) -> &str {
        &self.codec
    }

    /// The track's ticks a second.
    pub(crate) fn timescale(&self) -> u32 {
        self.timescale
    }

    /// Bytes of the header (`ftyp` + `moov`), the HLS initialization section.
    pub(crate) fn init_len(&self) -> u64 {
        self.init_len
    }

    /// Every fragment written so far.
    pub(crate) fn fragments(&self) -> &[Fragment] {
        &self.fragments
    }

    /// Bytes on disk.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Samples taken.
    pub(crate) fn samples(&self) -> u64 {
        self.samples
    }

    /// Decode time of the last sample taken.
    pub(crate) fn last_dts(&self) -> Option<u64> {
        self.last_dts
    }

    /// Decode time of the first sample.
    pub(crate) fn first_dts(&self) -> Option<u64> {
        self.first_dts
    }

    /// Adds a sample decoded at `dts` (track timescale), which must be later
    /// than the one before (an earlier one is refused: false). Writes the
    /// fragment before it when that one is long enough; returns it then.
    pub(crate) fn push(
        &mut self,
        dts: u64,
        data: Vec<u8>,
        key: bool,
    ) -> std::io::Result<(bool, Option<Fragment>)> {
        if self.last_dts.is_some_and(|last| dts <= last) {
            return Ok((false, None));
        }
        let mut written = None;
        if let Some(first) = self.pending.first() {
            let held = (dts - first.dts) as f64 / f64::from(self.timescale);
            let close = held >= FRAGMENT_MAX_SECONDS
                || self.pending_bytes >= FRAGMENT_MAX_BYTES
                || (key && self.key_aligned);
            if close {
                written = Some(self.write_fragment(dts)?);
            }
        }
        self.first_dts.get_or_insert(dts);
        self.last_dts = Some(dts);
        self.pending_bytes += data.len();
        self.pending.push(Pending { dts, data, key });
        self.samples += 1;
        Ok((true, written))
    }

    /// Writes what is held, the last sample lasting `last_duration` ticks,
    /// sets the file's duration, and closes it.
    pub(crate) fn finish(
        mut self,
        last_duration: u64,
    ) -> std::io::Result<(PathBuf, Option<Fragment>)> {
        let written = self.flush(last_duration)?;
        if let (Some(first), Some(fragment)) = (self.first_dts, self.fragments.last()) {
            let end = fragment.start + fragment.duration;
            let ms = (end - first) * u64::from(MOVIE_TIMESCALE) / u64::from(self.timescale);
            self.file.seek(SeekFrom::Start(self.mehd_at))?;
            self.file.write_all(&ms.to_be_bytes())?;
            self.file.sync_data()?;
        }
        Ok((self.path, written))
    }

    /// Writes what is held as a fragment now, its last sample lasting
    /// `last_duration` ticks (the next sample must start after that).
    pub(crate) fn flush(&mut self, last_duration: u64) -> std::io::Result<Option<Fragment>> {
        let Some(last) = self.pending.last() else {
            return Ok(None);
        };
        let end = last.dts + last_duration.max(1);
        let fragment = self.write_fragment(end)?;
        self.last_dts = Some(end - 1);
        Ok(Some(fragment))
    }

    /// Writes the held samples as one fragment, the last one ending at `end`.
    fn write_fragment(&mut self, end: u64) -> std::io::Result<Fragment> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.sequence += 1;
        let start = pending[0].dts;
        let mut entries = Vec::with_capacity(pending.len());
        for (i, s) in pending.iter().enumerate() {
            let next = pending.get(i + 1).map_or(end, |n| n.dts);
            let duration = u32::try_from(next - s.dts).unwrap_or(u32::MAX);
            entries.push((duration, s.data.len() as u32, s.key));
        }
        let moof = moof(self.sequence, start, &entries);
        let payload: usize = pending.iter().map(|s| s.data.len()).sum();
        let mut bytes = Vec::with_capacity(moof.len() + 8 + payload);
        bytes.extend_from_slice(&moof);
        bytes.extend_from_slice(&((8 + payload) as u32).to_be_bytes());
        bytes.extend_from_slice(b"mdat");
        for s in &pending {
            bytes.extend_from_slice(&s.data);
        }
        self.file.write_all(&bytes)?;
        self.file.sync_data()?;
        let fragment = Fragment {
            offset: self.len,
            size: bytes.len() as u64,
            start,
            duration: end - start,
            starts_with_key: pending[0].key,
        };
        self.len += bytes.len() as u64;
        self.fragments.push(fragment);
        Ok(fragment)
    }
}

/// A box: size, type, body.
fn bx(kind: &[u8; 4], parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = 8 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_be_bytes());
    b.extend_from_slice(kind);
    for p in parts {
        b.extend_from_slice(p);
    }
    b
}

/// A full box: a box whose body starts with a version and 24 bits of flags.
fn full(kind: &[u8; 4], version: u8, flags: u32, parts: &[&[u8]]) -> Vec<u8> {
    let mut head = flags.to_be_bytes();
    head[0] = version;
    let mut all: Vec<&[u8]> = vec![&head];
    all.extend_from_slice(parts);
    bx(kind, &all)
}

/// The unity matrix of `mvhd` and `tkhd`.
const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

fn be32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn ftyp() -> Vec<u8> {
    // iso6 for fragments with tfdt; cmfc: a CMAF track file, as HLS wants.
    bx(
        b"ftyp",
        &[b"iso6", &0u32.to_be_bytes(), b"iso6", b"cmfc", b"mp41"],
    )
}

/// `moov` for one track, and where in it `mehd`'s 64-bit duration sits.
fn moov(media: &Media) -> (Vec<u8>, usize) {
    let mvhd = full(
        b"mvhd",
        0,
        0,
        &[
            &be32s(&[0, 0, MOVIE_TIMESCALE, 0, 0x0001_0000]),
            &0x0100u16.to_be_bytes(),
            &[0u8; 10],
            &be32s(&MATRIX),
            &[0u8; 24],
            &2u32.to_be_bytes(),
        ],
    );
    let trak = trak(media);
    let mehd = full(b"mehd", 1, 0, &[&0u64.to_be_bytes()]);
    let trex = full(b"trex", 0, 0, &[&be32s(&[1, 1, 0, 0, 0])]);
    let mvex = bx(b"mvex", &[&mehd, &trex]);
    // moov header, mvhd, trak, then mvex: its header, mehd's header and
    // version/flags come before the duration.
    let mehd_at = 8 + mvhd.len() + trak.len() + 8 + 12;
    (bx(b"moov", &[&mvhd, &trak, &mvex]), mehd_at)
}

fn trak(media: &Media) -> Vec<u8> {
    let (width, height, volume) = match media {
        Media::H264 { width, height, .. } => (u32::from(*width), u32::from(*height), 0u16),
        Media::Opus { .. } => (0, 0, 0x0100),
    };
    let tkhd = full(
        b"tkhd",
        0,
        3, // enabled, in the movie
        &[
            &be32s(&[0, 0, 1, 0, 0]),
            &[0u8; 8],
            &0u16.to_be_bytes(),
            &0u16.to_be_bytes(),
            &volume.to_be_bytes(),
            &[0u8; 2],
            &be32s(&MATRIX),
            &be32s(&[width << 16, height << 16]),
        ],
    );
    let mdhd = full(
        b"mdhd",
        0,
        0,
        &[
            &be32s(&[0, 0, media.timescale(), 0]),
            &0x55C4u16.to_be_bytes(), // "und"
            &[0u8; 2],
        ],
    );
    let (handler, name): (&[u8; 4], &[u8]) = match media {
        Media::H264 { .. } => (b"vide", b"Convene video\0"),
        Media::Opus { .. } => (b"soun", b"Convene sound\0"),
    };
    let hdlr = full(b"hdlr", 0, 0, &[&[0u8; 4], handler, &[0u8; 12], name]);
    let media_header = match media {
        Media::H264 { .. } => full(b"vmhd", 0, 1, &[&[0u8; 8]]),
        Media::Opus { .. } => full(b"smhd", 0, 0, &[&[0u8; 4]]),
    };
    let url = full(b"url ", 0, 1, &[]);
    let dref = full(b"dref", 0, 0, &[&1u32.to_be_bytes(), &url]);
    let dinf = bx(b"dinf", &[&dref]);
    let stsd = full(b"stsd", 0, 0, &[&1u32.to_be_bytes(), &sample_entry(media)]);
    let stts = full(b"stts", 0, 0, &[&0u32.to_be_bytes()]);
    let stsc = full(b"stsc", 0, 0, &[&0u32.to_be_bytes()]);
    let stsz = full(b"stsz", 0, 0, &[&0u32.to_be_bytes(), &0u32.to_be_bytes()]);
    let stco = full(b"stco", 0, 0, &[&0u32.to_be_bytes()]);
    let stbl = bx(b"stbl", &[&stsd, &stts, &stsc, &stsz, &stco]);
    let minf = bx(b"minf", &[&media_header, &dinf, &stbl]);
    let mdia = bx(b"mdia", &[&mdhd, &hdlr, &minf]);
    bx(b"trak", &[&tkhd, &mdia])
}

fn sample_entry(media: &Media) -> Vec<u8> {
    match media {
        Media::H264 {
            width,
            height,
            sps,
            pps,
        } => {
            let mut avcc = vec![
                1,
                sps.get(1).copied().unwrap_or(0x42),
                sps.get(2).copied().unwrap_or(0xE0),
                sps.get(3).copied().unwrap_or(0x1F),
                0xFF, // 4-byte NAL lengths
                0xE1, // one SPS
            ];
            avcc.extend_from_slice(&(sps.len() as u16).to_be_bytes());
            avcc.extend_from_slice(sps);
            avcc.push(1);
            avcc.extend_from_slice(&(pps.len() as u16).to_be_bytes());
            avcc.extend_from_slice(pps);
            let avcc = bx(b"avcC", &[&avcc]);
            let mut compressor = [0u8; 32];
            compressor[0] = 7;
            compressor[1..8].copy_from_slice(b"Convene");
            bx(
                b"avc1",
                &[
                    &[0u8; 6],
                    &1u16.to_be_bytes(),
                    &[0u8; 16],
                    &width.to_be_bytes(),
                    &height.to_be_bytes(),
                    &be32s(&[0x0048_0000, 0x0048_0000, 0]),
                    &1u16.to_be_bytes(),
                    &compressor,
                    &0x0018u16.to_be_bytes(),
                    &0xFFFFu16.to_be_bytes(),
                    &avcc,
                ],
            )
        }
        Media::Opus { channels } => {
            let mut dops = vec![0, *channels];
            dops.extend_from_slice(&OPUS_PRE_SKIP.to_be_bytes());
            dops.extend_from_slice(&AUDIO_TIMESCALE.to_be_bytes());
            dops.extend_from_slice(&0i16.to_be_bytes());
            dops.push(0); // mapping family 0: mono or stereo
            let dops = bx(b"dOps", &[&dops]);
            bx(
                b"Opus",
                &[
                    &[0u8; 6],
                    &1u16.to_be_bytes(),
                    &[0u8; 8],
                    &u16::from(*channels).to_be_bytes(),
                    &16u16.to_be_bytes(),
                    &[0u8; 4],
                    &(AUDIO_TIMESCALE << 16).to_be_bytes(),
                    &dops,
                ],
            )
        }
    }
}

/// `moof` for samples of (duration, size, key) starting at `start`, their
/// data in the `mdat` right after it.
fn moof(sequence: u32, start: u64, samples: &[(u32, u32, bool)]) -> Vec<u8> {
    let mfhd = full(b"mfhd", 0, 0, &[&sequence.to_be_bytes()]);
    // default-base-is-moof: data offsets count from the moof.
    let tfhd = full(b"tfhd", 0, 0x02_0000, &[&1u32.to_be_bytes()]);
    let tfdt = full(b"tfdt", 1, 0, &[&start.to_be_bytes()]);
    let mut table = Vec::with_capacity(samples.len() * 12);
    for &(duration, size, key) in samples {
        table.extend_from_slice(&duration.to_be_bytes());
        table.extend_from_slice(&size.to_be_bytes());
        // A key frame depends on nothing; any other is not a sync sample.
        let flags: u32 = if key { 0x0200_0000 } else { 0x0101_0000 };
        table.extend_from_slice(&flags.to_be_bytes());
    }
    // The moof's size is fixed before its data offset is known.
    let trun_len = 12 + 4 + 4 + table.len() + 8;
    let moof_len = 8 + mfhd.len() + 8 + tfhd.len() + tfdt.len() + trun_len - 8;
    let data_offset = (moof_len + 8) as i32;
    let trun = full(
        b"trun",
        0,
        0x0001 | 0x0100 | 0x0200 | 0x0400, // data offset; per-sample duration, size, flags
        &[
            &(samples.len() as u32).to_be_bytes(),
            &data_offset.to_be_bytes(),
            &table,
        ],
    );
    let traf = bx(b"traf", &[&tfhd, &tfdt, &trun]);
    let moof = bx(b"moof", &[&mfhd, &traf]);
    debug_assert_eq!(moof.len(), moof_len);
    moof
}

/// Annex B (start codes) to the 4-byte length prefixes MP4 wants, and the
/// SPS and PPS found on the way. Access unit delimiters are left out.
pub(crate) fn annexb_to_avcc(data: &[u8]) -> (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>) {
    let mut out = Vec::with_capacity(data.len() + 16);
    let (mut sps, mut pps) = (None, None);
    for nal in nal_units(data) {
        if nal.is_empty() {
            continue;
        }
        match nal[0] & 0x1F {
            7 => sps = Some(nal.to_vec()),
            8 => pps = Some(nal.to_vec()),
            9 => continue,
            _ => {}
        }
        out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        out.extend_from_slice(nal);
    }
    (out, sps, pps)
}

/// The NAL units of an Annex B byte stream.
fn nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| {
            // The start code before s, with a leading zero of a 4-byte one.
            let mut e = s - 3;
            while e > 0 && data[e - 1] == 0 {
                e -= 1;
            }
            e
        })
        .chain(std::iter::once(data.len()))
        .collect();
    starts
        .into_iter()
        .zip(ends)
        .map(move |(s, e)| &data[s..e.max(s)])
}

/// The picture size an SPS says, if it can be read.
pub(crate) fn sps_size(sps: &[u8]) -> Option<(u16, u16)> {
    let rbsp = unescape(sps.get(1..)?);
    let mut r = Bits::new(&rbsp);
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // sps id
    let mut chroma_format = 1;
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format = r.ue()?;
        if chroma_format == 3 {
            r.bits(1)?;
        }
        r.ue()?;
        r.ue()?;
        r.bits(1)?;
        if r.bits(1)? == 1 {
            let lists = if chroma_format == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bits(1)? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        last = if next == 0 { last } else { next };
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num
    let poc_type = r.ue()?;
    if poc_type == 0 {
        r.ue()?;
    } else if poc_type == 1 {
        r.bits(1)?;
        r.se()?;
        r.se()?;
        for _ in 0..r.ue()? {
            r.se()?;
        }
    }
    r.ue()?; // max refs
    r.bits(1)?;
    let mbs_w = r.ue()? + 1;
    let map_units_h = r.ue()? + 1;
    let frame_mbs_only = r.bits(1)?;
    if frame_mbs_only == 0 {
        r.bits(1)?;
    }
    r.bits(1)?;
    let mut w = mbs_w * 16;
    let mut h = (2 - frame_mbs_only) * map_units_h * 16;
    if r.bits(1)? == 1 {
        let (l, rt, t, b) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        let (cx, cy) = match chroma_format {
            0 | 3 => (1, 2 - frame_mbs_only),
            2 => (2, 2 - frame_mbs_only),
            _ => (2, 2 * (2 - frame_mbs_only)),
        };
        w = w.checked_sub((l + rt) * cx)?;
        h = h.checked_sub((t + b) * cy)?;
    }
    Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?))
}

/// Emulation prevention bytes (00 00 03) removed.
fn unescape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut zeros = 0;
    for &b in data {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// A reader of Exp-Golomb coded bits.
struct Bits<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Bits<'a> {
        Bits { data, at: 0 }
    }

    fn bit(&mut self) -> Option<u64> {
        let byte = *self.data.get(self.at / 8)?;
        let bit = (byte >> (7 - self.at % 8)) & 1;
        self.at += 1;
        Some(u64::from(bit))
    }

    fn bits(&mut self, n: u32) -> Option<u64> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Some(v)
    }

    fn ue(&mut self) -> Option<u64> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u64 << zeros) - 1 + self.bits(zeros)?)
    }

    fn se(&mut self) -> Option<i64> {
        let v = self.ue()? as i64;
        Some(if v % 2 == 1 { (v + 1) / 2 } else { -(v / 2) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The boxes at the top of `data`: (type, offset, size).
    fn top_boxes(data: &[u8]) -> Vec<(String, usize, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 8 <= data.len() {
            let size = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            let kind = String::from_utf8_lossy(&data[at + 4..at + 8]).to_string();
            assert!(
                size >= 8 && at + size <= data.len(),
                "{kind} at {at} has size {size}"
            );
            out.push((kind, at, size));
            at += size;
        }
        assert_eq!(at, data.len(), "trailing bytes");
        out
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("convene-fmp4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn fragments_close_on_time_and_on_key_frames_and_tile_the_file() {
        let path = temp("v.mp4");
        let media = Media::H264 {
            width: 320,
            height: 240,
            sps: vec![0x67, 0x42, 0xE0, 0x1F],
            pps: vec![0x68, 0xCE],
        };
        let mut f = TrackFile::create(&path, &media).unwrap();
        let tick = u64::from(VIDEO_TIMESCALE) / 10; // 10 pictures a second
        let mut written = Vec::new();
        for i in 0..35u64 {
            // A key frame every 2 s, and one asked for at 2.5 s.
            let key = i % 20 == 0 || i == 25;
            let (taken, frag) = f.push(1000 + i * tick, vec![i as u8; 100], key).unwrap();
            assert!(taken);
            written.extend(frag);
        }
        // An earlier picture than the last is refused.
        assert!(!f.push(1000, vec![0; 10], false).unwrap().0);
        let (_, last) = f.finish(tick).unwrap();
        written.extend(last);
        // 1 s fragments (10 pictures), and one cut early at the key frame at 2.5 s.
        let lengths: Vec<u64> = written.iter().map(|f| f.duration / tick).collect();
        assert_eq!(lengths, vec![10, 10, 5, 10]);
        assert!(
            written[0].starts_with_key && written[2].starts_with_key && written[3].starts_with_key
        );
        assert!(!written[1].starts_with_key);
        assert_eq!(written[0].start, 1000);
        let data = std::fs::read(&path).unwrap();
        let boxes = top_boxes(&data);
        let kinds: Vec<&str> = boxes.iter().map(|b| b.0.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "ftyp", "moov", "moof", "mdat", "moof", "mdat", "moof", "mdat", "moof", "mdat"
            ]
        );
        // Each fragment is one moof + mdat, where the index says.
        for (frag, pair) in written.iter().zip(boxes[2..].chunks(2)) {
            assert_eq!(frag.offset as usize, pair[0].1);
            assert_eq!(frag.size as usize, pair[0].2 + pair[1].2);
        }
        // The duration is set at the end: 3.5 s.
        let mehd = data.windows(4).position(|w| w == b"mehd").unwrap();
        let ms = u64::from_be_bytes(data[mehd + 8..mehd + 16].try_into().unwrap());
        assert_eq!(ms, 3500);
        // The first sample's data follows its mdat header, where trun says.
        let (_, moof_at, moof_len) = boxes[2];
        let trun = moof_at
            + data[moof_at..moof_at + moof_len]
                .windows(4)
                .position(|w| w == b"trun")
                .unwrap();
        let offset = i32::from_be_bytes(data[trun + 12..trun + 16].try_into().unwrap()) as usize;
        assert_eq!(offset, moof_len + 8);
        assert_eq!(&data[moof_at + offset..moof_at + offset + 3], &[0, 0, 0]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn annex_b_becomes_length_prefixed_and_yields_its_parameter_sets() {
        let stream = [
            &[0, 0, 0, 1, 9, 0xF0][..],
            &[0, 0, 0, 1, 0x67, 0x42, 0, 0x1E],
            &[0, 0, 1, 0x68, 0xCE, 0x3C, 0x80],
            &[0, 0, 1, 0x65, 1, 2, 0, 0, 3, 0],
        ]
        .concat();
        let (avcc, sps, pps) = annexb_to_avcc(&stream);
        assert_eq!(sps.unwrap(), vec![0x67, 0x42, 0, 0x1E]);
        assert_eq!(pps.unwrap(), vec![0x68, 0xCE, 0x3C, 0x80]);
        assert_eq!(
            avcc,
            [
                &[0, 0, 0, 4, 0x67, 0x42, 0, 0x1E][..],
                &[0, 0, 0, 4, 0x68, 0xCE, 0x3C, 0x80],
                &[0, 0, 0, 7, 0x65, 1, 2, 0, 0, 3, 0],
            ]
            .concat()
        );
    }

    #[test]
    fn the_picture_size_is_read_from_an_encoders_sps() {
        for (w, h) in [(320, 240), (640, 360), (1280, 720), (162, 98)] {
            let mut enc = crate::h264::H264Encoder::new(crate::h264::EncoderSettings {
                bitrate_kbps: 300,
                fps: 15,
            })
            .unwrap();
            let key = enc.encode(&crate::frame::I420::black(w, h), true).unwrap();
            let (_, sps, pps) = annexb_to_avcc(&key.data);
            assert!(pps.is_some());
            assert_eq!(sps_size(&sps.unwrap()), Some((w as u16, h as u16)));
        }
        assert_eq!(sps_size(&[0x67]), None);
        assert_eq!(sps_size(&[0x67, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]), None);
    }
}
