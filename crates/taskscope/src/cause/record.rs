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
//! | `at_unix_us` | integer, optional | [`Cause::at`], microseconds since the Unix epoch, before the year 2262 |
//! | `location` | `{file, line, column}`, optional | [`Cause::location`] |
//! | `source` | string, optional | the wrapped error's `Display`, decoded as an opaque error |
//!
//! Unknown fields are ignored, so later versions can add fields.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{CallSite, Cause, CauseKind, Origin, RecordedSource, exact_ns_of_time};
use crate::text::displayed;

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
            // A time before 1970 has no record form; it is left out rather than made up. A cause
            // holds no time past the year 2262 (`Cause::at`).
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
                .map(|source| displayed(source)),
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
                    .filter(|at| exact_ns_of_time(*at).is_some())
                    .ok_or_else(|| {
                        format!("cause record time {us}us is out of range (past the year 2262)")
                    })?,
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use crate::{Cause, Scope};

    /// A cause from another process keeps its wall-clock time and, once it cancels a scope
    /// here, takes a time on tokio's clock, from which tasks' cancel latency is measured.
    #[test]
    fn a_decoded_cause_keeps_its_time_and_is_timed_here_when_it_cancels() {
        let json = r#"{"v":1,"kind":"shutdown","code":"shutdown","at_unix_us":1700000000000000}"#;
        let cause: Cause = serde_json::from_str(json).unwrap();
        assert!(cause.instant().is_none());
        let scope = Scope::new();
        scope.cancel(cause);
        let cause = scope.cause().unwrap();
        assert!(cause.instant().is_some());
        assert_eq!(
            cause.at().unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
    }
}
