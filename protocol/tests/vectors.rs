//! Every byte-level vector of `spec/v1/vectors/*.json` decodes to its stated
//! meaning (or its stated error), and every valid one re-encodes to the same bytes.

use std::collections::BTreeSet;
use std::path::PathBuf;

use bytes::Bytes;
use convene_protocol::limits::max;
use convene_protocol::v1::{ClientMessage, ServerMessage};
use convene_protocol::{
    AudioLevel, DESCRIPTOR_SET, ErrorCode, Frame, Layer, MediaFrame, MediaHeader, StreamDecoder,
    decode_frame_with, encode_control,
};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value as RValue};
use serde_json::Value;

fn vector_files() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/v1/vectors");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                serde_json::from_str(&text).unwrap(),
            )
        })
        .collect()
}

fn pool() -> DescriptorPool {
    DescriptorPool::decode(DESCRIPTOR_SET).unwrap()
}

/// The protobuf JSON mapping of a message, canonicalised through reflection.
fn canonical(desc: &MessageDescriptor, json: &Value) -> Value {
    let m = DynamicMessage::deserialize(desc.clone(), json.clone())
        .unwrap_or_else(|e| panic!("bad JSON {json}: {e}"));
    serde_json::to_value(&m).unwrap()
}

fn canonical_bytes(desc: &MessageDescriptor, bytes: &[u8]) -> Value {
    serde_json::to_value(DynamicMessage::decode(desc.clone(), bytes).unwrap()).unwrap()
}

fn error_code(v: &Value) -> ErrorCode {
    let name = v.as_str().unwrap();
    ErrorCode::from_name(name).unwrap_or_else(|| panic!("unknown error {name}"))
}

enum Decoded {
    Client(Result<Frame<ClientMessage>, convene_protocol::ProtocolError>),
    Server(Result<Frame<ServerMessage>, convene_protocol::ProtocolError>),
}

fn check_frame(name: &str, direction: &str, bytes: Bytes, v: &Value, pool: &DescriptorPool) {
    let max = max::MAX_FRAME_BYTES as usize;
    let sfu = v.get("sfu").and_then(Value::as_bool).unwrap_or(false);
    let decoded = if direction == "client_to_server" {
        Decoded::Client(decode_frame_with::<ClientMessage>(bytes.clone(), max, sfu))
    } else {
        Decoded::Server(decode_frame_with::<ServerMessage>(bytes.clone(), max, sfu))
    };
    let env = pool
        .get_message_by_name(if direction == "client_to_server" {
            "convene.v1.ClientMessage"
        } else {
            "convene.v1.ServerMessage"
        })
        .unwrap();
    if let Some(err) = v.get("error") {
        let got = match &decoded {
            Decoded::Client(r) => r.as_ref().err().map(|e| e.code),
            Decoded::Server(r) => r.as_ref().err().map(|e| e.code),
        };
        assert_eq!(got, Some(error_code(err)), "{name}: expected error {err}");
        return;
    }
    let frame = &v["frame"];
    let reencodes = v.get("reencodes").and_then(Value::as_bool).unwrap_or(true);
    if let Some(control) = frame.get("control") {
        let (json, reencoded) = match decoded {
            Decoded::Client(Ok(Frame::Control(m))) => (
                canonical_bytes(&env, &m.encode_to_vec()),
                encode_control(&m),
            ),
            Decoded::Server(Ok(Frame::Control(m))) => (
                canonical_bytes(&env, &m.encode_to_vec()),
                encode_control(&m),
            ),
            _ => panic!("{name}: did not decode as a control frame"),
        };
        assert_eq!(
            json,
            canonical(&env, control),
            "{name}: decoded meaning differs"
        );
        if reencodes {
            assert_eq!(
                hex::encode(&reencoded),
                hex::encode(&bytes),
                "{name}: re-encoding differs"
            );
        }
    } else if let Some(media) = frame.get("media") {
        let m = match decoded {
            Decoded::Client(Ok(Frame::Media(m))) | Decoded::Server(Ok(Frame::Media(m))) => m,
            _ => panic!("{name}: did not decode as a media frame"),
        };
        let want = MediaHeader {
            key: media["key"].as_bool().unwrap(),
            sender: media["sender"].as_u64().unwrap() as u32,
            track_id: media["track_id"].as_u64().unwrap() as u32,
            sequence: media["sequence"].as_u64().unwrap() as u32,
            capture_timestamp_us: media["capture_timestamp_us"].as_u64().unwrap(),
        };
        assert_eq!(m.header(), &want, "{name}");
        let config = hex::decode(media["config"].as_str().unwrap()).unwrap();
        let payload = hex::decode(media["payload"].as_str().unwrap()).unwrap();
        assert_eq!(m.config().unwrap_or(&[]), &config[..], "{name}: config");
        assert_eq!(&m.payload()[..], &payload[..], "{name}: payload");
        let config = (!config.is_empty()).then_some(&config[..]);
        let built = match media.get("layer") {
            Some(l) => {
                let layer = Layer {
                    encoding: l["encoding"].as_u64().unwrap() as u8,
                    temporal: l["temporal"].as_u64().unwrap() as u8,
                    switch_point: l["switch_point"].as_bool().unwrap(),
                    level: l.get("level").map(|v| AudioLevel {
                        voice: v["voice"].as_bool().unwrap(),
                        dbov: v["dbov"].as_u64().unwrap() as u8,
                    }),
                };
                assert_eq!(m.layer(), Some(layer), "{name}: layer");
                MediaFrame::build_layered(layer, &want, config, &payload)
            }
            None => {
                assert_eq!(m.layer(), None, "{name}: not a LAYERED frame");
                MediaFrame::build(&want, config, &payload)
            }
        };
        if reencodes {
            assert_eq!(built.as_wire(), &bytes, "{name}: re-encoding differs");
        } else {
            assert_ne!(
                built.as_wire(),
                &bytes,
                "{name}: says it does not re-encode, but does"
            );
        }
    } else if let Some(ext) = frame.get("extension") {
        let got = match decoded {
            Decoded::Client(Ok(Frame::Extension(t))) | Decoded::Server(Ok(Frame::Extension(t))) => {
                t
            }
            _ => panic!("{name}: not an extension frame"),
        };
        assert_eq!(got as u64, ext.as_u64().unwrap(), "{name}");
    } else {
        panic!("{name}: a vector needs frame.control, frame.media, frame.extension or error");
    }
}

