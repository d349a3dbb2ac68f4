//! Helpers the client's integration tests share.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use convene_client::{Client, Endpoint, TransportChoice};
use convene_protocol::{ClientEvent, ClientSessionConfig};

/// Generous: these tests wait for conditions, never for luck.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Connects, waits for Welcome, joins `meeting` and waits for Joined.
pub async fn joined(endpoint: &Endpoint, choice: TransportChoice, meeting: &str) -> Client {
    let mut c = Client::connect(endpoint, choice, ClientSessionConfig::default())
        .await
        .expect("connects");
    wait_for(&mut c, |e| matches!(e, ClientEvent::Welcome(_))).await;
    c.join(meeting, "tester", true).unwrap();
    wait_for(&mut c, |e| matches!(e, ClientEvent::Joined(_))).await;
    c
}

/// The next event matching `pred`, skipping others; panics if the session ends or the deadline passes.
pub async fn wait_for(c: &mut Client, pred: impl Fn(&ClientEvent) -> bool) -> ClientEvent {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match c.next_event().await {
                Some(e) if pred(&e) => return e,
                Some(_) => {}
                None => panic!("session closed: {:?}", c.close_reason()),
            }
        }
    })
    .await
    .expect("event within the deadline")
}
