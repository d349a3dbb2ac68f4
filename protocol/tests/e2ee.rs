//! The end-to-end encryption keyring in a simulated room: the test plays the
//! server, routing E2EE payloads exactly as §5.7 says (stamped with the
//! sender, to one participant or to everyone else), and also plays a
//! malicious server where the threat model says one could act.

use std::collections::{BTreeMap, VecDeque};

use convene_protocol::e2ee::{self, Keyring};
use convene_protocol::media::MediaHeader;
use convene_protocol::sframe::SframeError;
use convene_protocol::v1;

struct Room {
    rings: BTreeMap<u32, Keyring>,
    queue: VecDeque<(u32, v1::E2eeSend)>,
    /// Every E2EE payload the server routed, as a tap would record it.
    routed: Vec<Vec<u8>>,
}

fn seed(id: u32, salt: u8) -> [u8; 32] {
    let mut s = [salt; 32];
    s[..4].copy_from_slice(&id.to_be_bytes());
    s
}

impl Room {
    fn new() -> Self {
        Room {
            rings: BTreeMap::new(),
            queue: VecDeque::new(),
            routed: Vec::new(),
        }
    }

    fn deliver(&mut self) {
        while let Some((from, m)) = self.queue.pop_front() {
            self.routed.push(m.payload.to_vec());
            let targets: Vec<u32> = if m.to_participant_id == 0 {
                self.rings
                    .keys()
                    .copied()
                    .filter(|id| *id != from)
                    .collect()
            } else {
                vec![m.to_participant_id]
            };
            for t in targets {
                if let Some(ring) = self.rings.get_mut(&t) {
                    let out = ring
                        .receive(from, &m.payload)
                        .expect("honest payloads are accepted");
                    self.queue.extend(out.send.into_iter().map(|s| (t, s)));
                }
            }
        }
    }

    fn join(&mut self, id: u32) {
        let mut ring = Keyring::new("meeting-1", id, seed(id, 7));
        // The roster: the newcomer's Joined lists the others, they get ParticipantJoined.
        for (other, r) in self.rings.iter_mut() {
            ring.participant_joined(*other);
            r.participant_joined(id);
        }
        self.queue.push_back((id, ring.start()));
        self.rings.insert(id, ring);
        self.deliver();
    }

    fn leave(&mut self, id: u32) -> Keyring {
        let gone = self.rings.remove(&id).unwrap();
        for (other, ring) in self.rings.iter_mut() {
            let out = ring.participant_left(id);
            self.queue.extend(out.send.into_iter().map(|s| (*other, s)));
        }
        self.deliver();
        gone
    }

    fn ring(&mut self, id: u32) -> &mut Keyring {
        self.rings.get_mut(&id).unwrap()
    }
}

fn header(seq: u32) -> MediaHeader {
    MediaHeader {
        key: seq.is_multiple_of(30),
        sender: 0,
        track_id: 2,
        sequence: seq,
        capture_timestamp_us: 1_700_000_000_000_000 + u64::from(seq) * 33_333,
    }
}

/// Encrypts a frame from `from` and returns (metadata, ciphertext).
fn send(room: &mut Room, from: u32, seq: u32, plain: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let meta = e2ee::media_metadata(&header(seq), None);
    let ct = room.ring(from).encrypt(&meta, plain);
    (meta, ct)
}

#[test]
fn three_members_exchange_frames_and_agree_on_the_safety_code() {
    let mut room = Room::new();
    for id in [1, 2, 3] {
        room.join(id);
    }
    let code = room.ring(1).safety_code();
    assert_eq!(code.len(), 23, "four groups of five digits: {code}");
    for id in [2, 3] {
        assert_eq!(room.ring(id).safety_code(), code);
        assert_eq!(room.ring(id).members().len(), 2);
    }
    for from in [1, 2, 3] {
        let plain = format!("frame from {from}").into_bytes();
        let (meta, ct) = send(&mut room, from, 1, &plain);
        assert!(
            !ct.windows(plain.len()).any(|w| w == plain.as_slice()),
            "ciphertext hides the frame"
        );
        assert_eq!(
            ct.len(),
            plain.len()
                + e2ee::SUITE.tag_len()
                + convene_protocol::sframe::Header {
                    kid: e2ee::kid(from, room.ring(from).generation()),
                    ctr: 0
                }
                .encode()
                .len()
        );
        for to in [1, 2, 3].into_iter().filter(|t| *t != from) {
            assert_eq!(
                room.ring(to).decrypt(from, &meta, &ct).unwrap(),
                plain,
                "{from} → {to}"
            );
        }
    }
    // No payload the server routed contains a key that decrypts a frame:
    // try every 16-byte window of every payload as the base key of the KID.
    let (meta, ct) = send(&mut room, 1, 2, b"secret words");
    let (h, len) = convene_protocol::sframe::Header::parse(&ct).unwrap();
    for p in &room.routed {
        for w in p.windows(e2ee::BASE_KEY_LEN) {
            let ctx = convene_protocol::sframe::KeyContext::derive(e2ee::SUITE, h.kid, w);
            assert!(ctx.decrypt(&ct, h, len, &meta).is_err());
        }
    }
}

