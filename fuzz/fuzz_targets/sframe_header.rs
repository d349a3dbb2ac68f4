//! Fuzzes convene_protocol::fuzzing::sframe_header: SFrame header parsing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    convene_protocol::fuzzing::sframe_header(data);
});
