//! Small pieces every subcommand that sends media or waits on a clock shares.

use convene_protocol::{MediaFrame, MediaHeader};

/// Microseconds since the Unix epoch, now.
pub(crate) fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Sleeps until `deadline`, or forever when there is none (a `select!` arm
/// for an optional `--duration`).
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One of our published tracks on the way out: its id and the sequence
/// number of its next frame (PROTOCOL.md §6.1).
#[derive(Debug)]
pub(crate) struct OutTrack {
    id: u32,
    next: u32,
}

impl OutTrack {
    /// A track whose first frame has sequence 0.
    pub(crate) fn new(id: u32) -> OutTrack {
        OutTrack { id, next: 0 }
    }

    /// The track's next frame; the sender field is left 0 for the server to stamp.
    pub(crate) fn frame(&mut self, key: bool, capture_us: u64, payload: &[u8]) -> MediaFrame {
        let f = self.frame_at(self.next, key, capture_us, payload);
        self.next = self.next.wrapping_add(1);
        f
    }

    /// A frame of the track with the given sequence number, e.g. a
    /// picture's number shared by its simulcast encodings (PROTOCOL.md §6.6.1).
    pub(crate) fn frame_at(
        &self,
        sequence: u32,
        key: bool,
        capture_us: u64,
        payload: &[u8],
    ) -> MediaFrame {
        let h = MediaHeader {
            key,
            sender: 0,
            track_id: self.id,
            sequence,
            capture_timestamp_us: capture_us,
        };
        MediaFrame::build(&h, None, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_count_up_per_track_and_wrap() {
        let mut t = OutTrack::new(7);
        let a = t.frame(true, 5, b"x");
        let b = t.frame(false, 6, b"y");
        assert_eq!(
            (a.header().track_id, a.header().sequence, a.header().key),
            (7, 0, true)
        );
        assert_eq!(
            (b.header().sequence, b.header().capture_timestamp_us),
            (1, 6)
        );
        assert_eq!(b.header().sender, 0);
        assert_eq!(b.payload().as_ref(), b"y");
        t.next = u32::MAX;
        assert_eq!(t.frame(false, 0, b"").header().sequence, u32::MAX);
        assert_eq!(t.frame(false, 0, b"").header().sequence, 0);
    }
}
