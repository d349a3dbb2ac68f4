//! A live HLS stream of one participant, made of the recording's own
//! fragments: the playlists point at byte ranges of the MP4 files, so the
//! live stream costs no second copy. `live.m3u8` is the multivariant
//! playlist; `live-video.m3u8` and `live-audio.m3u8` list the segments
//! (each from a key frame, a few seconds long), rewritten after each one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use convene_protocol::v1::TrackKind;

use super::fmp4::{Fragment, TrackFile};

/// A segment is closed at the first key frame after this many seconds.
const TARGET_SECONDS: f64 = 2.0;

/// One track's side of the stream.
#[derive(Default)]
struct Side {
    /// The file its segments are ranges of (relative to the playlist).
    file: Option<String>,
    init_len: u64,
    timescale: u32,
    codec: String,
    /// Finished segments: (offset, size, seconds).
    segments: Vec<(u64, u64, f64)>,
    /// The segment being gathered: (offset, size, duration in ticks).
    open: Option<(u64, u64, u64)>,
    ended: bool,
}

impl Side {
    /// Takes a fragment; true when a segment was finished.
    fn fragment(&mut self, f: Fragment, cut_at_key: bool) -> bool {
        let mut finished = false;
        if let Some((offset, size, ticks)) = self.open {
            let seconds = ticks as f64 / f64::from(self.timescale.max(1));
            let cut = seconds >= TARGET_SECONDS && (f.starts_with_key || !cut_at_key);
            if cut {
                self.segments.push((offset, size, seconds));
                self.open = None;
                finished = true;
            }
        }
        match self.open.as_mut() {
            Some((_, size, ticks)) => {
                *size += f.size;
                *ticks += f.duration;
            }
            // A segment starts at a key frame (a player starts decoding there).
            None if f.starts_with_key || !cut_at_key => {
                self.open = Some((f.offset, f.size, f.duration))
            }
            None => {}
        }
        finished
    }

    fn close(&mut self) {
        if let Some((offset, size, ticks)) = self.open.take() {
            self.segments.push((
                offset,
                size,
                ticks as f64 / f64::from(self.timescale.max(1)),
            ));
        }
        self.ended = true;
    }

    fn playlist(&self) -> Option<String> {
        let file = self.file.as_ref()?;
        let target = self
            .segments
            .iter()
            .map(|s| s.2.ceil() as u64)
            .max()
            .unwrap_or(TARGET_SECONDS as u64)
            .max(1);
        let mut p = format!(
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:EVENT\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MAP:URI=\"{file}\",BYTERANGE=\"{}@0\"\n",
            self.init_len
        );
        for (offset, size, seconds) in &self.segments {
            p.push_str(&format!(
                "#EXTINF:{seconds:.3},\n#EXT-X-BYTERANGE:{size}@{offset}\n{file}\n"
            ));
        }
        if self.ended {
            p.push_str("#EXT-X-ENDLIST\n");
        }
        Some(p)
    }
}

/// The live stream.
pub(crate) struct Live {
    dir: PathBuf,
    /// Who: a display name or a participant id.
    who: String,
    video: Side,
    audio: Side,
    /// The participant chosen, once seen.
    chosen: Option<u32>,
}

impl Live {
    /// A stream of `who` (display name or id) written into `dir`.
    pub(crate) fn new(dir: &Path, who: &str) -> Live {
        Live {
            dir: dir.to_path_buf(),
            who: who.to_string(),
            video: Side::default(),
            audio: Side::default(),
            chosen: None,
        }
    }

    /// The multivariant playlist's path.
    pub(crate) fn playlist_path(&self) -> String {
        self.dir.join("live.m3u8").display().to_string()
    }

    /// The participant the stream shows, if present.
    pub(crate) fn participant(&self, names: &HashMap<u32, String>) -> Option<u32> {
        if let Some(p) = self.chosen {
            return Some(p);
        }
        if let Ok(id) = self.who.parse::<u32>()
            && names.contains_key(&id)
        {
            return Some(id);
        }
        names
            .iter()
            .filter(|(_, n)| **n == self.who)
            .map(|(p, _)| *p)
            .min()
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
        if self.participant(names) != Some(participant) || kind == TrackKind::Screen {
            return;
        }
        self.chosen = Some(participant);
        let side = if kind == TrackKind::Audio {
            &mut self.audio
        } else {
            &mut self.video
        };
        if side.file.is_none() {
            side.file = file
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            side.init_len = file.init_len();
            side.timescale = file.timescale();
            side.codec = file.codec().to_string();
        }
        let cut_at_key = kind != TrackKind::Audio;
        if side.fragment(fragment, cut_at_key) {
            self.write();
        }
    }

    /// A track's file was finished with this last fragment.
    pub(crate) fn last_fragment(&mut self, participant: u32, kind: TrackKind, fragment: Fragment) {
        if self.chosen != Some(participant) || kind == TrackKind::Screen {
            return;
        }
        let side = if kind == TrackKind::Audio {
            &mut self.audio
        } else {
            &mut self.video
        };
        if side.file.is_some() {
            side.fragment(fragment, kind != TrackKind::Audio);
            side.close();
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
        if video.is_none() && audio.is_none() {
            return;
        }
        let bandwidth = 1_500_000;
        let mut master = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
        match (&video, &audio) {
            (Some(_), Some(_)) => {
                master.push_str("#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"sound\",NAME=\"Sound\",DEFAULT=YES,AUTOSELECT=YES,URI=\"live-audio.m3u8\"\n");
                master.push_str(&format!(
                    "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},CODECS=\"{},opus\",AUDIO=\"sound\"\nlive-video.m3u8\n",
                    self.video_codec()
                ));
            }
            (Some(_), None) => {
                master.push_str(&format!(
                    "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},CODECS=\"{}\"\nlive-video.m3u8\n",
                    self.video_codec()
                ));
            }
            _ => master
                .push_str("#EXT-X-STREAM-INF:BANDWIDTH=64000,CODECS=\"opus\"\nlive-audio.m3u8\n"),
        }
        put("live.m3u8", &master);
    }

    fn video_codec(&self) -> String {
        if self.video.codec.is_empty() {
            "avc1.42E01F".into()
        } else {
            self.video.codec.clone()
        }
    }
}
