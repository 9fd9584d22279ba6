//! Request deadlines from headers: gRPC's `grpc-timeout`, the Connect protocol's
//! `Connect-Timeout-Ms` and a configurable header in whole milliseconds.

use std::error::Error;
use std::fmt;
use std::time::Duration;

/// Parses a `grpc-timeout` header value: at most 8 ASCII digits and a unit, `H` (hours),
/// `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds) or `n` (nanoseconds),
/// as the gRPC over HTTP/2 protocol defines it.
///
/// ```
/// use std::time::Duration;
/// use taskscope_select::tower::parse_grpc_timeout;
///
/// assert_eq!(parse_grpc_timeout("250m"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_timeout("3S"), Ok(Duration::from_secs(3)));
/// assert!(parse_grpc_timeout("3s").is_err(), "units are case-sensitive");
/// ```
///
/// # Errors
///
/// A [`ParseTimeoutError`] saying what is wrong: no digits, more than 8, or an unknown unit.
pub fn parse_grpc_timeout(value: &str) -> Result<Duration, ParseTimeoutError> {
    let Some(unit) = value.chars().last() else {
        return Err(ParseTimeoutError::new(value, "is empty"));
    };
    let digits = &value[..value.len() - unit.len_utf8()];
    let amount = parse_digits(value, digits, 8)?;
    let timeout = match unit {
        'H' => Duration::from_secs(amount * 3600),
        'M' => Duration::from_secs(amount * 60),
        'S' => Duration::from_secs(amount),
        'm' => Duration::from_millis(amount),
        'u' => Duration::from_micros(amount),
        'n' => Duration::from_nanos(amount),
        _ => {
            return Err(ParseTimeoutError::new(
                value,
                "does not end in a unit (H, M, S, m, u or n)",
            ));
        }
    };
    Ok(timeout)
}

/// Parses a timeout header in whole milliseconds (`"1500"`), as proxies such as Envoy send
/// (`x-envoy-upstream-rq-timeout-ms`). At most 12 digits: about 31 years.
///
/// # Errors
///
/// A [`ParseTimeoutError`] when it is not 1 to 12 ASCII digits.
pub fn parse_millis_timeout(value: &str) -> Result<Duration, ParseTimeoutError> {
    parse_digits(value, value, 12).map(Duration::from_millis)
}

/// Parses a `Connect-Timeout-Ms` header value: a positive whole number of milliseconds of at
/// most 10 digits, as the Connect protocol defines it.
///
/// ```
/// use std::time::Duration;
/// use taskscope_select::tower::parse_connect_timeout;
///
/// assert_eq!(parse_connect_timeout("1500"), Ok(Duration::from_millis(1500)));
/// assert!(parse_connect_timeout("0").is_err(), "positive");
/// assert!(parse_connect_timeout("12345678901").is_err(), "at most 10 digits");
/// ```
///
/// # Errors
///
/// A [`ParseTimeoutError`] when it is not 1 to 10 ASCII digits, or is zero.
pub fn parse_connect_timeout(value: &str) -> Result<Duration, ParseTimeoutError> {
    match parse_digits(value, value, 10)? {
        0 => Err(ParseTimeoutError::new(value, "is not positive")),
        millis => Ok(Duration::from_millis(millis)),
    }
}

/// At most `max` ASCII digits, with no sign and no spaces (`u64::from_str` would take a `+`).
fn parse_digits(value: &str, digits: &str, max: usize) -> Result<u64, ParseTimeoutError> {
    if digits.is_empty() {
        return Err(ParseTimeoutError::new(value, "has no digits"));
    }
    if !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(ParseTimeoutError::new(value, "is not a whole number"));
    }
    if digits.len() > max {
        return Err(ParseTimeoutError::new(value, "has too many digits"));
    }
    // At most 12 digits: fits a u64, with room to multiply by 3600.
    digits
        .parse()
        .map_err(|_| ParseTimeoutError::new(value, "is out of range"))
}

/// A timeout header that could not be read; its `Display` quotes the value and says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseTimeoutError {
    value: String,
    reason: &'static str,
}

impl ParseTimeoutError {
    fn new(value: &str, reason: &'static str) -> Self {
        // Header values can be long; quote enough to recognise it.
        let value = value.chars().take(32).collect();
        ParseTimeoutError { value, reason }
    }

    /// The value, cut to its first 32 characters.
    pub(super) fn value(&self) -> &str {
        &self.value
    }

    /// What is wrong with it, as a predicate: `"has too many digits"`.
    pub(super) fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for ParseTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timeout header {:?} {}", self.value, self.reason)
    }
}

impl Error for ParseTimeoutError {}
