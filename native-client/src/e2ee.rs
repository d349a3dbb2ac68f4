//! `--e2ee` for `convene stream` and `convene receive`: the protocol crate's
//! keyring (PROTOCOL.md §14) wired to a live session.

use bytes::Bytes;
use convene_client::Client;
use convene_protocol::e2ee::{E2eeStats, Keyring};
use convene_protocol::v1::{client_message::Msg as C, server_message::Msg as S};
use convene_protocol::{ClientEvent, MediaFrame};

use crate::stream::StatusLine;

/// The end-to-end encryption of one session.
pub(crate) struct E2ee {
    ring: Keyring,
    /// The safety code last shown, to say when it changes.
    code: String,
}

/// The E2EE part of a JSON summary.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct E2eeSummary {
    /// The safety code when the session ended.
    pub(crate) safety_code: String,
    /// Frames encrypted, decrypted, refused; keys drawn and received.
    #[serde(flatten)]
    pub(crate) stats: E2eeStats,
}

impl E2ee {
    /// Starts E2EE for the session `client` just joined, with `present` in
    /// the room: announces our key and shows the safety code.
    pub(crate) fn start(
        client: &mut Client,
        meeting: &str,
        present: &[u32],
        status: &StatusLine,
    ) -> anyhow::Result<E2ee> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| anyhow::anyhow!("no secure randomness for E2EE keys: {e}"))?;
        let mut ring = Keyring::new(meeting, client.participant_id(), seed);
        for id in present {
            ring.participant_joined(*id);
        }
        client.send(C::E2ee(ring.start()))?;
        let code = ring.safety_code();
        status.note(&format!(
            "end-to-end encrypted; safety code {code} (compare it with the others')"
        ));
        Ok(E2ee { ring, code })
    }

    /// The safety code and counters, for the JSON summary.
    pub(crate) fn summary(&self) -> E2eeSummary {
        E2eeSummary {
            safety_code: self.code.clone(),
            stats: self.ring.stats(),
        }
    }

    /// Feeds a room event to the keyring, sends what it answers and shows a
    /// new safety code. Returns a sender whose new key arrived after frames
    /// of it were dropped: ask it for a key frame.
    pub(crate) fn on_event(
        &mut self,
        client: &mut Client,
        ev: &ClientEvent,
        status: &StatusLine,
    ) -> Option<u32> {
        let outcome = match ev {
            ClientEvent::Room(S::E2ee(m)) => {
                match self.ring.receive(m.from_participant_id, &m.payload) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!("E2EE message refused: {e}");
                        return None;
                    }
                }
            }
            ClientEvent::Room(S::ParticipantJoined(j)) => {
                if let Some(p) = &j.participant {
                    self.ring.participant_joined(p.participant_id);
                }
                return None;
            }
            ClientEvent::Room(S::ParticipantLeft(l)) => {
                self.ring.participant_left(l.participant_id)
            }
            _ => return None,
        };
        for m in outcome.send {
            let _ = client.send(C::E2ee(m));
        }
        let code = self.ring.safety_code();
        if code != self.code {
            status.note(&format!("safety code now {code}"));
            self.code = code;
        }
        outcome.new_key_from
    }

    /// Builds one of our frames with its payload encrypted.
    pub(crate) fn seal(&mut self, frame: MediaFrame) -> MediaFrame {
        self.ring
            .seal_media(frame.header(), frame.config(), &frame.payload())
    }

    /// The decrypted payload of a received frame, or `None` (counted) when it
    /// does not decrypt.
    pub(crate) fn open(&mut self, frame: &MediaFrame) -> Option<Bytes> {
        match self.ring.open_media(frame) {
            Ok(f) => Some(f.payload()),
            Err(e) => {
                tracing::debug!(sender = frame.header().sender, "frame refused: {e}");
                None
            }
        }
    }
}
