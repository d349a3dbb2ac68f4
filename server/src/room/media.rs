//! Media routing (PROTOCOL.md §6.3–§6.5): a publisher's frame to its
//! track's subscribers' queues, key-frame requests on their behalf, and
//! congestion hints back to the publisher. Per-subscriber forwarding
//! decisions belong here.

use std::sync::Arc;
use std::time::Duration;

use convene_protocol::v1::{self, TrackInfo, server_message::Msg};
use convene_protocol::{ErrorCode, MediaFrame, MediaHeader, ProtocolError, Timestamp};

use crate::bus::BusMessage;
use crate::outbox::{DropReason, MediaClass, Outbox};

use super::{Room, frame};

/// Key-frame requests the server makes on subscribers' behalf, at most one per track per this long.
pub(super) const KEY_FRAME_REQUEST_INTERVAL: Duration = Duration::from_secs(1);

/// Subscribers' key-frame requests for one track reach its publisher at most
/// once per this interval (PROTOCOL.md §6.5); one arriving sooner waits for
/// the end of the interval, and is dropped if a key frame passes meanwhile.
/// Each key frame costs every subscriber a burst; one member asking in a
/// loop once had 240 a second forwarded.
pub const KEY_FRAME_COALESCE: Duration = Duration::from_millis(500);

/// Counts from routing one media frame, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RouteStats {
    /// Subscribers the frame was queued for.
    pub delivered: u32,
    /// Frames dropped from subscribers' queues, by reason: video delta, video key, audio.
    pub dropped: [u32; 3],
    /// Subscribers found too slow and disconnected.
    pub slow: u32,
}

/// One published track.
#[derive(Debug)]
pub(super) struct Publication {
    /// As announced.
    pub(super) info: TrackInfo,
    /// Audio or video, for queue priorities.
    pub(super) audio: bool,
    /// Who receives it: (participant id, their outbox).
    pub(super) subscribers: Vec<(u32, Arc<Outbox>)>,
    /// When the server last asked for a key frame on subscribers' behalf.
    pub(super) last_key_request: Option<Timestamp>,
    /// A subscriber's request arrived within [`KEY_FRAME_COALESCE`] of the
    /// last one: it goes out when the interval is over, unless a key frame
    /// passes first.
    pub(super) key_wanted: bool,
    /// How fast the track arrives, and what the publisher was told about it.
    pub(super) congestion: Congestion,
}

/// Congestion hints for one track (PROTOCOL.md §6.5): while subscribers'
/// queues drop its frames the publisher is asked, at most once a
/// [`HINT_INTERVAL`], for 70 % of the rate it sends; after [`RECOVERY`]
/// without drops, for its announced rate again.
#[derive(Debug, Default)]
pub(super) struct Congestion {
    /// Start of the current measuring window and the bytes seen in it.
    pub(super) window: Option<(Timestamp, u64)>,
    /// The rate measured over the last whole window, kbit/s.
    pub(super) kbps: u32,
    /// The last frame a subscriber's queue dropped.
    pub(super) last_drop: Option<Timestamp>,
    /// The last hint sent.
    pub(super) last_hint: Option<Timestamp>,
    /// Set while the publisher has been asked to go lower.
    pub(super) lowered: bool,
}

/// Shortest time between two congestion hints for one track.
pub const HINT_INTERVAL: Duration = Duration::from_secs(1);

/// Time without drops after which a lowered track is told it may go back up.
pub const RECOVERY: Duration = Duration::from_secs(5);

/// Lowest bitrate a hint asks for, kbit/s.
pub const MIN_HINT_KBPS: u32 = 64;

impl Congestion {
    /// Counts a frame of `bytes`; the rate is measured over windows of a second.
    fn measure(&mut self, now: Timestamp, bytes: usize) {
        let (since, total) = self.window.get_or_insert((now, 0));
        *total += bytes as u64;
        let elapsed = now.saturating_since(*since);
        if elapsed >= Duration::from_secs(1) {
            self.kbps = (*total * 8 / elapsed.as_millis().max(1) as u64) as u32;
            self.window = Some((now, 0));
        }
    }

    /// The hint to send now, if any: `dropped` says whether this frame was
    /// dropped for some subscriber; `announced` is the track's own target.
    fn hint(
        &mut self,
        now: Timestamp,
        dropped: bool,
        announced: u32,
    ) -> Option<(u32, v1::CongestionReason)> {
        let due = |t: Option<Timestamp>| t.is_none_or(|t| now.saturating_since(t) >= HINT_INTERVAL);
        if dropped {
            self.last_drop = Some(now);
            if self.kbps > 0 && due(self.last_hint) {
                self.last_hint = Some(now);
                self.lowered = true;
                return Some((
                    (self.kbps * 7 / 10).max(MIN_HINT_KBPS),
                    v1::CongestionReason::SubscriberLoss,
                ));
            }
        } else if self.lowered
            && self
                .last_drop
                .is_some_and(|t| now.saturating_since(t) >= RECOVERY)
        {
            self.lowered = false;
            self.last_hint = Some(now);
            let back = if announced > 0 {
                announced
            } else {
                (self.kbps * 13 / 10).max(MIN_HINT_KBPS)
            };
            return Some((back, v1::CongestionReason::Recovered));
        }
        None
    }
}

