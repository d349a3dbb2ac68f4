//! Checks of field contents that need no room state (PROTOCOL.md §5.3, §5.4, §7).
//! Every implementation of the spec applies the same rules; these are ours.

use crate::ErrorCode;
use crate::error::ProtocolError;
use crate::limits::max;
use crate::v1::{TrackInfo, TrackKind};

/// A meeting id: 1 to 64 bytes of `[A-Za-z0-9._-]`.
pub fn meeting_id(id: &str) -> Result<(), ProtocolError> {
    let ok = !id.is_empty()
        && id.len() <= max::MAX_MEETING_ID_BYTES as usize
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::new(
            ErrorCode::InvalidMeetingId,
            "meeting id must be 1 to 64 characters of A-Z a-z 0-9 . _ -",
        ))
    }
}

/// A display name: 1 to `max_bytes` of UTF-8 without control characters.
pub fn display_name(name: &str, max_bytes: u32) -> Result<(), ProtocolError> {
    if name.is_empty() || name.len() > max_bytes as usize {
        return Err(ProtocolError::new(
            ErrorCode::InvalidDisplayName,
            format!("display name must be 1 to {max_bytes} bytes"),
        ));
    }
    if name.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Err(ProtocolError::new(
            ErrorCode::InvalidDisplayName,
            "display name contains a control or bidirectional-formatting character",
        ));
    }
    Ok(())
}

