//! Property tests: every message of both envelopes, filled with random values
//! by reflection over the schema, survives encode → frame → decode unchanged,
//! on the WebSocket framing (one message, one frame) and on the WebTransport
//! control stream (length-prefixed, cut at random points). Media frames too.

use bytes::Bytes;
use convene_protocol::v1::{self, ClientMessage, ServerMessage, client_message::Msg};
use convene_protocol::{
    DESCRIPTOR_SET, Frame, MediaFrame, MediaHeader, RoomRequest, StreamDecoder, decode_frame,
    encode_control,
};
use proptest::prelude::*;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value,
};

/// A small deterministic generator, seeded by proptest.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn text(rng: &mut Rng) -> String {
    const ALPHABET: &[&str] = &["a", "Z", "0", "-", " ", "é", "猫", "🎥", "\u{0}", "\\"];
    (0..1 + rng.below(12))
        .map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize])
        .collect()
}

/// A non-default value for one element of `field`, so that presence survives a round trip.
fn value(field: &FieldDescriptor, rng: &mut Rng, depth: u32) -> Value {
    match field.kind() {
        Kind::Uint32 | Kind::Fixed32 => Value::U32(1 + rng.below(u32::MAX as u64) as u32),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(1 + rng.below(u64::MAX - 1)),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(rng.next() as i32 | 1),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(rng.next() as i64 | 1),
        Kind::Bool => Value::Bool(true),
        Kind::String => Value::String(text(rng)),
        Kind::Bytes => Value::Bytes(Bytes::from(
            (0..1 + rng.below(20))
                .map(|_| rng.next() as u8)
                .collect::<Vec<u8>>(),
        )),
        Kind::Enum(e) => {
            let values: Vec<i32> = e.values().map(|v| v.number()).filter(|n| *n != 0).collect();
            Value::EnumNumber(values[rng.below(values.len() as u64) as usize])
        }
        Kind::Message(m) => Value::Message(message(&m, rng, depth + 1, None)),
        Kind::Float | Kind::Double => unreachable!("the schema has no floating-point fields"),
    }
}

/// A random message; for an envelope, `variant` picks the oneof member.
fn message(
    desc: &MessageDescriptor,
    rng: &mut Rng,
    depth: u32,
    variant: Option<usize>,
) -> DynamicMessage {
    let mut m = DynamicMessage::new(desc.clone());
    let oneof_fields: Vec<FieldDescriptor> = desc
        .fields()
        .filter(|f| f.containing_oneof().is_some())
        .collect();
    for f in desc.fields() {
        if f.containing_oneof().is_some() {
            continue;
        }
        if depth > 3 || rng.below(3) == 0 {
            continue;
        }
        if f.is_list() {
            let n = 1 + rng.below(3);
            let items = (0..n).map(|_| value(&f, rng, depth)).collect();
            m.set_field(&f, Value::List(items));
        } else {
            m.set_field(&f, value(&f, rng, depth));
        }
    }
    if let Some(i) = variant {
        let f = &oneof_fields[i % oneof_fields.len()];
        m.set_field(f, value(f, rng, depth));
    }
    m
}

fn pool() -> DescriptorPool {
    DescriptorPool::decode(DESCRIPTOR_SET).unwrap()
}

fn oneof_count(desc: &MessageDescriptor) -> usize {
    desc.fields()
        .filter(|f| f.containing_oneof().is_some())
        .count()
}

#[test]
fn every_envelope_variant_is_generated() {
    let pool = pool();
    for name in ["convene.v1.ClientMessage", "convene.v1.ServerMessage"] {
        let d = pool.get_message_by_name(name).unwrap();
        assert!(
            oneof_count(&d) >= 20,
            "{name} has {} members",
            oneof_count(&d)
        );
    }
}

