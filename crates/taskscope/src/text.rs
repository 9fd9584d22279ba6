//! Text that users control (names, details, errors), written as text: never able to panic the
//! writer, never able to forge a line.

use std::fmt::{self, Write};

/// `value`'s `Display`, or a placeholder if it panics: a user's `Display` must not take down
/// whoever formats it (a record, a snapshot, a supervisor).
pub(crate) fn displayed(value: &dyn fmt::Display) -> String {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| value.to_string()))
        .unwrap_or_else(|_| "(its Display panicked)".to_owned())
}

/// Displays its value with control characters escaped (`\n` as `\\n`), so that a name or a
/// detail holding a line break cannot forge a line of a multi-line report.
pub(crate) struct Escaped<T>(pub(crate) T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapeControl(f), "{}", self.0)
    }
}

struct EscapeControl<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl Write for EscapeControl<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(char::is_control) {
            self.0.write_str(&rest[..at])?;
            let control = rest[at..].chars().next().expect("found at a character");
            write!(self.0, "{}", control.escape_debug())?;
            rest = &rest[at + control.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}