/// Unicode's bidirectional formatting characters (marks, embeddings,
/// overrides, isolates): in a name or a chat line they can make text read
/// backwards or swallow what follows it on screen.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Chat text as relayed: without control characters other than line breaks
/// and tabs, and without bidirectional formatting characters (§5.6).
pub fn clean_chat_text(text: &str) -> std::borrow::Cow<'_, str> {
    let unwanted = |c: char| (c.is_control() && c != '\n' && c != '\t') || is_bidi_control(c);
    if text.chars().any(unwanted) {
        std::borrow::Cow::Owned(text.chars().filter(|&c| !unwanted(c)).collect())
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// A text field of at most `max_bytes`.
pub fn text_len(what: &str, text_bytes: usize, max_bytes: u32) -> Result<(), ProtocolError> {
    if text_bytes > max_bytes as usize {
        Err(ProtocolError::new(
            ErrorCode::FieldTooLong,
            format!("{what} is {text_bytes} bytes; the limit is {max_bytes}"),
        ))
    } else {
        Ok(())
    }
}

/// A track description in Publish.
pub fn track(t: &TrackInfo) -> Result<(), ProtocolError> {
    let bad = |why: String| Err(ProtocolError::new(ErrorCode::InvalidTrack, why));
    if t.track_id == 0 {
        return bad("track id 0 is not allowed".into());
    }
    let kind = TrackKind::try_from(t.kind).unwrap_or(TrackKind::Unspecified);
    if kind == TrackKind::Unspecified {
        return bad("track kind must be audio, video or screen".into());
    }
    if t.codec.is_empty()
        || t.codec.len() > max::MAX_CODEC_BYTES as usize
        || !t.codec.bytes().all(|b| b.is_ascii_graphic())
    {
        return bad(
            "codec must be 1 to 64 printable ASCII characters, e.g. avc1.42E01F or opus".into(),
        );
    }
    if t.width > 7680 || t.height > 4320 || t.frame_rate > 240 {
        return bad(format!(
            "{}x{} at {} fps is out of range (at most 7680x4320 at 240 fps)",
            t.width, t.height, t.frame_rate
        ));
    }
    encodings(t, kind)
}

/// The simulcast encodings of a track (PROTOCOL.md §6.6.1): at most three,
/// growing strictly, in range, the last one the track's own size; video only.
fn encodings(t: &TrackInfo, kind: TrackKind) -> Result<(), ProtocolError> {
    let bad = |why: String| Err(ProtocolError::new(ErrorCode::InvalidTrack, why));
    if t.audio_levels && kind != TrackKind::Audio {
        return bad("audio_levels is for audio tracks only".into());
    }
    if t.encodings.is_empty() {
        return Ok(());
    }
    if kind == TrackKind::Audio {
        return bad("an audio track has no encodings".into());
    }
    if t.encodings.len() > crate::media::MAX_ENCODINGS {
        return bad(format!(
            "{} encodings: a track has at most 3",
            t.encodings.len()
        ));
    }
    let mut last = (0, 0);
    for (i, e) in t.encodings.iter().enumerate() {
        if !(16..=7680).contains(&e.width)
            || !(16..=4320).contains(&e.height)
            || e.frame_rate > 240
            || e.temporal_layers > crate::media::MAX_TEMPORAL_LAYERS as u32
        {
            return bad(format!(
                "encoding {i}: {}x{} at {} fps with {} temporal layers is out of range \
                 (16x16 to 7680x4320, at most 240 fps and 4 layers)",
                e.width, e.height, e.frame_rate, e.temporal_layers
            ));
        }
        if e.width <= last.0 || e.height <= last.1 {
            return bad(format!(
                "encoding {i} ({}x{}) is not larger than the one before it: list encodings lowest first",
                e.width, e.height
            ));
        }
        last = (e.width, e.height);
    }
    if last != (t.width, t.height) {
        return bad(format!(
            "the top encoding is {}x{} but the track is {}x{}: they must be equal",
            last.0, last.1, t.width, t.height
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meeting_ids() {
        assert!(meeting_id("team-standup_2.0").is_ok());
        for bad in ["", "has space", "slash/no", "é", &"m".repeat(65)] {
            assert_eq!(
                meeting_id(bad).unwrap_err().code,
                ErrorCode::InvalidMeetingId,
                "{bad:?}"
            );
        }
        assert!(meeting_id(&"m".repeat(64)).is_ok());
    }

    #[test]
    fn display_names() {
        assert!(display_name("Zoë 🎥", 64).is_ok());
        assert!(display_name("", 64).is_err());
        assert!(display_name("bell\u{7}", 64).is_err());
        assert!(display_name("c1\u{85}", 64).is_err());
        assert!(display_name(&"n".repeat(65), 64).is_err());
    }

    #[test]
    fn tracks() {
        let ok = TrackInfo {
            track_id: 1,
            kind: TrackKind::Video as i32,
            codec: "avc1.42E01F".into(),
            width: 1280,
            height: 720,
            frame_rate: 30,
            ..Default::default()
        };
        assert!(track(&ok).is_ok());
        for bad in [
            TrackInfo {
                track_id: 0,
                ..ok.clone()
            },
            TrackInfo {
                kind: 0,
                ..ok.clone()
            },
            TrackInfo {
                kind: 99,
                ..ok.clone()
            },
            TrackInfo {
                codec: String::new(),
                ..ok.clone()
            },
            TrackInfo {
                codec: "a b".into(),
                ..ok.clone()
            },
            TrackInfo {
                width: 10_000,
                ..ok.clone()
            },
        ] {
            assert_eq!(track(&bad).unwrap_err().code, ErrorCode::InvalidTrack);
        }
    }
}

#[cfg(test)]
mod bidi_tests {
    use super::*;

    #[test]
    fn names_with_bidi_overrides_are_refused_and_chat_is_cleaned() {
        assert!(display_name("Ada", 64).is_ok());
        assert!(display_name("\u{202E}gnp.exe", 64).is_err());
        assert!(display_name("a\u{2066}b", 64).is_err());
        assert!(
            display_name("عربي", 64).is_ok(),
            "right-to-left text itself is fine"
        );
        assert_eq!(clean_chat_text("hi\u{202E}there\u{7}"), "hithere");
        assert_eq!(
            clean_chat_text("two\nlines\tand a tab"),
            "two\nlines\tand a tab"
        );
        assert!(matches!(
            clean_chat_text("plain"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
