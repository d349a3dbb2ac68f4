//! Every SFrame header vector of RFC 9605 (spec/v1/vectors/sframe/header.json):
//! encoding the KID and CTR gives the bytes, and parsing the bytes gives them
//! back with the whole header consumed. Then the AEAD vectors (aes_ctr_hmac.json)
//! and the full-frame vectors of every cipher suite (sframe.json).

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

fn vectors(name: &str) -> serde_json::Value {
    let path = format!(
        "{}/../spec/v1/vectors/sframe/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn hex_of(v: &serde_json::Value, field: &str) -> Vec<u8> {
    hex::decode(v[field].as_str().unwrap()).unwrap()
}

/// RFC 9605 Appendix C.4: the AES-CTR + HMAC AEAD on its own, for the three tag sizes.
#[test]
fn every_aes_ctr_hmac_vector_seals_and_opens() {
    use convene_protocol::sframe::{AeadKey, CipherSuite};
    let file = vectors("aes_ctr_hmac");
    let list = file["aes_ctr_hmac"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    for v in list {
        let suite = CipherSuite::from_u16(v["cipher_suite"].as_u64().unwrap() as u16).unwrap();
        let key = AeadKey::new(suite, &hex_of(v, "key")).unwrap();
        let nonce: [u8; 12] = hex_of(v, "nonce").try_into().unwrap();
        let (aad, pt, ct) = (hex_of(v, "aad"), hex_of(v, "pt"), hex_of(v, "ct"));
        assert_eq!(key.seal(&nonce, &aad, &pt), ct, "suite {suite:?} seal");
        assert_eq!(
            key.open(&nonce, &aad, &ct).unwrap(),
            pt,
            "suite {suite:?} open"
        );
        // One flipped bit anywhere in ciphertext, tag or AAD fails.
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert!(
                key.open(&nonce, &aad, &bad).is_err(),
                "suite {suite:?} bit {i}"
            );
        }
        let mut bad_aad = aad.clone();
        bad_aad[0] ^= 0x80;
        assert!(key.open(&nonce, &bad_aad, &ct).is_err());
    }
}

/// RFC 9605 Appendix C.5: key derivation, nonce and whole-frame encryption
/// for every cipher suite.
#[test]
fn every_sframe_vector_derives_encrypts_and_decrypts() {
    use convene_protocol::sframe::{CipherSuite, Header, KeyContext};
    let file = vectors("sframe");
    let list = file["sframe"].as_array().unwrap();
    let suites: Vec<u64> = list
        .iter()
        .map(|v| v["cipher_suite"].as_u64().unwrap())
        .collect();
    assert_eq!(suites, [1, 2, 3, 4, 5], "one vector per cipher suite");
    for v in list {
        let suite = CipherSuite::from_u16(v["cipher_suite"].as_u64().unwrap() as u16).unwrap();
        let kid = v["kid"].as_u64().unwrap();
        let ctr = v["ctr"].as_u64().unwrap();
        let ctx = KeyContext::derive(suite, kid, &hex_of(v, "base_key"));
        assert_eq!(
            ctx.salt().to_vec(),
            hex_of(v, "sframe_salt"),
            "{suite:?} salt"
        );
        assert_eq!(
            ctx.nonce(ctr).to_vec(),
            hex_of(v, "nonce"),
            "{suite:?} nonce"
        );
        let (metadata, pt, ct) = (hex_of(v, "metadata"), hex_of(v, "pt"), hex_of(v, "ct"));
        assert_eq!(ctx.encrypt(ctr, &metadata, &pt), ct, "{suite:?} ciphertext");
        let (header, len) = Header::parse(&ct).unwrap();
        assert_eq!((header.kid, header.ctr), (kid, ctr));
        assert_eq!(ctx.decrypt(&ct, header, len, &metadata).unwrap(), pt);
        // The header is authenticated too: another counter in it fails.
        let mut other = Header { kid, ctr: ctr + 1 }.encode();
        other.extend_from_slice(&ct[len..]);
        let (h2, l2) = Header::parse(&other).unwrap();
        assert!(
            ctx.decrypt(&other, h2, l2, &metadata).is_err(),
            "{suite:?} header swap"
        );
        let mut meta = metadata.clone();
        meta.push(0);
        assert!(
            ctx.decrypt(&ct, header, len, &meta).is_err(),
            "{suite:?} metadata"
        );
    }
}
