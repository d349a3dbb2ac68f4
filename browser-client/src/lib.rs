//! The Convene browser client, compiled to `wasm32-unknown-unknown` and served by the server.
