//! Fuzzes convene_protocol::fuzzing::sframe_frame: E2EE key messages and SFrame frames.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    convene_protocol::fuzzing::sframe_frame(data);
});
