//! A live HLS stream made of the recording's own fragments: the playlists
//! point at byte ranges of the MP4 files, so the live stream costs no
//! second copy. `live.m3u8` is the multivariant playlist; `live-video.m3u8`
//! and `live-audio.m3u8` list the segments (each from a key frame, about
//! [`TARGET_SECONDS`] long), rewritten after each one.
//!
//! It shows one participant (their pictures and sound), or the active
//! speaker: the pictures of whoever the server says speaks now, switching
//! at their next key frame (a discontinuity, and the new file's header, in
//! the playlist), with the sound of the whole meeting (the mix).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use convene_protocol::v1::TrackKind;

use super::fmp4::{Fragment, TrackFile};

/// A segment is closed at the first key frame after this many seconds.
const TARGET_SECONDS: f64 = 2.0;
/// What `--hls` takes for the active-speaker stream.
pub(crate) const ACTIVE_SPEAKER: &str = "active-speaker";

/// A file segments are byte ranges of.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    /// Its name, relative to the playlist.
    file: String,
    /// Bytes of its header (the HLS initialization section).
    init_len: u64,
    timescale: u32,
}

impl Source {
    fn of(file: &TrackFile) -> Source {
        Source {
            file: file
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            init_len: file.init_len(),
            timescale: file.timescale().max(1),
        }
    }
}

/// One segment: a byte range of a source.
#[derive(Debug, Clone)]
struct Segment {
    source: Source,
    offset: u64,
    size: u64,
    /// Ticks of the source's timescale.
    ticks: u64,
}

impl Segment {
    fn seconds(&self) -> f64 {
        self.ticks as f64 / f64::from(self.source.timescale)
    }
}

/// One track's side of the stream.
#[derive(Default)]
struct Side {
    segments: Vec<Segment>,
    open: Option<Segment>,
    ended: bool,
}

impl Side {
    /// Takes a fragment of `source`; true when a segment was finished.
    /// A fragment of another source than the open segment's starts a new
    /// segment (a switch of speaker).
    fn fragment(&mut self, source: &Source, f: Fragment, cut_at_key: bool) -> bool {
        let mut finished = false;
        if let Some(open) = &self.open {
            let switch = open.source != *source;
            let cut =
                switch || (open.seconds() >= TARGET_SECONDS && (f.starts_with_key || !cut_at_key));
            if cut {
                self.segments.extend(self.open.take());
                finished = true;
            }
        }
        match self.open.as_mut() {
            Some(open) => {
                open.size += f.size;
                open.ticks += f.duration;
            }
            // A segment starts where a player can start decoding.
            None if f.starts_with_key || !cut_at_key => {
                self.open = Some(Segment {
                    source: source.clone(),
                    offset: f.offset,
                    size: f.size,
                    ticks: f.duration,
                })
            }
            None => {}
        }
        finished
    }

    fn close(&mut self) {
        self.segments.extend(self.open.take());
        self.ended = true;
    }

    fn codec_source(&self) -> Option<&Source> {
        self.segments.first().map(|s| &s.source)
    }

    fn playlist(&self) -> Option<String> {
        self.codec_source()?;
        let target = self
            .segments
            .iter()
            .map(|s| s.seconds().ceil() as u64)
            .max()
            .unwrap_or(TARGET_SECONDS as u64)
            .max(1);
        let mut p = format!(
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-DISCONTINUITY-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:EVENT\n#EXT-X-INDEPENDENT-SEGMENTS\n"
        );
        let mut map: Option<&Source> = None;
        for s in &self.segments {
            if map != Some(&s.source) {
                if map.is_some() {
                    p.push_str("#EXT-X-DISCONTINUITY\n");
                }
                p.push_str(&format!(
                    "#EXT-X-MAP:URI=\"{}\",BYTERANGE=\"{}@0\"\n",
                    s.source.file, s.source.init_len
                ));
                map = Some(&s.source);
            }
            p.push_str(&format!(
                "#EXTINF:{:.3},\n#EXT-X-BYTERANGE:{}@{}\n{}\n",
                s.seconds(),
                s.size,
                s.offset,
                s.source.file
            ));
        }
        if self.ended {
            p.push_str("#EXT-X-ENDLIST\n");
        }
        Some(p)
    }
}

/// Whom the stream shows.
enum Subject {
    /// One participant, by display name or id; the id once seen.
    One(String, Option<u32>),
    /// Whoever speaks: the participant whose pictures are shown, and the
    /// one to switch to at their next key frame.
    Speaker {
        current: Option<u32>,
        next: Option<u32>,
    },
}

/// The live stream.
pub(crate) struct Live {
    dir: PathBuf,
    subject: Subject,
    video: Side,
    audio: Side,
    video_codec: String,
}

impl Live {
    /// A stream of `who` (a display name, an id, or `active-speaker`)
    /// written into `dir`.
    pub(crate) fn new(dir: &Path, who: &str) -> Live {
        Live {
            dir: dir.to_path_buf(),
            subject: if who == ACTIVE_SPEAKER {
                Subject::Speaker {
                    current: None,
                    next: None,
                }
            } else {
                Subject::One(who.to_string(), None)
            },
            video: Side::default(),
            audio: Side::default(),
            video_codec: "avc1.42E01F".into(),
        }
    }

    /// The multivariant playlist's path.
    pub(crate) fn playlist_path(&self) -> String {
        self.dir.join("live.m3u8").display().to_string()
    }

    /// True when the stream's sound is the meeting's mix.
    pub(crate) fn uses_mix(&self) -> bool {
        matches!(self.subject, Subject::Speaker { .. })
    }

