//! The JSON face of the admin API (PROTOCOL.md §13): the same calls as gRPC,
//! their messages in the proto3 JSON mapping (lowerCamelCase names, 64-bit
//! integers as strings), dispatched to the same [`crate::admin_server::Admin`]
//! implementation. The dispatch is generated from `spec/v1/admin.proto`.

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Code, Request, Response, Status};

include!("generated/json.rs");

/// Reads `body` as `Req` (empty means all defaults), calls `f` with it in
/// `request`'s place, and writes the answer as JSON.
pub async fn call_one<Req, Resp, F, Fut>(
    request: Request<()>,
    body: &[u8],
    f: F,
) -> Result<Vec<u8>, Status>
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    // An empty body is the empty message, so that `curl -X POST` works for
    // the calls that take nothing.
    let message: Req = if body.iter().all(u8::is_ascii_whitespace) {
        Req::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            Status::invalid_argument(format!(
                "the body is not a {} in proto3 JSON: {e}",
                short_type_name::<Req>()
            ))
        })?
    };
    let answer = f(request.map(|()| message)).await?;
    serde_json::to_vec(answer.get_ref())
        .map_err(|e| Status::internal(format!("cannot write the answer as JSON: {e}")))
}

/// The message's name without its module path, for error messages.
fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// The HTTP status a gRPC status code maps to on the JSON face.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::OutOfRange => 400,
        Code::FailedPrecondition => 412,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound | Code::Unimplemented => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

/// The canonical name of a gRPC status code, as the JSON error's `code`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A refused call as the JSON face answers it: its HTTP status and
/// `{"code": "NOT_FOUND", "message": "..."}`.
pub fn error(status: &Status) -> (u16, Vec<u8>) {
    let body = serde_json::json!({
        "code": code_name(status.code()),
        "message": status.message(),
    });
    (http_status(status.code()), body.to_string().into_bytes())
}

/// proto3 JSON of `uint64`: written as a string, read from a string or a number.
pub mod u64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `v` as a decimal string.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Reads a decimal string or a JSON number.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match super::StringOrNumber::<u64>::deserialize(d)? {
            super::StringOrNumber::Number(n) => Ok(n),
            super::StringOrNumber::String(t) => t.trim().parse().map_err(|_| {
                serde::de::Error::custom(format!("{t:?} is not an unsigned 64-bit integer"))
            }),
        }
    }
}

/// proto3 JSON of `optional uint64`: absent when unset, else as [`u64_string`].
pub mod opt_u64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a set value as a decimal string (unset ones are skipped).
    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    /// Reads a decimal string, a JSON number, or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::u64_string")] u64);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

/// proto3 JSON of `int64`: written as a string, read from a string or a number.
pub mod i64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `v` as a decimal string.
    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Reads a decimal string or a JSON number.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        match super::StringOrNumber::<i64>::deserialize(d)? {
            super::StringOrNumber::Number(n) => Ok(n),
            super::StringOrNumber::String(t) => t.trim().parse().map_err(|_| {
                serde::de::Error::custom(format!("{t:?} is not a signed 64-bit integer"))
            }),
        }
    }
}

/// A 64-bit integer as proto3 JSON accepts it.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum StringOrNumber<N> {
    Number(N),
    String(String),
}

#[cfg(test)]
mod tests {
    use crate::{AttendanceRecord, ManagedMeeting, MeetingSettings};

    #[test]
    fn an_optional_64_bit_integer_is_a_string_when_set_and_absent_when_not() {
        let mut r = AttendanceRecord {
            joined_at_ms: 5,
            left_at_ms: Some(18_000_000_000_000_000_000),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["leftAtMs"], "18000000000000000000");
        let back: AttendanceRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        r.left_at_ms = None;
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert!(v.get("leftAtMs").is_none(), "{v}");
        assert_eq!(serde_json::from_value::<AttendanceRecord>(v).unwrap(), r);
        let n: AttendanceRecord = serde_json::from_str(r#"{"left_at_ms": 7}"#).unwrap();
        assert_eq!(n.left_at_ms, Some(7));
    }

    #[test]
    fn messages_use_the_proto3_json_mapping() {
        let m = ManagedMeeting {
            meeting_id: "m".into(),
            settings: Some(MeetingSettings {
                expires_at: 18_000_000_000_000_000_000,
                e2ee_required: true,
                ..Default::default()
            }),
            created_at: 7,
            updated_at: 8,
        };
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(v["meetingId"], "m");
        assert_eq!(v["createdAt"], "7");
        assert_eq!(v["settings"]["expiresAt"], "18000000000000000000");
        assert_eq!(v["settings"]["e2eeRequired"], true);
        let back: ManagedMeeting = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
        // Numbers and the proto field names are read too; unknown fields are refused.
        let s: MeetingSettings =
            serde_json::from_str(r#"{"expires_at": 5, "maxParticipants": 3}"#).unwrap();
        assert_eq!((s.expires_at, s.max_participants), (5, 3));
        assert!(serde_json::from_str::<MeetingSettings>(r#"{"lockd": true}"#).is_err());
        assert!(serde_json::from_str::<MeetingSettings>(r#"{"expiresAt": "-1"}"#).is_err());
    }
}
