//! `--e2ee` for `convene stream` and `convene receive`: the protocol crate's
//! keyring (PROTOCOL.md §14) wired to a live session.

use bytes::Bytes;
use convene_client::Client;
use convene_protocol::e2ee::{E2eeStats, Keyring, media_metadata};
use convene_protocol::v1::{client_message::Msg as C, server_message::Msg as S};
use convene_protocol::{ClientEvent, MediaFrame, MediaHeader};

/// The end-to-end encryption of one session.
pub(crate) struct E2ee {
    ring: Keyring,
    code: String,
}

/// What the session loop should do after an event.
#[derive(Debug, Default)]
pub(crate) struct Reaction {
    /// The safety code changed to this.
    pub(crate) code_changed: Option<String>,
    /// A sender's new key arrived after frames of it were dropped: ask it for a key frame.
    pub(crate) want_key_frames_from: Option<u32>,
}

impl E2ee {
    /// Starts E2EE for the session `client` just joined, with `present` in
    /// the room: announces our key.
    pub(crate) fn start(
        client: &mut Client,
        meeting: &str,
        present: &[u32],
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
        Ok(E2ee { ring, code })
    }

    /// The current safety code.
    pub(crate) fn safety_code(&self) -> &str {
        &self.code
    }

    /// What the keyring did.
    pub(crate) fn stats(&self) -> E2eeStats {
        self.ring.stats()
    }

    /// Feeds a room event to the keyring and sends what it answers.
    pub(crate) fn on_event(&mut self, client: &mut Client, ev: &ClientEvent) -> Reaction {
        let outcome = match ev {
            ClientEvent::Room(S::E2ee(m)) => {
                match self.ring.receive(m.from_participant_id, &m.payload) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!("E2EE message refused: {e}");
                        return Reaction::default();
                    }
                }
            }
            ClientEvent::Room(S::ParticipantJoined(j)) => {
                if let Some(p) = &j.participant {
                    self.ring.participant_joined(p.participant_id);
                }
                return Reaction::default();
            }
            ClientEvent::Room(S::ParticipantLeft(l)) => {
                self.ring.participant_left(l.participant_id)
            }
            _ => return Reaction::default(),
        };
        for m in outcome.send {
            let _ = client.send(C::E2ee(m));
        }
        let mut r = Reaction {
            want_key_frames_from: outcome.new_key_from,
            ..Reaction::default()
        };
        let code = self.ring.safety_code();
        if code != self.code {
            self.code = code.clone();
            r.code_changed = Some(code);
        }
        r
    }

    /// Builds one of our frames with its payload encrypted.
    pub(crate) fn seal(&mut self, frame: MediaFrame) -> MediaFrame {
        let h = *frame.header();
        let config = frame.config().map(<[u8]>::to_vec);
        let sealed = self
            .ring
            .encrypt(&media_metadata(&h, config.as_deref()), &frame.payload());
        MediaFrame::build(&h, config.as_deref(), &sealed)
    }

    /// The decrypted payload of a received frame, or `None` (counted) when it
    /// does not decrypt.
    pub(crate) fn open(&mut self, frame: &MediaFrame) -> Option<Bytes> {
        let h: MediaHeader = *frame.header();
        let meta = media_metadata(&h, frame.config());
        match self.ring.decrypt(h.sender, &meta, &frame.payload()) {
            Ok(p) => Some(Bytes::from(p)),
            Err(e) => {
                tracing::debug!(sender = h.sender, "frame refused: {e}");
                None
            }
        }
    }
}
