//! Every SFrame header vector of RFC 9605 (spec/v1/vectors/sframe/header.json):
//! encoding the KID and CTR gives the bytes, and parsing the bytes gives them
//! back with the whole header consumed.

use convene_protocol::sframe::Header;

#[derive(serde::Deserialize)]
struct File {
    header: Vec<Vector>,
}

#[derive(serde::Deserialize)]
struct Vector {
    kid: u64,
    ctr: u64,
    encoded: String,
}

#[test]
fn every_header_vector_encodes_and_parses() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../spec/v1/vectors/sframe/header.json"
    );
    let file: File = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(file.header.len(), 289, "the RFC has 289 header vectors");
    for v in &file.header {
        let bytes = hex::decode(&v.encoded).unwrap();
        let h = Header {
            kid: v.kid,
            ctr: v.ctr,
        };
        assert_eq!(h.encode(), bytes, "encoding kid {} ctr {}", v.kid, v.ctr);
        let mut with_payload = bytes.clone();
        with_payload.extend_from_slice(b"ciphertext");
        assert_eq!(
            Header::parse(&with_payload),
            Ok((h, bytes.len())),
            "parsing {}",
            v.encoded
        );
        // Every strict prefix of a header is cut short.
        for cut in 0..bytes.len() {
            assert!(
                Header::parse(&bytes[..cut]).is_err(),
                "{} cut to {cut} bytes parsed",
                v.encoded
            );
        }
    }
}
