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

/// A participant's picture track: a camera (`Video`) or a shared screen.
type Picture = (u32, TrackKind);

/// Whom the stream shows.
enum Subject {
    /// One participant's camera, by display name or id; the id once seen.
    One(String, Option<u32>),
    /// A shared screen while there is one, else the camera of whoever
    /// speaks.
    Speaker {
        /// The pictures shown now.
        shown: Option<Picture>,
        /// The pictures to switch to at their next key frame.
        next: Option<Picture>,
        /// Who speaks, as the server last said.
        speaker: Option<u32>,
        /// Who shares a screen.
        screen: Option<u32>,
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
                    shown: None,
                    next: None,
                    speaker: None,
                    screen: None,
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

    /// The picture track the stream shows, or will next (ask it for key
    /// frames).
    pub(crate) fn pictures(&self, names: &HashMap<u32, String>) -> Option<Picture> {
        match &self.subject {
            Subject::One(_, Some(p)) => Some((*p, TrackKind::Video)),
            Subject::One(who, None) => {
                if let Ok(id) = who.parse::<u32>()
                    && names.contains_key(&id)
                {
                    return Some((id, TrackKind::Video));
                }
                names
                    .iter()
                    .filter(|(_, n)| *n == who)
                    .map(|(p, _)| (*p, TrackKind::Video))
                    .min()
            }
            Subject::Speaker { shown, next, .. } => next.or(*shown),
        }
    }

    /// The active-speaker stream's next pictures, from who shares and who
    /// speaks; true when they change (ask them for a key frame).
    fn retarget(&mut self) -> bool {
        let Subject::Speaker {
            shown,
            next,
            speaker,
            screen,
        } = &mut self.subject
        else {
            return false;
        };
        let want = screen
            .map(|p| (p, TrackKind::Screen))
            .or(speaker.map(|p| (p, TrackKind::Video)));
        if want.is_none() || want == *shown {
            *next = None;
            return false;
        }
        let changed = *next != want;
        *next = want;
        changed
    }

    /// The server says `speaker` speaks now. True when the stream is to
    /// switch to their camera (ask it for a key frame).
    pub(crate) fn follow(&mut self, who: u32) -> bool {
        if let Subject::Speaker { speaker, .. } = &mut self.subject {
            *speaker = Some(who);
        }
        self.retarget()
    }

    /// `who` started sharing a screen: the active-speaker stream shows it.
    /// True when that is a change (ask the screen for a key frame).
    pub(crate) fn screen_started(&mut self, who: u32) -> bool {
        if let Subject::Speaker { screen, .. } = &mut self.subject {
            *screen = Some(who);
        }
        self.retarget()
    }

    /// A track's pictures ended: a screen gives the stream back to the
    /// speaker; a shown camera to `other` (another camera), if any. True
    /// when the stream is to switch (ask for a key frame).
    pub(crate) fn pictures_ended(&mut self, gone: Picture, other: Option<u32>) -> bool {
        let Subject::Speaker {
            shown,
            next,
            speaker,
            screen,
        } = &mut self.subject
        else {
            return false;
        };
        if gone.1 == TrackKind::Screen && *screen == Some(gone.0) {
            *screen = None;
        }
        if gone.1 == TrackKind::Video && *speaker == Some(gone.0) {
            *speaker = other;
        }
        if *next == Some(gone) {
            *next = None;
        }
        if *shown == Some(gone) && speaker.is_none() && screen.is_none() {
            *speaker = other;
        }
        self.retarget()
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
        let audio = kind == TrackKind::Audio;
        let target = self.pictures(names).map(|p| p.0);
        match &mut self.subject {
            Subject::One(_, chosen) => {
                if kind == TrackKind::Screen || target != Some(participant) {
                    return;
                }
                *chosen = Some(participant);
            }
            // The mix is the sound; pictures are the speaker's or a screen.
            Subject::Speaker { .. } if audio => return,
            Subject::Speaker { shown, next, .. } => {
                let this = Some((participant, kind));
                if *next == this && fragment.starts_with_key {
                    *shown = this;
                    *next = None;
                } else if shown.is_none() && next.is_none() && fragment.starts_with_key {
                    // Nobody has spoken yet: the first pictures will do.
                    *shown = this;
                } else if *shown != this {
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
            Subject::One(_, c) => *c == Some(participant) && kind != TrackKind::Screen,
            Subject::Speaker { shown, .. } => *shown == Some((participant, kind)),
        };
        if shown {
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
            Subject::Speaker {
                shown,
                next,
                speaker,
                screen,
            } => {
                *shown = None;
                *next = None;
                *speaker = None;
                *screen = None;
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
