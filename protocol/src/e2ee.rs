//! End-to-end encryption (PROTOCOL.md §14): per-sender SFrame keys, sent to
//! each member sealed with HPKE, and a safety code to compare.
//!
//! Sans-IO: a [`Keyring`] takes what the room says (joins, leaves, E2EE
//! payloads from others) and hands back the E2EE payloads to send; it
//! encrypts our media payloads and decrypts others'. The server only routes
//! its messages (§5.7) and sees nothing but public keys and sealed boxes.
//!
//! Keys: every member has an X25519 identity key for the session and
//! announces its public half to the room. Every sender has its own random
//! SFrame base key; whenever the set of members changes (a member announces
//! itself, or leaves) it draws a new one and seals it to each current member
//! with HPKE in auth mode (RFC 9180 §5.1.3), so a recipient knows the key
//! came from the holder of the sender's identity key. A member who left never
//! receives a later key; a member who joins never receives an earlier one.
//! What binds identity keys to people is the [`Keyring::safety_code`]:
//! everyone in the meeting sees the same code only if everyone sees the same
//! public key for every member.

use std::collections::BTreeMap;

use hpke::{Deserializable as _, Kem as _, OpModeR, OpModeS, Serializable as _};
use rand::SeedableRng as _;
use sha2::Digest as _;

use crate::media::{MediaFrame, MediaHeader};
use crate::sframe::{CipherSuite, Header, KeyContext, SframeError};
use crate::v1;

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::AesGcm128;
type PrivateKey = <Kem as hpke::Kem>::PrivateKey;
type PublicKey = <Kem as hpke::Kem>::PublicKey;
type EncappedKey = <Kem as hpke::Kem>::EncappedKey;

/// The SFrame cipher suite of Convene's media (RFC 9605 AES_128_GCM_SHA256_128).
pub const SUITE: CipherSuite = CipherSuite::Aes128GcmSha256_128;
/// Bytes of an SFrame base key.
pub const BASE_KEY_LEN: usize = 16;
/// Bytes of an X25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// First byte of an announcement: a member's identity public key.
pub const ANNOUNCE: u8 = 1;
/// First byte of a sealed sender key.
pub const SENDER_KEY: u8 = 2;
/// Announce flag: this answers an announcement, so do not answer it.
const FLAG_REPLY: u8 = 1;
/// Length of an announcement: kind, flags, public key.
const ANNOUNCE_LEN: usize = 2 + PUBLIC_KEY_LEN;
/// Length of a sealed sender key: kind, KID, encapsulated key, sealed base key and tag.
const SENDER_KEY_LEN: usize = 1 + 8 + PUBLIC_KEY_LEN + BASE_KEY_LEN + 16;
/// Counters remembered behind the highest one, to refuse replays yet accept reordering.
const REPLAY_WINDOW: u64 = 128;
/// Keys kept per sender: the newest and the one before, for frames in flight.
const KEYS_PER_SENDER: usize = 2;
/// HPKE `info` prefix; the meeting and both participant ids follow.
const INFO: &[u8] = b"convene e2ee v1 sender key";
/// Safety code hash prefix.
const SAFETY: &[u8] = b"convene e2ee v1 safety code";

/// Why an E2EE payload from another participant was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum E2eeError {
    /// The payload is not one Convene defines, or has the wrong length.
    #[error("malformed E2EE payload ({0})")]
    Malformed(&'static str),
    /// A sender key from someone whose identity key we do not know.
    #[error("sender key from participant {0}, who has not announced an identity key")]
    UnknownSender(u32),
    /// A sender key for another participant's KID.
    #[error("participant {from} sent a key for KID {kid:#x}, which is not theirs")]
    ForeignKid {
        /// Who sent it.
        from: u32,
        /// The KID it named.
        kid: u64,
    },
    /// The sealed key did not open: not sealed by the sender's identity key,
    /// or not for us, or altered.
    #[error("sender key from participant {0} did not open: forged or altered")]
    Unsealed(u32),
    /// A key older than one already installed (a replay).
    #[error("stale sender key from participant {0}")]
    Stale(u32),
    /// An announcement from someone the roster does not list: a member
    /// everyone would give keys to without seeing it in the meeting.
    #[error("announcement from participant {0}, who is not in the room's roster")]
    NotInRoom(u32),
}