fn check_stream(name: &str, bytes: &[u8], v: &Value) {
    let mut d = StreamDecoder::new(max::MAX_FRAME_BYTES as usize);
    d.push(bytes);
    let mut frames = Vec::new();
    let result = loop {
        match d.next_frame() {
            Ok(Some(f)) => frames.push(hex::encode(&f)),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e.code),
        }
    };
    if let Some(err) = v.get("error") {
        assert_eq!(result, Err(error_code(err)), "{name}");
    } else {
        assert_eq!(result, Ok(()), "{name}");
        let want: Vec<String> = v["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        assert_eq!(frames, want, "{name}");
    }
}

#[test]
fn every_vector_holds() {
    let pool = pool();
    let mut names = BTreeSet::new();
    let mut count = 0;
    for (file, doc) in vector_files() {
        for v in doc["vectors"].as_array().unwrap() {
            let name = format!("{file}:{}", v["name"].as_str().unwrap());
            assert!(names.insert(name.clone()), "duplicate vector {name}");
            let bytes = Bytes::from(hex::decode(v["hex"].as_str().unwrap()).unwrap());
            let direction = v["direction"].as_str().unwrap();
            match v["kind"].as_str().unwrap() {
                "frame" | "ws_message" | "wt_datagram" => {
                    check_frame(&name, direction, bytes, v, &pool)
                }
                "wt_control_stream" => check_stream(&name, &bytes, v),
                k => panic!("{name}: unknown kind {k}"),
            }
            count += 1;
        }
    }
    assert!(
        count >= 60,
        "the spec promises at least 60 vectors, found {count}"
    );
}

#[test]
fn every_message_type_has_a_vector() {
    let pool = pool();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for (_, doc) in vector_files() {
        for v in doc["vectors"].as_array().unwrap() {
            if let Some(c) = v["frame"].get("control") {
                for k in c.as_object().unwrap().keys() {
                    let dir = if v["direction"] == "client_to_server" {
                        "ClientMessage"
                    } else {
                        "ServerMessage"
                    };
                    seen.insert(format!("{dir}.{k}"));
                }
            }
        }
    }
    for env in ["ClientMessage", "ServerMessage"] {
        let d = pool
            .get_message_by_name(&format!("convene.v1.{env}"))
            .unwrap();
        for f in d.fields().filter(|f| f.containing_oneof().is_some()) {
            assert!(
                seen.contains(&format!("{env}.{}", f.json_name())),
                "no vector carries {env}.{}",
                f.name()
            );
        }
    }
    // Silence an unused-import lint on targets where RValue is not otherwise needed.
    let _ = RValue::Bool(true);
}
