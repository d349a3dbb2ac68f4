//! Fuzzes convene_protocol::fuzzing::client_session; see that function for the input format.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    convene_protocol::fuzzing::client_session(data);
});