impl Room {
    /// Routes a media frame of `publisher`, already stamped, to the track's
    /// subscribers (PROTOCOL.md §6.3, §6.4).
    pub fn route(
        &mut self,
        now: Timestamp,
        publisher: u32,
        frame: &MediaFrame,
    ) -> Result<RouteStats, ProtocolError> {
        let h = MediaHeader {
            sender: publisher,
            ..*frame.header()
        };
        let mut stats = RouteStats::default();
        let Some(p) = self
            .members
            .get_mut(&h.sender)
            .and_then(|m| m.tracks.get_mut(&h.track_id))
        else {
            return Err(ProtocolError::new(
                ErrorCode::UnknownTrack,
                format!("you publish no track {}", h.track_id),
            ));
        };
        if p.info.muted {
            return Ok(stats);
        }
        // Audio goes ahead of everything in every subscriber's queue: a frame
        // no audio encoder makes is refused, so an audio grant cannot carry video.
        let max_audio = convene_protocol::limits::max::MAX_AUDIO_FRAME_BYTES as usize;
        if p.audio && frame.as_bytes().len() > max_audio {
            return Err(ProtocolError::new(
                ErrorCode::FrameTooLarge,
                format!(
                    "a frame of {} bytes on audio track {}: audio frames are at most {max_audio}",
                    frame.as_bytes().len(),
                    h.track_id
                ),
            ));
        }
        // A subscriber's request held back by the coalescing interval: a key
        // frame answers it; once the interval is over, it goes out.
        let mut deferred_key = false;
        if h.key {
            p.key_wanted = false;
        } else if p.key_wanted
            && p.last_key_request
                .is_none_or(|t| now.saturating_since(t) >= KEY_FRAME_COALESCE)
        {
            deferred_key = true;
        }
        let class = if p.audio {
            MediaClass::Audio
        } else if h.key {
            MediaClass::Key
        } else {
            MediaClass::Delta
        };
        let mut need_key = false;
        let mut congested = false;
        for (_, outbox) in &p.subscribers {
            congested |= outbox.is_congested();
            let out =
                outbox.push_media(now, class, (h.sender, h.track_id), frame.as_bytes().clone());
            stats.delivered += out.queued as u32;
            for d in &out.dropped {
                stats.dropped[match d {
                    DropReason::VideoDelta => 0,
                    DropReason::VideoKey => 1,
                    DropReason::Audio => 2,
                }] += 1;
            }
            need_key |= out.needs_key_frame.is_some();
            stats.slow += out.slow as u32;
        }
        if deferred_key {
            self.request_key_frame(now, h.sender, h.track_id, 0, true);
        } else if need_key {
            self.request_key_frame(now, h.sender, h.track_id, 0, false);
        }
        // A frame dropped for a subscriber, or one whose path is congested.
        let dropped = congested || stats.dropped.iter().any(|d| *d > 0);
        self.congestion(now, h.sender, h.track_id, dropped, frame.as_bytes().len());
        // One copy per frame for the other nodes, only while someone is there.
        if self.members.len() > self.local
            && self.members.get(&h.sender).is_some_and(|m| m.is_local())
        {
            self.bus.publish(BusMessage::Media {
                meeting: self.id.clone(),
                frame: frame.as_bytes().clone(),
            });
        }
        Ok(stats)
    }

    /// Measures a track's rate and sends its publisher, if connected here,
    /// the congestion hint due (a publisher elsewhere is hinted by its node).
    pub(super) fn congestion(
        &mut self,
        now: Timestamp,
        publisher: u32,
        track: u32,
        dropped: bool,
        bytes: usize,
    ) {
        let Some(m) = self.members.get_mut(&publisher) else {
            return;
        };
        let Some(outbox) = m.outbox().cloned() else {
            return;
        };
        // Audio is small and already first in every queue: lowering it helps
        // nobody, so only video and screen tracks are hinted.
        let Some(p) = m.tracks.get_mut(&track).filter(|p| !p.audio) else {
            return;
        };
        p.congestion.measure(now, bytes);
        if let Some((kbps, reason)) = p.congestion.hint(now, dropped, p.info.target_bitrate_kbps) {
            outbox.push_control(frame(Msg::CongestionHint(v1::CongestionHint {
                track_id: track,
                target_bitrate_kbps: kbps,
                reason: reason as i32,
                ..Default::default()
            })));
        }
    }

    /// Asks a publisher for a key frame, from `requester` (0: the server), at
    /// most once per interval unless `force`.
    pub(super) fn request_key_frame(
        &mut self,
        now: Timestamp,
        publisher: u32,
        track: u32,
        requester: u32,
        force: bool,
    ) {
        let Some(m) = self.members.get_mut(&publisher) else {
            return;
        };
        let Some(p) = m.tracks.get_mut(&track) else {
            return;
        };
        // `force`: a subscriber asked, or a new subscriber needs a picture
        // to start from: coalesced within KEY_FRAME_COALESCE and sent when
        // it is over. Otherwise a queue dropped frames: at most one a
        // second, and never deferred (more drops will ask again).
        let interval = if force {
            KEY_FRAME_COALESCE
        } else {
            KEY_FRAME_REQUEST_INTERVAL
        };
        if p.last_key_request
            .is_some_and(|t| now.saturating_since(t) < interval)
        {
            p.key_wanted |= force;
            return;
        }
        p.last_key_request = Some(now);
        p.key_wanted = false;
        match m.outbox() {
            Some(o) => {
                o.push_control(frame(Msg::KeyFrameRequest(v1::KeyFrameRequest {
                    participant_id: requester,
                    track_id: track,
                    ..Default::default()
                })));
            }
            // The publisher is on another node: ask there.
            None => self.bus.send_to(
                m.node,
                BusMessage::KeyFrameRequest {
                    meeting: self.id.clone(),
                    publisher,
                    track,
                    requester,
                    force,
                },
            ),
        }
    }
}