/// Counters of what the keyring did, for reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct E2eeStats {
    /// Frames we encrypted.
    pub encrypted: u64,
    /// Frames of others we decrypted.
    pub decrypted: u64,
    /// Frames refused: altered, wrong key, replayed, or not encrypted.
    pub rejected: u64,
    /// Frames dropped because their sender's key has not arrived (yet).
    pub no_key: u64,
    /// Times we drew a new sender key.
    pub rotations: u64,
    /// Sender keys of others we installed.
    pub keys_received: u64,
    /// E2EE payloads refused (forged, malformed, stale).
    pub bad_messages: u64,
}

/// What handling a room event produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// E2EE payloads to send, in order.
    pub send: Vec<v1::E2eeSend>,
    /// A sender whose new key we installed: ask it for key frames if its
    /// frames were dropped while we had no key.
    pub new_key_from: Option<u32>,
}

/// One received key and the counters seen under it.
struct Received {
    ctx: KeyContext,
    highest: Option<u64>,
    /// Bit i: counter `highest - i` seen.
    seen: u128,
}

impl Received {
    /// Records a counter; false when it was seen before or is too old.
    fn accept(&mut self, ctr: u64) -> bool {
        match self.highest {
            None => {
                self.highest = Some(ctr);
                self.seen = 1;
                true
            }
            Some(h) if ctr > h => {
                let shift = ctr - h;
                self.seen = if shift >= 128 { 0 } else { self.seen << shift };
                self.seen |= 1;
                self.highest = Some(ctr);
                true
            }
            Some(h) => {
                let back = h - ctr;
                if back >= REPLAY_WINDOW {
                    return false;
                }
                let bit = 1u128 << back;
                if self.seen & bit != 0 {
                    return false;
                }
                self.seen |= bit;
                true
            }
        }
    }
}

/// A member of the encrypted meeting other than us.
struct Member {
    public: PublicKey,
    public_bytes: [u8; PUBLIC_KEY_LEN],
    /// Its keys by generation, newest last.
    keys: Vec<(u32, Received)>,
    /// Frames of it dropped for want of a key since its last key.
    starved: bool,
}

/// The end-to-end encryption state of one participant in one meeting.
pub struct Keyring {
    meeting: String,
    me: u32,
    secret: PrivateKey,
    public: PublicKey,
    public_bytes: [u8; PUBLIC_KEY_LEN],
    members: BTreeMap<u32, Member>,
    /// Who the roster says is in the room: only they may become members.
    present: std::collections::BTreeSet<u32>,
    generation: u32,
    key: KeyContext,
    ctr: u64,
    rng: rand::rngs::StdRng,
    stats: E2eeStats,
}

/// The SFrame KID of a sender's key generation: participant id, then generation.
pub fn kid(participant_id: u32, generation: u32) -> u64 {
    u64::from(participant_id) << 32 | u64::from(generation)
}

/// True when `payload`, an `E2eeSend` to the room, is an identity key
/// announcement (§14.1): what a server that requires encryption waits for
/// before it forwards a member's media.
pub fn is_announcement(payload: &[u8]) -> bool {
    payload.len() == ANNOUNCE_LEN && payload[0] == ANNOUNCE
}

/// True when a media payload has the shape of `sender`'s SFrame
/// encryption (§14.4): a header whose KID names the sender, and room for the
/// tag. A server cannot open the frame; this is how it tells encrypted media
/// from plain media in a meeting that requires encryption.
pub fn looks_sealed_by(payload: &[u8], sender: u32) -> bool {
    match Header::parse(payload) {
        Ok((h, len)) => h.kid >> 32 == u64::from(sender) && payload.len() >= len + SUITE.tag_len(),
        Err(_) => false,
    }
}

/// The SFrame metadata of a media frame: every header field but the sender
/// (which the server writes), then the decoder configuration. Authenticated,
/// so the server cannot move a payload to another track, time or key flag.
pub fn media_metadata(header: &MediaHeader, config: Option<&[u8]>) -> Vec<u8> {
    let config = config.unwrap_or(&[]);
    let mut m = Vec::with_capacity(19 + config.len());
    let mut flags = 0u8;
    if header.key {
        flags |= 0x01;
    }
    if !config.is_empty() {
        flags |= 0x02;
    }
    m.push(flags);
    m.extend_from_slice(&(config.len() as u16).to_be_bytes());
    m.extend_from_slice(&header.track_id.to_be_bytes());
    m.extend_from_slice(&header.sequence.to_be_bytes());
    m.extend_from_slice(&header.capture_timestamp_us.to_be_bytes());
    m.extend_from_slice(config);
    m
}

