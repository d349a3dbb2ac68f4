//! The router against the spec's publication and subscription machines
//! (`spec/v1/states/publication.toml`, `subscription.toml`): random sequences
//! of requests on one track, each outcome checked against the generated
//! transition function.

use std::sync::Arc;

use bytes::Bytes;
use convene_protocol::states::{publication, subscription};
use convene_protocol::v1::{self, Participant, TrackInfo, TrackKind};
use convene_protocol::{MediaFrame, MediaHeader, RoomRequest, Timestamp};
use convene_server::mailbox::Mailbox;
use convene_server::outbox::{Outbox, OutboxLimits, Wake};
use convene_server::room::{Local, Room, RoomLimits};
use proptest::prelude::*;

struct NoWake;
impl Wake for NoWake {
    fn wake(&self) {}
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Publish,
    Unpublish,
    Mute,
    Unmute,
    Media,
    KeyFrameRequest,
    Subscribe,
    Unsubscribe,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Publish),
        Just(Op::Unpublish),
        Just(Op::Mute),
        Just(Op::Unmute),
        Just(Op::Media),
        Just(Op::KeyFrameRequest),
        Just(Op::Subscribe),
        Just(Op::Unsubscribe),
    ]
}

/// A member of this node reached through `o`; nothing here reads its mailbox.
fn local(o: &Arc<Outbox>) -> Local {
    Local {
        outbox: o.clone(),
        mailbox: Arc::new(Mailbox::new(Box::new(NoWake))),
        sfu: false,
        reactions: false,
    }
}

fn media_count(o: &Outbox) -> usize {
    let mut v: Vec<Bytes> = Vec::new();
    o.drain(&mut v, usize::MAX);
    v.iter().filter(|b| b[0] == 0x02).count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn the_router_follows_the_publication_and_subscription_machines(ops in proptest::collection::vec(op(), 1..50)) {
        let t = Timestamp(0);
        let mut room = Room::new("model", RoomLimits { max_participants: 10, max_tracks: 8, max_rooms: 1, ..RoomLimits::default() });
        let new = || Arc::new(Outbox::new(OutboxLimits::default(), Box::new(NoWake)));
        let (p_out, s_out) = (new(), new());
        room.join(t, Participant { participant_id: 1, display_name: "p".into(), ..Default::default() }, false, local(&p_out)).unwrap();
        room.join(t, Participant { participant_id: 2, display_name: "s".into(), ..Default::default() }, false, local(&s_out)).unwrap();
        let mut pubs = publication::INITIAL;
        let mut subs = subscription::INITIAL;
        let track = TrackInfo { track_id: 7, kind: TrackKind::Audio as i32, codec: "opus".into(), ..Default::default() };
        for op in ops {
            media_count(&s_out);
            let (event, result) = match op {
                Op::Publish => (publication::Event::Publish, room.handle(t, 1, RoomRequest::Publish(track.clone()), 0)),
                Op::Unpublish => (publication::Event::Unpublish, room.handle(t, 1, RoomRequest::Unpublish(v1::Unpublish { track_id: 7 }), 0)),
                Op::Mute => (publication::Event::Mute, room.handle(t, 1, RoomRequest::SetTrackMuted(v1::SetTrackMuted { track_id: 7, muted: true }), 0)),
                Op::Unmute => (publication::Event::Unmute, room.handle(t, 1, RoomRequest::SetTrackMuted(v1::SetTrackMuted { track_id: 7, muted: false }), 0)),
                Op::KeyFrameRequest => {
                    let r = room.handle(t, 2, RoomRequest::KeyFrameRequest(v1::KeyFrameRequest { participant_id: 1, track_id: 7, ..Default::default() }), 0);
                    // Only a subscriber may ask (§6.5): anyone else gets
                    // UNKNOWN_TRACK, as for a track that is not published.
                    if pubs != publication::State::Unpublished && subs == subscription::State::Idle {
                        prop_assert_eq!(r.map_err(|e| e.code), Err(convene_protocol::ErrorCode::UnknownTrack));
                        continue;
                    }
                    (publication::Event::KeyFrameRequest, r)
                }
                Op::Media => {
                    let f = MediaFrame::build(&MediaHeader { key: true, sender: 1, track_id: 7, sequence: 0, capture_timestamp_us: 0 }, None, b"x");
                    let r = room.route(t, 1, &f);
                    // Delivered exactly when the track is live and the subscriber subscribed.
                    let delivered = media_count(&s_out);
                    let expect = usize::from(pubs == publication::State::Live && subs != subscription::State::Idle);
                    prop_assert_eq!(delivered, if r.is_ok() { expect } else { 0 });
                    (publication::Event::Media, r.map(|_| ()))
                }
                Op::Subscribe | Op::Unsubscribe => {
                    let (ev, req) = if matches!(op, Op::Subscribe) {
                        (subscription::Event::Subscribe, RoomRequest::Subscribe(v1::Subscribe { participant_id: 1, track_id: 7, ..Default::default() }))
                    } else {
                        (subscription::Event::Unsubscribe, RoomRequest::Unsubscribe(v1::Unsubscribe { participant_id: 1, track_id: 7 }))
                    };
                    let r = room.handle(t, 2, req, 0);
                    // Subscribing needs a published track; the subscription machine covers the rest.
                    if pubs == publication::State::Unpublished {
                        prop_assert_eq!(r.map_err(|e| e.code), Err(convene_protocol::ErrorCode::UnknownTrack));
                    } else {
                        let want = subscription::next(subs, ev);
                        match (&want, &r) {
                            (Ok(s), Ok(())) => subs = *s,
                            _ => prop_assert!(false, "{:?} in {:?}: machine {:?}, router {:?}", ev, subs, want, r),
                        }
                    }
                    continue;
                }
            };
            match publication::next(pubs, event) {
                Ok(next) => {
                    prop_assert!(result.is_ok(), "{:?} in {:?}: router refused with {:?}", event, pubs, result);
                    pubs = next;
                    if next == publication::State::Unpublished {
                        // Unpublishing ends every subscription to the track.
                        subs = subscription::State::Idle;
                    }
                }
                Err(code) => prop_assert_eq!(result.map_err(|e| e.code), Err(code), "{:?} in {:?}", event, pubs),
            }
        }
    }
}