    /// The participant whose pictures the stream shows (or will next).
    pub(crate) fn participant(&self, names: &HashMap<u32, String>) -> Option<u32> {
        match &self.subject {
            Subject::One(_, Some(p)) => Some(*p),
            Subject::One(who, None) => {
                if let Ok(id) = who.parse::<u32>()
                    && names.contains_key(&id)
                {
                    return Some(id);
                }
                names
                    .iter()
                    .filter(|(_, n)| *n == who)
                    .map(|(p, _)| *p)
                    .min()
            }
            Subject::Speaker { current, next } => next.or(*current),
        }
    }

    /// The server says `speaker` speaks now: with the active-speaker stream,
    /// switch to them at their next key frame. True when that is a change
    /// (ask them for a key frame).
    pub(crate) fn follow(&mut self, speaker: u32) -> bool {
        match &mut self.subject {
            Subject::Speaker { current, next }
                if *current != Some(speaker) && *next != Some(speaker) =>
            {
                *next = Some(speaker);
                true
            }
            Subject::Speaker { current, next } if *current == Some(speaker) => {
                *next = None;
                false
            }
            _ => false,
        }
    }

    /// The participant shown has gone: the active-speaker stream moves to
    /// `other` (another participant with pictures), if any. True when that
    /// is a change.
    pub(crate) fn lost(&mut self, gone: u32, other: Option<u32>) -> bool {
        match &mut self.subject {
            Subject::Speaker { current, next } if *current == Some(gone) || *next == Some(gone) => {
                if *next == Some(gone) {
                    *next = None;
                }
                match other {
                    Some(o) if *current == Some(gone) => {
                        *next = Some(o);
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }

    /// A fragment was written to `file`, a track of `participant`.
    pub(crate) fn fragment_written(
        &mut self,
        names: &HashMap<u32, String>,
        participant: u32,
        kind: TrackKind,
        file: &TrackFile,
        fragment: Fragment,
    ) {
        if kind == TrackKind::Screen {
            return;
        }
        let audio = kind == TrackKind::Audio;
        let target = self.participant(names);
        match &mut self.subject {
            Subject::One(_, chosen) => {
                if target != Some(participant) {
                    return;
                }
                *chosen = Some(participant);
            }
            // The mix is the sound; pictures are the speaker's.
            Subject::Speaker { .. } if audio => return,
            Subject::Speaker { current, next } => {
                if *next == Some(participant) && fragment.starts_with_key {
                    *current = Some(participant);
                    *next = None;
                } else if current.is_none() && fragment.starts_with_key {
                    // Nobody has spoken yet: the first pictures will do.
                    *current = Some(participant);
                } else if *current != Some(participant) {
                    return;
                }
            }
        }
        if !audio {
            self.video_codec = file.codec().to_string();
        }
        let side = if audio {
            &mut self.audio
        } else {
            &mut self.video
        };
        if side.fragment(&Source::of(file), fragment, !audio) {
            self.write();
        }
    }

    /// A fragment of the meeting's mix was written to `file`.
    pub(crate) fn mix_written(&mut self, file: &TrackFile, fragment: Fragment) {
        if self.uses_mix() && self.audio.fragment(&Source::of(file), fragment, false) {
            self.write();
        }
    }

    /// A track's file was finished with this last fragment.
    pub(crate) fn last_fragment(
        &mut self,
        participant: u32,
        kind: TrackKind,
        file: &TrackFile,
        fragment: Fragment,
    ) {
        let shown = match &self.subject {
            Subject::One(_, c) => *c == Some(participant),
            Subject::Speaker { current, .. } => {
                kind != TrackKind::Audio && *current == Some(participant)
            }
        };
        if shown && kind != TrackKind::Screen {
            let audio = kind == TrackKind::Audio;
            let side = if audio {
                &mut self.audio
            } else {
                &mut self.video
            };
            side.fragment(&Source::of(file), fragment, !audio);
            // The stream itself goes on (they may come back, the recorder
            // may reconnect): its playlists end when the recording does.
            self.write();
        }
    }

    /// The recorder's session ended: in the next one everybody has a new
    /// id, so whom to show is found again (by name, or by who speaks).
    pub(crate) fn session_ended(&mut self) {
        match &mut self.subject {
            Subject::One(_, chosen) => *chosen = None,
            Subject::Speaker { current, next } => {
                *current = None;
                *next = None;
            }
        }
    }

    /// The recording ended: the playlists say so.
    pub(crate) fn end(&mut self) {
        self.video.close();
        self.audio.close();
        self.write();
    }

    /// Writes the playlists (each whole, then renamed into place, so a
    /// player never reads half of one).
    fn write(&self) {
        let put = |name: &str, text: &str| {
            let tmp = self.dir.join(format!(".{name}.tmp"));
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, self.dir.join(name));
            }
        };
        let video = self.video.playlist();
        let audio = self.audio.playlist();
        if let Some(v) = &video {
            put("live-video.m3u8", v);
        }
        if let Some(a) = &audio {
            put("live-audio.m3u8", a);
        }
        let bandwidth = 1_500_000;
        let mut master = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
        match (&video, &audio) {
            (Some(_), Some(_)) => {
                master.push_str("#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"sound\",NAME=\"Sound\",DEFAULT=YES,AUTOSELECT=YES,URI=\"live-audio.m3u8\"\n");
                master.push_str(&format!(
                    "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},CODECS=\"{},opus\",AUDIO=\"sound\"\nlive-video.m3u8\n",
                    self.video_codec
                ));
            }
            (Some(_), None) => master.push_str(&format!(
                "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},CODECS=\"{}\"\nlive-video.m3u8\n",
                self.video_codec
            )),
            (None, Some(_)) => master
                .push_str("#EXT-X-STREAM-INF:BANDWIDTH=64000,CODECS=\"opus\"\nlive-audio.m3u8\n"),
            (None, None) => return,
        }
        put("live.m3u8", &master);
    }
}
