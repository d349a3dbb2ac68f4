//! The token claims of PROTOCOL.md §11.3, shared by whoever mints tokens and
//! whoever checks them. Signing and verification live with the callers (the
//! server verifies, `convene token` mints); this is only the vocabulary.

use serde::{Deserialize, Serialize};

/// The claims a Convene token carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id others see (`sub`).
    #[serde(default)]
    pub sub: String,
    /// The display name others see.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The meeting: an id, or a prefix pattern ending in `*`.
    #[serde(default)]
    pub meeting: String,
    /// What the holder may do; see [`Grant`].
    #[serde(default)]
    pub grants: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience: one, or several (RFC 7519 §4.1.3 allows an array, and
    /// identity providers send one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// The `aud` claim: a string or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "convene"`.
    One(String),
    /// `"aud": ["convene", "other"]`.
    Many(Vec<String>),
}

impl Audience {
    /// True when `name` is among the audiences.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Audience::One(a) => a == name,
            Audience::Many(v) => v.iter().any(|a| a == name),
        }
    }
}

impl From<&str> for Audience {
    fn from(a: &str) -> Self {
        Audience::One(a.to_string())
    }
}

/// One permission a token can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grant {
    /// Publish audio tracks.
    PublishAudio,
    /// Publish camera video tracks.
    PublishVideo,
    /// Publish screen-share tracks.
    PublishScreen,
    /// Receive others' tracks.
    Subscribe,
    /// Send chat messages.
    Chat,
    /// Mute, remove, lock, admit, deny, end the meeting, start and stop a recorder.
    Moderate,
    /// Join as a recorder (PROTOCOL.md §5.10).
    Record,
}

impl Grant {
    /// Every grant, in the spec's order.
    pub const ALL: [Grant; 7] = [
        Grant::PublishAudio,
        Grant::PublishVideo,
        Grant::PublishScreen,
        Grant::Subscribe,
        Grant::Chat,
        Grant::Moderate,
        Grant::Record,
    ];

    /// The claim string, e.g. `publish_audio`.
    pub const fn name(self) -> &'static str {
        match self {
            Grant::PublishAudio => "publish_audio",
            Grant::PublishVideo => "publish_video",
            Grant::PublishScreen => "publish_screen",
            Grant::Subscribe => "subscribe",
            Grant::Chat => "chat",
            Grant::Moderate => "moderate",
            Grant::Record => "record",
        }
    }

    /// The grant a claim string names.
    pub fn from_name(name: &str) -> Option<Grant> {
        Grant::ALL.into_iter().find(|g| g.name() == name)
    }
}

impl Claims {
    /// True when the token grants `g`.
    pub fn grants(&self, g: Grant) -> bool {
        self.grants.iter().any(|s| s == g.name())
    }

    /// True when the token admits the holder to `meeting_id`: the same id, or
    /// a pattern `prefix*` the id starts with (`*` alone admits every meeting).
    pub fn admits(&self, meeting_id: &str) -> bool {
        match self.meeting.strip_suffix('*') {
            Some(prefix) => meeting_id.starts_with(prefix),
            None => !self.meeting.is_empty() && self.meeting == meeting_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meeting_patterns() {
        let c = |m: &str| Claims {
            meeting: m.into(),
            ..Claims::default()
        };
        assert!(c("standup").admits("standup"));
        assert!(!c("standup").admits("standup-2"));
        assert!(c("team-*").admits("team-red"));
        assert!(!c("team-*").admits("other"));
        assert!(c("*").admits("anything"));
        assert!(!c("").admits(""));
    }

    #[test]
    fn grants_by_name() {
        for g in Grant::ALL {
            assert_eq!(Grant::from_name(g.name()), Some(g));
        }
        assert_eq!(Grant::from_name("root"), None);
        let c = Claims {
            grants: vec!["chat".into()],
            ..Claims::default()
        };
        assert!(c.grants(Grant::Chat));
        assert!(!c.grants(Grant::Moderate));
    }
}
