//! The stable serialised form of a [`Cause`] (feature `serde`).
//!
//! Schema, version 1 (field names are public API):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `v` | integer | schema version, `1` |
//! | `kind` | string | `explicit`, `deadline_exceeded`, `task_failed`, `task_panicked`, `shutdown`, `dropped` |
//! | `code` | string, non-empty | [`Cause::code`] |
//! | `detail` | string, optional | [`Cause::detail`] |
//! | `origin` | string, optional | [`Cause::origin`] |
//! | `at_unix_us` | integer, optional | [`Cause::at`], microseconds since the Unix epoch |
//! | `location` | `{file, line, column}`, optional | [`Cause::location`] |
//! | `source` | string, optional | the wrapped error's `Display`, decoded as an opaque error |
//!
//! Unknown fields are ignored, so later versions can add fields.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{CallSite, Cause, CauseKind, Origin, RecordedSource};

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Record {
    v: u32,
    kind: String,
    code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at_unix_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    location: Option<LocationRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct LocationRecord {
    file: String,
    line: u32,
    column: u32,
}

impl Record {
    fn from_cause(cause: &Cause) -> Record {
        let inner = &cause.inner;
        Record {
            v: VERSION,
            kind: inner.kind.as_str().to_owned(),
            code: inner.code.to_string(),
            detail: cause.detail().map(str::to_owned),
            origin: inner
                .origin
                .as_ref()
                .map(|origin| origin.as_str().to_owned()),
            // A time before 1970 or past the year 2554 has no record form; it is left out
            // rather than made up.
            at_unix_us: cause
                .at()
                .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
                .and_then(|since| u64::try_from(since.as_micros()).ok()),
            location: inner.location.as_ref().map(|location| LocationRecord {
                file: location.file().to_owned(),
                line: location.line(),
                column: location.column(),
            }),
            source: inner
                .extra
                .as_ref()
                .and_then(|extra| extra.source.as_ref())
                .map(|source| source.to_string()),
        }
    }

    fn into_cause(self) -> Result<Cause, String> {
        if self.v != VERSION {
            return Err(format!(
                "unsupported cause record version {} (this build reads version {VERSION})",
                self.v
            ));
        }
        let kind = CauseKind::from_name(&self.kind)
            .ok_or_else(|| format!("unknown cause kind `{}`", self.kind))?;
        if self.code.is_empty() {
            return Err("cause record has an empty `code`".to_owned());
        }
        let at = match self.at_unix_us {
            None => None,
            Some(us) => Some(
                SystemTime::UNIX_EPOCH
                    .checked_add(Duration::from_micros(us))
                    .ok_or_else(|| format!("cause record time {us}us is out of range"))?,
            ),
        };
        let mut cause = Cause::of_kind(kind);
        let inner = cause.inner_mut();
        inner.code = Cow::Owned(self.code);
        inner.origin = self
            .origin
            .map(|origin| Origin::from(Arc::<str>::from(origin)));
        inner.location = self
            .location
            .map(|location| CallSite::recorded(location.file, location.line, location.column));
        if let Some(at) = at {
            cause = cause.with_wall_clock(at);
        }
        if let Some(detail) = self.detail {
            cause = cause.with_detail(detail);
        }
        if let Some(source) = self.source {
            cause = cause.with_payload(RecordedSource::payload(source));
        }
        Ok(cause)
    }
}

/// Serialises the stable, versioned record described under the crate's `serde`
/// [feature](crate#features).
impl Serialize for Cause {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Record::from_cause(self).serialize(serializer)
    }
}

/// Decodes the stable record; malformed input is an error, never a panic.
impl<'de> Deserialize<'de> for Cause {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Record::deserialize(deserializer)?
            .into_cause()
            .map_err(serde::de::Error::custom)
    }
}
