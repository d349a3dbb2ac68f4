//! The generated conformance case tables hold what the spec promises.

use std::collections::BTreeSet;

use convene_protocol::ErrorCode;
use convene_protocol::cases::{Action, CASES, Target};

#[test]
fn there_are_at_least_forty_cases_with_unique_ids() {
    assert!(CASES.len() >= 40, "{} cases", CASES.len());
    let ids: BTreeSet<_> = CASES.iter().map(|c| c.id).collect();
    assert_eq!(ids.len(), CASES.len());
}

#[test]
fn cases_cover_the_required_areas() {
    let prefixes: BTreeSet<_> = CASES
        .iter()
        .map(|c| c.id.split('.').next().unwrap())
        .collect();
    for area in [
        "handshake",
        "room",
        "tracks",
        "media",
        "keepalive",
        "chat",
        "e2ee",
        "hostile",
        "client",
        "moderation",
    ] {
        assert!(prefixes.contains(area), "no {area} case");
    }
    assert!(CASES.iter().any(|c| c.target == Target::Client));
}

#[test]
fn every_non_fatal_error_a_client_can_cause_is_expected_by_some_case() {
    let mut expected = BTreeSet::new();
    for c in CASES {
        for s in c.steps {
            match s.action {
                Action::ExpectError { code, .. } => {
                    expected.insert(code);
                }
                Action::ExpectClose { code: Some(code) } => {
                    expected.insert(code);
                }
                Action::ExceedTrackLimit => {
                    expected.insert(ErrorCode::TooManyTracks);
                }
                _ => {}
            }
        }
    }
    // Codes that need server configuration (auth, capacity, waiting room),
    // a transport-level fault, or cannot be caused by a well-formed client.
    let not_caused_by_cases = [
        ErrorCode::Unspecified,
        ErrorCode::WrongStream,
        ErrorCode::AuthRequired,
        ErrorCode::AuthInvalid,
        ErrorCode::AuthExpired,
        ErrorCode::ServerBusy,
        ErrorCode::ShuttingDown,
        ErrorCode::TooManyConnections,
        ErrorCode::RoomFull,
        ErrorCode::TooManyRooms,
        ErrorCode::AdmissionDenied,
        ErrorCode::SlowConsumer,
        ErrorCode::TooManyStreams,
        ErrorCode::InternalError,
    ];
    for &code in ErrorCode::ALL {
        if !not_caused_by_cases.contains(&code) {
            assert!(expected.contains(&code), "no case expects {}", code.name());
        }
    }
}
