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
        // A recorder configured or not, and how many the server runs (§5.10):
        // the server's tests cause them.
        ErrorCode::RecordingUnavailable,
        ErrorCode::TooManyRecorders,
        // Only a server that refuses ad-hoc meetings, or has a meeting
        // created with an expiry (§13), answers these: the server's tests cause them.
        ErrorCode::UnknownMeeting,
        ErrorCode::MeetingExpired,
        // Only a meeting its operator created requiring encryption (§14.7).
        ErrorCode::E2eeRequired,
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

/// Sections with MUSTs that no case checks, and why. Anything else with a MUST
/// and no case fails this test, so a new requirement comes with its case.
const SECTIONS_WITHOUT_CASES: &[(&str, &str)] = &[
    ("1.1", "requirements language, no behaviour"),
    (
        "3.3",
        "the WebTransport stream mapping itself (WRONG_STREAM for a frame on the wrong stream) needs raw streams; covered by the server's WebTransport integration tests, while the runner's --transport wt runs every other case over it",
    ),
    (
        "6.4",
        "needs a subscriber that stops reading; covered by the server's integration tests",
    ),
    (
        "9.4",
        "needs control of the server's shutdown; covered by the server's integration tests",
    ),
    ("12", "requirements on the runner itself"),
    (
        "14.4",
        "end-to-end encryption happens between clients that opt in; checked by the vectors in spec/v1/vectors/e2ee and sframe, and the clients' E2EE tests",
    ),
    (
        "14.7",
        "needs a meeting created through the operator's admin API (§13), which the runner cannot reach; covered by the server's integration tests (server/tests/meetings.rs)",
    ),
];

#[test]
fn every_section_with_a_must_has_a_case() {
    let md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/PROTOCOL.md"))
        .unwrap();
    let mut section = String::new();
    let mut with_must = BTreeSet::new();
    for line in md.lines() {
        if line.starts_with('#') {
            let rest = line.trim_start_matches('#').trim();
            let num = rest.split_whitespace().next().unwrap_or("");
            if num.chars().all(|c| c.is_ascii_digit() || c == '.') && !num.is_empty() {
                section = num.to_string();
            }
            continue;
        }
        if !section.is_empty()
            && line
                .split(|c: char| !c.is_ascii_alphabetic())
                .any(|w| w == "MUST")
        {
            with_must.insert(section.clone());
        }
    }
    let covered: BTreeSet<String> = CASES.iter().map(|c| c.section.to_string()).collect();
    for s in &with_must {
        let excused = SECTIONS_WITHOUT_CASES.iter().any(|(x, _)| x == s);
        assert!(
            covered.contains(s) || excused,
            "§{s} has a MUST but no conformance case"
        );
        assert!(
            !(covered.contains(s) && excused),
            "§{s} has cases now: remove it from the exceptions"
        );
    }
}
