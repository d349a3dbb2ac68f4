//! The Convene conformance runner: plays the spec's cases against any server or client.