/// Encode with reflection, decode with our types, re-encode, and compare meanings;
/// then frame it both ways and decode the frames.
fn check<M: Message + Default + PartialEq + std::fmt::Debug>(
    desc: &MessageDescriptor,
    variant: usize,
    seed: u64,
    cuts: &[usize],
) {
    let mut rng = Rng(seed | 1);
    let dynamic = message(desc, &mut rng, 0, Some(variant));
    let wire = dynamic.encode_to_vec();
    let typed = M::decode(&wire[..]).expect("our types decode what the schema encodes");
    let again = DynamicMessage::decode(desc.clone(), typed.encode_to_vec().as_slice()).unwrap();
    assert_eq!(again, dynamic, "meaning changed through our types");

    // WebSocket: the frame is the message.
    let frame = encode_control(&typed);
    match decode_frame::<M>(frame.clone(), 1 << 20).unwrap() {
        Frame::Control(back) => assert_eq!(back, typed),
        other => panic!("not a control frame: {other:?}"),
    }

    // WebTransport control stream: three frames, delivered in arbitrary pieces.
    let mut stream = Vec::new();
    for _ in 0..3 {
        stream.extend_from_slice(&convene_protocol::frame::length_prefix(frame.len()));
        stream.extend_from_slice(&frame);
    }
    let mut dec = StreamDecoder::new(1 << 20);
    let mut got = Vec::new();
    let mut at: usize = 0;
    for &cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
        let end = at.saturating_add(cut.max(1)).min(stream.len());
        dec.push(&stream[at..end]);
        at = end;
        while let Some(f) = dec.next_frame().unwrap() {
            got.push(f);
        }
        if at == stream.len() {
            break;
        }
    }
    assert_eq!(got, vec![frame.clone(), frame.clone(), frame]);
    assert_eq!(dec.buffered(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_messages_round_trip(variant in 0usize..64, seed in any::<u64>(), cuts in proptest::collection::vec(1usize..40, 0..12)) {
        let pool = pool();
        check::<ClientMessage>(&pool.get_message_by_name("convene.v1.ClientMessage").unwrap(), variant, seed, &cuts);
    }

    /// A room request travels between the nodes of a cluster as the client
    /// message that made it: every kind must come back as it left.
    #[test]
    fn room_requests_cross_between_nodes_unchanged(variant in 0usize..64, seed in any::<u64>()) {
        let pool = pool();
        let desc = pool.get_message_by_name("convene.v1.ClientMessage").unwrap();
        let mut rng = Rng(seed | 1);
        let wire = message(&desc, &mut rng, 0, Some(variant)).encode_to_vec();
        let msg = ClientMessage::decode(&wire[..]).unwrap().msg.unwrap();
        let Some(request) = RoomRequest::from_message(msg.clone()) else {
            // Session messages are the session's own, never the room's.
            prop_assert!(matches!(msg, Msg::Hello(_) | Msg::Goodbye(_) | Msg::Ping(_) | Msg::Pong(_) | Msg::Join(_) | Msg::Leave(_) | Msg::Error(_)), "{msg:?} is not a room request");
            return Ok(());
        };
        prop_assert_eq!(RoomRequest::from_message(request.clone().into_message()), Some(request.clone()));
        match msg {
            // A Publish without a track is read as an empty one (which the session refuses).
            Msg::Publish(v1::Publish { track: None }) => prop_assert_eq!(request, RoomRequest::Publish(Default::default())),
            msg => prop_assert_eq!(request.into_message(), msg),
        }
    }

    #[test]
    fn server_messages_round_trip(variant in 0usize..64, seed in any::<u64>(), cuts in proptest::collection::vec(1usize..40, 0..12)) {
        let pool = pool();
        check::<ServerMessage>(&pool.get_message_by_name("convene.v1.ServerMessage").unwrap(), variant, seed, &cuts);
    }

    #[test]
    fn media_frames_round_trip(
        key in any::<bool>(),
        sender in any::<u32>(),
        track_id in 1u32..,
        sequence in any::<u32>(),
        capture_timestamp_us in any::<u64>(),
        config in proptest::collection::vec(any::<u8>(), 0..64),
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let key = key || !config.is_empty();
        let h = MediaHeader { key, sender, track_id, sequence, capture_timestamp_us };
        let f = MediaFrame::build(&h, (!config.is_empty()).then_some(&config[..]), &payload);
        // A WebSocket message and a WebTransport stream or datagram carry the same bytes.
        match decode_frame::<ClientMessage>(f.as_bytes().clone(), 1 << 20).unwrap() {
            Frame::Media(m) => {
                prop_assert_eq!(m.header(), &h);
                prop_assert_eq!(m.config().unwrap_or(&[]), &config[..]);
                prop_assert_eq!(&m.payload()[..], &payload[..]);
                let stamped = m.stamp_sender(sender ^ 0x5555_5555);
                prop_assert_eq!(stamped.header().sender, sender ^ 0x5555_5555);
                prop_assert_eq!(&stamped.payload()[..], &payload[..]);
            }
            other => prop_assert!(false, "not media: {:?}", other),
        }
    }

    /// Arbitrary bytes never panic the decoders; they decode or give a spec error.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let b = Bytes::from(bytes);
        let _ = decode_frame::<ClientMessage>(b.clone(), 200);
        let _ = decode_frame::<ServerMessage>(b.clone(), 200);
        let mut d = StreamDecoder::new(100);
        d.push(&b);
        while let Ok(Some(_)) = d.next_frame() {}
    }
}