#[test]
fn a_member_who_left_cannot_decrypt_later_frames() {
    let mut room = Room::new();
    for id in [1, 2, 3] {
        room.join(id);
    }
    let (meta, ct) = send(&mut room, 1, 1, b"before the leave");
    assert!(room.ring(3).decrypt(1, &meta, &ct).is_ok());
    let before = room.ring(1).generation();
    let mut gone = room.leave(3);
    assert!(
        room.ring(1).generation() > before,
        "a leave draws a new key"
    );
    let (meta, ct) = send(&mut room, 1, 2, b"after the leave");
    assert_eq!(
        room.ring(2).decrypt(1, &meta, &ct).unwrap(),
        b"after the leave"
    );
    assert!(matches!(
        gone.decrypt(1, &meta, &ct),
        Err(SframeError::UnknownKid(_))
    ));
    // Even handed the new KID, the old key material does not open it.
    assert_ne!(room.ring(2).safety_code(), gone.safety_code());
}

#[test]
fn a_member_who_joins_cannot_decrypt_earlier_frames() {
    let mut room = Room::new();
    room.join(1);
    room.join(2);
    let (meta, ct) = send(&mut room, 1, 1, b"said before 3 came");
    assert!(room.ring(2).decrypt(1, &meta, &ct).is_ok());
    room.join(3);
    assert!(room.ring(3).decrypt(1, &meta, &ct).is_err());
    let (meta, ct) = send(&mut room, 1, 2, b"said after");
    assert_eq!(room.ring(3).decrypt(1, &meta, &ct).unwrap(), b"said after");
    // Frames in flight under the previous key still decrypt for those who had it.
    let (m_old, c_old) = (meta.clone(), ct.clone());
    room.join(4);
    assert!(room.ring(1).generation() > 3);
    assert_eq!(
        room.ring(2).decrypt(1, &m_old, &c_old).unwrap(),
        b"said after"
    );
    assert!(room.ring(4).decrypt(1, &m_old, &c_old).is_err());
    assert_eq!(room.ring(4).stats().keys_received, 3);
}

#[test]
fn tampered_replayed_and_moved_frames_are_rejected_and_counted() {
    let mut room = Room::new();
    room.join(1);
    room.join(2);
    let (meta, ct) = send(&mut room, 1, 5, b"an encoded video frame");
    for i in 0..ct.len() {
        let mut bad = ct.clone();
        bad[i] ^= 0x40;
        assert!(
            room.ring(2).decrypt(1, &meta, &bad).is_err(),
            "byte {i} flipped"
        );
    }
    let mut other_track = meta.clone();
    other_track[3..7].copy_from_slice(&9u32.to_be_bytes());
    assert!(
        room.ring(2).decrypt(1, &other_track, &ct).is_err(),
        "moved to another track"
    );
    // The server stamps sender 3 on a frame of 1: not 1's KID → refused.
    room.join(3);
    let (meta, ct) = send(&mut room, 1, 6, b"x");
    assert_eq!(
        room.ring(2).decrypt(3, &meta, &ct),
        Err(SframeError::Authentication)
    );
    assert!(room.ring(2).decrypt(1, &meta, &ct).is_ok());
    assert_eq!(
        room.ring(2).decrypt(1, &meta, &ct),
        Err(SframeError::Replayed(0))
    );
    // Not encrypted at all.
    assert!(room.ring(2).decrypt(1, &meta, b"\x00plain").is_err());
    let s = room.ring(2).stats();
    assert!(s.rejected >= ct.len() as u64 + 4, "{s:?}");
    assert_eq!(s.decrypted, 1);
}

#[test]
fn reordered_frames_decrypt_once_each() {
    let mut room = Room::new();
    room.join(1);
    room.join(2);
    let frames: Vec<_> = (0..10)
        .map(|i| send(&mut room, 1, i, &[i as u8; 40]))
        .collect();
    for i in [3usize, 0, 9, 1, 2, 8, 4, 7, 5, 6] {
        assert_eq!(
            room.ring(2).decrypt(1, &frames[i].0, &frames[i].1).unwrap(),
            vec![i as u8; 40]
        );
    }
    for (m, c) in &frames {
        assert!(matches!(
            room.ring(2).decrypt(1, m, c),
            Err(SframeError::Replayed(_))
        ));
    }
}

