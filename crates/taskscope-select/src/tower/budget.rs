//! A request's time budget and where it came from: which the layer picks, and the deadline
//! cause that names it.
//!
//! The rule, "a caller can only shorten its budget":
//!
//! 1. The budget is the earliest of every budget the caller sent; the server's default applies
//!    only when the caller sent none.
//! 2. The server's maximum always caps it.
//! 3. The source named is the one that set the deadline. On a tie the caller's wins over the
//!    server's (the maximum is named only when it cut a budget short), and among the caller's
//!    headers the first read wins.

use std::fmt;
use std::time::Duration;

use http::HeaderName;
use taskscope::{Cause, CauseKind};

/// How long a request may run, and who said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Budget {
    pub(super) timeout: Duration,
    source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// A header the caller sent.
    Caller(HeaderName),
    ServerDefault,
    ServerMaximum,
}

impl Budget {
    /// A budget the caller sent in header `header`.
    pub(super) fn from_caller(header: &HeaderName, timeout: Duration) -> Self {
        Budget {
            timeout,
            source: Source::Caller(header.clone()),
        }
    }

    /// The request's budget, from the caller's budgets in the order they were read, the
    /// server's default and its maximum, by the rule in the module doc.
    pub(super) fn choose(
        caller: impl IntoIterator<Item = Budget>,
        default: Option<Duration>,
        maximum: Option<Duration>,
    ) -> Option<Budget> {
        // Strictly earlier replaces: on a tie the first read stays (rule 3).
        let asked = caller.into_iter().reduce(|earliest, budget| {
            if budget.timeout < earliest.timeout {
                budget
            } else {
                earliest
            }
        });
        let budget = asked.or_else(|| {
            default.map(|timeout| Budget {
                timeout,
                source: Source::ServerDefault,
            })
        });
        match (budget, maximum) {
            (Some(budget), Some(maximum)) if budget.timeout <= maximum => Some(budget),
            (_, Some(maximum)) => Some(Budget {
                timeout: maximum,
                source: Source::ServerMaximum,
            }),
            (budget, None) => budget,
        }
    }

    /// The cause the request's scope reports when this budget runs out: a plain deadline
    /// (code `"deadline"`) whose detail says where the budget came from.
    pub(super) fn cause(&self) -> Cause {
        Cause::of_kind(CauseKind::DeadlineExceeded).with_detail(self.to_string())
    }
}

/// `grpc-timeout 750ms from caller`, `server default 30s`, `server maximum 60s`. Header names
/// are lowercase (`http` keeps them so); none of it is text the caller chose.
impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let timeout = Readable(self.timeout);
        match &self.source {
            Source::Caller(header) => write!(f, "{header} {timeout} from caller"),
            Source::ServerDefault => write!(f, "server default {timeout}"),
            Source::ServerMaximum => write!(f, "server maximum {timeout}"),
        }
    }
}

/// A duration written exactly, in the unit a person would use:
///
/// - whole seconds as seconds: `30s`, `7200s` (also zero: `0s`);
/// - otherwise below 10 s, in the largest of `ms`, `us`, `ns` that is exact: `750ms`, `1500ms`,
///   `250us`, `5ns`;
/// - otherwise as decimal seconds with no trailing zeros: `12.5s`, `10.000001s`.
///
/// ASCII only (`us`, not `µs`), as it may end up in a header or a plain-text log.
struct Readable(Duration);

impl fmt::Display for Readable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = (self.0.as_secs(), self.0.subsec_nanos());
        if nanos == 0 {
            write!(f, "{secs}s")
        } else if secs < 10 {
            let total = self.0.as_nanos();
            if total.is_multiple_of(1_000_000) {
                write!(f, "{}ms", total / 1_000_000)
            } else if total.is_multiple_of(1_000) {
                write!(f, "{}us", total / 1_000)
            } else {
                write!(f, "{total}ns")
            }
        } else {
            let fraction = format!("{nanos:09}");
            write!(f, "{secs}.{}s", fraction.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(duration: Duration) -> String {
        Readable(duration).to_string()
    }

    #[test]
    fn durations_read_exactly_in_a_unit_a_person_would_use() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(7200), "7200s"),
            (Duration::from_millis(750), "750ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_millis(9999), "9999ms"),
            (Duration::from_micros(250), "250us"),
            (Duration::from_micros(1_000_001), "1000001us"),
            (Duration::from_nanos(5), "5ns"),
            (Duration::from_millis(12_500), "12.5s"),
            (Duration::from_micros(10_000_001), "10.000001s"),
            (Duration::new(10, 1), "10.000000001s"),
        ];
        for (duration, expected) in cases {
            assert_eq!(readable(duration), expected, "{duration:?}");
        }
    }

    #[test]
    fn the_earliest_wins_ties_go_to_the_caller_and_the_maximum_caps() {
        let grpc = HeaderName::from_static("grpc-timeout");
        let connect = HeaderName::from_static("connect-timeout-ms");
        let secs = Duration::from_secs;
        let caller = |header: &HeaderName, s| Budget::from_caller(header, secs(s));
        let server = |source, s| Budget {
            timeout: secs(s),
            source,
        };
        let cases = [
            (vec![], None, None, None),
            (
                vec![],
                Some(3),
                None,
                Some(server(Source::ServerDefault, 3)),
            ),
            (
                vec![],
                None,
                Some(5),
                Some(server(Source::ServerMaximum, 5)),
            ),
            (
                vec![],
                Some(9),
                Some(5),
                Some(server(Source::ServerMaximum, 5)),
            ),
            (
                vec![],
                Some(5),
                Some(5),
                Some(server(Source::ServerDefault, 5)),
            ),
            (
                vec![caller(&grpc, 9)],
                Some(3),
                None,
                Some(caller(&grpc, 9)),
            ),
            (
                vec![caller(&grpc, 2), caller(&connect, 1)],
                Some(3),
                Some(5),
                Some(caller(&connect, 1)),
            ),
            (
                vec![caller(&grpc, 2), caller(&connect, 2)],
                None,
                None,
                Some(caller(&grpc, 2)),
            ),
            (
                vec![caller(&grpc, 5)],
                None,
                Some(5),
                Some(caller(&grpc, 5)),
            ),
            (
                vec![caller(&grpc, 6)],
                None,
                Some(5),
                Some(server(Source::ServerMaximum, 5)),
            ),
        ];
        for (asked, default, maximum, expected) in cases {
            let chosen = Budget::choose(asked.clone(), default.map(secs), maximum.map(secs));
            assert_eq!(chosen, expected, "{asked:?}, {default:?}, {maximum:?}");
        }
    }
}