impl Keyring {
    /// A keyring for `meeting`, as participant `me`, drawing keys from a
    /// generator seeded with 32 bytes of the platform's secure randomness.
    pub fn new(meeting: &str, me: u32, seed: [u8; 32]) -> Self {
        let mut rng = rand::rngs::StdRng::from_seed(seed);
        let (secret, _) = Kem::gen_keypair(&mut rng);
        Self::with_rng(meeting, me, secret, rng)
    }

    /// A keyring whose identity key is the X25519 private key `identity`
    /// (for test vectors, and clients that keep one identity across sessions).
    pub fn with_identity(meeting: &str, me: u32, identity: [u8; 32], seed: [u8; 32]) -> Self {
        let secret = PrivateKey::from_bytes(&identity).expect("any 32 bytes are an X25519 key");
        Self::with_rng(meeting, me, secret, rand::rngs::StdRng::from_seed(seed))
    }

    fn with_rng(meeting: &str, me: u32, secret: PrivateKey, mut rng: rand::rngs::StdRng) -> Self {
        let public = Kem::sk_to_pk(&secret);
        let public_bytes: [u8; PUBLIC_KEY_LEN] = public.to_bytes().into();
        let mut base = [0u8; BASE_KEY_LEN];
        rand_core::RngCore::fill_bytes(&mut rng, &mut base);
        Self {
            meeting: meeting.to_owned(),
            me,
            secret,
            public,
            public_bytes,
            members: BTreeMap::new(),
            present: std::collections::BTreeSet::new(),
            generation: 1,
            key: KeyContext::derive(SUITE, kid(me, 1), &base),
            ctr: 0,
            rng,
            stats: E2eeStats::default(),
        }
    }

    /// Our participant id.
    pub fn me(&self) -> u32 {
        self.me
    }

    /// What the keyring has done so far.
    pub fn stats(&self) -> E2eeStats {
        self.stats
    }

    /// Our current key generation (1 at the start, +1 per rotation).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The members whose identity keys we know, us excluded.
    pub fn members(&self) -> Vec<u32> {
        self.members.keys().copied().collect()
    }

    /// The announcement to send to the room right after joining.
    pub fn start(&self) -> v1::E2eeSend {
        self.announce(0, 0)
    }

    fn announce(&self, to: u32, flags: u8) -> v1::E2eeSend {
        let mut payload = Vec::with_capacity(ANNOUNCE_LEN);
        payload.push(ANNOUNCE);
        payload.push(flags);
        payload.extend_from_slice(&self.public_bytes);
        v1::E2eeSend {
            to_participant_id: to,
            payload: payload.into(),
        }
    }

    fn info(&self, from: u32, to: u32) -> Vec<u8> {
        let mut info = Vec::with_capacity(INFO.len() + 1 + self.meeting.len() + 8);
        info.extend_from_slice(INFO);
        info.push(0);
        info.extend_from_slice(self.meeting.as_bytes());
        info.extend_from_slice(&from.to_be_bytes());
        info.extend_from_slice(&to.to_be_bytes());
        info
    }