#[test]
fn a_server_in_the_middle_changes_the_safety_code_and_cannot_forge_keys() {
    let mut room = Room::new();
    room.join(1);
    room.join(2);
    // The server swaps 2's identity key for its own when telling 1.
    let mallory = Keyring::new("meeting-1", 2, seed(2, 99));
    let start = mallory.start();
    let mut victim = Keyring::new("meeting-1", 1, seed(1, 7));
    victim.participant_joined(2);
    victim.receive(2, &start.payload).unwrap();
    let honest = room.ring(2).safety_code();
    assert_ne!(
        victim.safety_code(),
        honest,
        "substituted key shows in the code"
    );

    // A sender key sealed by anyone but 2's identity key does not open at 1.
    let mut room2 = Room::new();
    room2.join(1);
    room2.join(2);
    let mut forger = Keyring::new("meeting-1", 2, seed(2, 42));
    // The forger knows 1's public key (it was announced through the server).
    let announce_of_1 = room2.ring(1).start();
    for id in [1, 5, 6, 7] {
        forger.participant_joined(id);
    }
    forger.receive(1, &announce_of_1.payload).unwrap();
    // A few rotations, so its key is newer than the honest 2's.
    for other in [5, 6, 7] {
        let start = Keyring::new("meeting-1", other, seed(other, 1)).start();
        forger.receive(other, &start.payload).unwrap();
    }
    let out = forger.participant_left(7);
    let forged = out.send.iter().find(|m| m.to_participant_id == 1).unwrap();
    assert!(matches!(
        room2.ring(1).receive(2, &forged.payload),
        Err(e2ee::E2eeError::Unsealed(2))
    ));
    // A key for someone else's KID is refused before any cryptography.
    assert!(matches!(
        room2.ring(1).receive(3, &forged.payload),
        Err(e2ee::E2eeError::ForeignKid { .. })
    ));
    assert_eq!(room2.ring(1).stats().bad_messages, 2);
}

#[test]
fn a_member_the_roster_does_not_list_gets_no_keys() {
    // The server announces a ghost (participant 9) without a ParticipantJoined:
    // were it accepted, everyone would seal keys to it and, all seeing the
    // same ghost, still agree on the safety code.
    let mut room = Room::new();
    room.join(1);
    room.join(2);
    let ghost = Keyring::new("meeting-1", 9, seed(9, 3));
    let before = room.ring(1).safety_code();
    assert_eq!(
        room.ring(1).receive(9, &ghost.start().payload).unwrap_err(),
        e2ee::E2eeError::NotInRoom(9)
    );
    assert_eq!(room.ring(1).members(), vec![2]);
    assert_eq!(room.ring(1).safety_code(), before);
    // Once listed (so everyone sees it in the meeting), it is a member like any other.
    room.ring(1).participant_joined(9);
    let out = room.ring(1).receive(9, &ghost.start().payload).unwrap();
    assert!(
        out.send
            .iter()
            .any(|m| m.to_participant_id == 9 && m.payload[0] == e2ee::SENDER_KEY)
    );
}

#[test]
fn garbage_never_panics() {
    use proptest::prelude::*;
    let mut room = Room::new();
    room.join(1);
    room.join(2);
    let cell = std::cell::RefCell::new(room.rings.remove(&1).unwrap());
    proptest!(ProptestConfig::with_cases(2000), |(bytes in proptest::collection::vec(any::<u8>(), 0..120), from in 0u32..4)| {
        // Any 32 bytes are an X25519 key, so a random announcement-sized
        // payload from member 2 is a well-formed new identity for it, which
        // by design drops its keys (a_server_in_the_middle_… covers that):
        // not garbage, and it would leave the check below without 2's key.
        prop_assume!(!(from == 2 && bytes.len() == 2 + e2ee::PUBLIC_KEY_LEN && bytes[0] == e2ee::ANNOUNCE));
        let mut ring = cell.borrow_mut();
        let _ = ring.receive(from, &bytes);
        let _ = ring.decrypt(from, &bytes, &bytes);
    });
    room.rings.insert(1, cell.into_inner());
    // Still works afterwards.
    let (meta, ct) = send(&mut room, 2, 1, b"ok");
    assert_eq!(room.ring(1).decrypt(2, &meta, &ct).unwrap(), b"ok");
}

#[test]
fn a_server_tells_announcements_and_sealed_frames_from_plain_ones() {
    let ring = Keyring::new("meeting-1", 5, seed(5, 7));
    assert!(e2ee::is_announcement(&ring.start().payload));
    assert!(!e2ee::is_announcement(&[e2ee::ANNOUNCE; 33]));
    assert!(!e2ee::is_announcement(&[e2ee::SENDER_KEY; 34]));
    assert!(!e2ee::is_announcement(&[]));

    let mut room = Room::new();
    room.join(5);
    room.join(6);
    let (_, ct) = send(&mut room, 5, 1, b"a frame of pictures");
    assert!(e2ee::looks_sealed_by(&ct, 5));
    // Stamped by another sender, the KID does not match.
    assert!(!e2ee::looks_sealed_by(&ct, 6));
    // A header without room for the tag is not a sealed frame.
    let (_, len) = convene_protocol::sframe::Header::parse(&ct).unwrap();
    assert!(!e2ee::looks_sealed_by(
        &ct[..len + e2ee::SUITE.tag_len() - 1],
        5
    ));
    // Plain media: an H.264 start code, an Opus TOC byte, nothing.
    assert!(!e2ee::looks_sealed_by(
        &[0, 0, 0, 1, 0x65, 0x88, 0x84, 0x00],
        5
    ));
    assert!(!e2ee::looks_sealed_by(&[0x78; 80], 5));
    assert!(!e2ee::looks_sealed_by(&[], 5));
}
