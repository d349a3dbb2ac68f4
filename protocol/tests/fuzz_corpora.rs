//! Replays the committed cargo-fuzz corpora (`fuzz/corpus/<target>/`) through
//! the same entry points the fuzz targets call, on stable Rust. A crash found
//! by fuzzing is added to the corpus and stays a regression test here.

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "the {target} corpus is empty");
}

#[test]
fn frame_decode_corpus() {
    replay("frame_decode", convene_protocol::fuzzing::frame);
}

#[test]
fn server_session_corpus() {
    replay("server_session", convene_protocol::fuzzing::server_session);
}

#[test]
fn client_session_corpus() {
    replay("client_session", convene_protocol::fuzzing::client_session);
}

#[test]
fn sframe_header_corpus() {
    replay("sframe_header", convene_protocol::fuzzing::sframe_header);
}

#[test]
fn sframe_frame_corpus() {
    replay("sframe_frame", convene_protocol::fuzzing::sframe_frame);
}