    /// Draws a new sender key and seals it to every member.
    fn rotate(&mut self) -> Vec<v1::E2eeSend> {
        self.generation += 1;
        self.stats.rotations += 1;
        let mut base = [0u8; BASE_KEY_LEN];
        rand_core::RngCore::fill_bytes(&mut self.rng, &mut base);
        let kid = kid(self.me, self.generation);
        self.key = KeyContext::derive(SUITE, kid, &base);
        self.ctr = 0;
        let recipients: Vec<(u32, PublicKey)> = self
            .members
            .iter()
            .map(|(id, m)| (*id, m.public.clone()))
            .collect();
        recipients
            .into_iter()
            .map(|(to, public)| {
                let info = self.info(self.me, to);
                let mode = OpModeS::Auth((self.secret.clone(), self.public.clone()));
                let (enc, sealed) = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
                    &mode,
                    &public,
                    &info,
                    &base,
                    &kid.to_be_bytes(),
                    &mut self.rng,
                )
                .expect("sealing 16 bytes to a valid X25519 key cannot fail");
                let mut payload = Vec::with_capacity(SENDER_KEY_LEN);
                payload.push(SENDER_KEY);
                payload.extend_from_slice(&kid.to_be_bytes());
                payload.extend_from_slice(&enc.to_bytes());
                payload.extend_from_slice(&sealed);
                v1::E2eeSend {
                    to_participant_id: to,
                    payload: payload.into(),
                }
            })
            .collect()
    }

    /// The roster lists participant `id` (from `Joined` or
    /// `ParticipantJoined`). Announcements are accepted only from
    /// participants the roster lists, so a member the server slipped in
    /// shows in everyone's participant list.
    pub fn participant_joined(&mut self, id: u32) {
        self.present.insert(id);
    }

    /// A participant left the room: forget its keys and draw a new key it never sees.
    pub fn participant_left(&mut self, id: u32) -> Outcome {
        self.present.remove(&id);
        if self.members.remove(&id).is_none() {
            return Outcome::default();
        }
        Outcome {
            send: self.rotate(),
            new_key_from: None,
        }
    }

    /// An E2EE payload from participant `from` (as the server stamped it).
    pub fn receive(&mut self, from: u32, payload: &[u8]) -> Result<Outcome, E2eeError> {
        let r = self.receive_inner(from, payload);
        if r.is_err() {
            self.stats.bad_messages += 1;
        }
        r
    }

    fn receive_inner(&mut self, from: u32, payload: &[u8]) -> Result<Outcome, E2eeError> {
        if from == self.me || from == 0 {
            return Err(E2eeError::Malformed("from ourselves or the server"));
        }
        match payload.first() {
            Some(&ANNOUNCE) => {
                if payload.len() != ANNOUNCE_LEN {
                    return Err(E2eeError::Malformed("announcement length"));
                }
                if !self.present.contains(&from) {
                    return Err(E2eeError::NotInRoom(from));
                }
                let flags = payload[1];
                let bytes: [u8; PUBLIC_KEY_LEN] = payload[2..].try_into().expect("length checked");
                let public = PublicKey::from_bytes(&bytes)
                    .map_err(|_| E2eeError::Malformed("identity key"))?;
                let mut out = Outcome::default();
                if flags & FLAG_REPLY == 0 {
                    out.send.push(self.announce(from, FLAG_REPLY));
                }
                let known = self
                    .members
                    .get(&from)
                    .is_some_and(|m| m.public_bytes == bytes);
                if !known {
                    // A new member, or a member with a new identity (its keys go).
                    self.members.insert(
                        from,
                        Member {
                            public,
                            public_bytes: bytes,
                            keys: Vec::new(),
                            starved: false,
                        },
                    );
                    out.send.extend(self.rotate());
                }
                Ok(out)
            }
            Some(&SENDER_KEY) => {
                if payload.len() != SENDER_KEY_LEN {
                    return Err(E2eeError::Malformed("sender key length"));
                }
                let kid_bytes = &payload[1..9];
                let kid = u64::from_be_bytes(kid_bytes.try_into().expect("8 bytes"));
                if (kid >> 32) as u32 != from {
                    return Err(E2eeError::ForeignKid { from, kid });
                }
                let generation = kid as u32;
                let info = self.info(from, self.me);
                let member = self
                    .members
                    .get_mut(&from)
                    .ok_or(E2eeError::UnknownSender(from))?;
                if member.keys.iter().any(|(g, _)| *g >= generation) {
                    return Err(E2eeError::Stale(from));
                }
                let enc = EncappedKey::from_bytes(&payload[9..9 + PUBLIC_KEY_LEN])
                    .map_err(|_| E2eeError::Malformed("encapsulated key"))?;
                let base = hpke::single_shot_open::<Aead, Kdf, Kem>(
                    &OpModeR::Auth(member.public.clone()),
                    &self.secret,
                    &enc,
                    &info,
                    &payload[9 + PUBLIC_KEY_LEN..],
                    kid_bytes,
                )
                .map_err(|_| E2eeError::Unsealed(from))?;
                member.keys.push((
                    generation,
                    Received {
                        ctx: KeyContext::derive(SUITE, kid, &base),
                        highest: None,
                        seen: 0,
                    },
                ));
                if member.keys.len() > KEYS_PER_SENDER {
                    member.keys.remove(0);
                }
                self.stats.keys_received += 1;
                let starved = std::mem::take(&mut member.starved);
                Ok(Outcome {
                    send: Vec::new(),
                    new_key_from: starved.then_some(from),
                })
            }
            _ => Err(E2eeError::Malformed("unknown kind")),
        }
    }

    /// Encrypts one of our media payloads under our current key.
    pub fn encrypt(&mut self, metadata: &[u8], payload: &[u8]) -> Vec<u8> {
        let ct = self.key.encrypt(self.ctr, metadata, payload);
        self.ctr += 1;
        self.stats.encrypted += 1;
        ct
    }

    /// One of our media frames with its payload encrypted (§14.4): the header
    /// and decoder configuration are the SFrame metadata.
    pub fn seal_media(
        &mut self,
        header: &MediaHeader,
        config: Option<&[u8]>,
        payload: &[u8],
    ) -> MediaFrame {
        let sealed = self.encrypt(&media_metadata(header, config), payload);
        MediaFrame::build(header, config, &sealed)
    }

    /// A received media frame with its payload decrypted (§14.4); refused
    /// frames are counted.
    pub fn open_media(&mut self, frame: &MediaFrame) -> Result<MediaFrame, SframeError> {
        let h = frame.header();
        let plain = self.decrypt(
            h.sender,
            &media_metadata(h, frame.config()),
            &frame.payload(),
        )?;
        Ok(MediaFrame::build(h, frame.config(), &plain))
    }

    /// Decrypts a media payload from `sender`; refused frames are counted.
    pub fn decrypt(
        &mut self,
        sender: u32,
        metadata: &[u8],
        frame: &[u8],
    ) -> Result<Vec<u8>, SframeError> {
        let r = self.decrypt_inner(sender, metadata, frame);
        match &r {
            Ok(_) => self.stats.decrypted += 1,
            Err(SframeError::UnknownKid(_)) => {
                self.stats.no_key += 1;
                if let Some(m) = self.members.get_mut(&sender) {
                    m.starved = true;
                }
            }
            Err(_) => self.stats.rejected += 1,
        }
        r
    }

    fn decrypt_inner(
        &mut self,
        sender: u32,
        metadata: &[u8],
        frame: &[u8],
    ) -> Result<Vec<u8>, SframeError> {
        let (header, len): (Header, usize) = Header::parse(frame)?;
        if (header.kid >> 32) as u32 != sender {
            // Another sender's KID: the server moved a frame between senders.
            return Err(SframeError::Authentication);
        }
        let generation = header.kid as u32;
        let received = self
            .members
            .get_mut(&sender)
            .and_then(|m| m.keys.iter_mut().find(|(g, _)| *g == generation))
            .map(|(_, r)| r)
            .ok_or(SframeError::UnknownKid(header.kid))?;
        let plain = received.ctx.decrypt(frame, header, len, metadata)?;
        // Only an authentic frame may move the replay window.
        if !received.accept(header.ctr) {
            return Err(SframeError::Replayed(header.ctr));
        }
        Ok(plain)
    }

    /// The safety code: 20 digits that are the same for every member exactly
    /// when every member sees the same identity key for everyone.
    pub fn safety_code(&self) -> String {
        let mut all: Vec<(u32, &[u8; PUBLIC_KEY_LEN])> = self
            .members
            .iter()
            .map(|(id, m)| (*id, &m.public_bytes))
            .collect();
        all.push((self.me, &self.public_bytes));
        all.sort();
        let mut h = sha2::Sha256::new();
        h.update(SAFETY);
        h.update([0]);
        h.update((self.meeting.len() as u32).to_be_bytes());
        h.update(self.meeting.as_bytes());
        for (id, key) in all {
            h.update(id.to_be_bytes());
            h.update(key);
        }
        let digest = h.finalize();
        // Four groups of five digits, each from 4 bytes of the hash (≈ 66 bits in all).
        digest
            .chunks(4)
            .take(4)
            .map(|c| {
                let v = u32::from_be_bytes(c.try_into().expect("4 bytes"));
                format!("{:05}", v % 100_000)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}
