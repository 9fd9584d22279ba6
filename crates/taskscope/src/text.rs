//! Text that users control (names, details, errors), written as text: never able to panic the
//! writer, never able to forge a line.

use std::fmt::{self, Write};

/// `value`'s `Display`, or a placeholder if it panics: a user's `Display` must not take down
/// whoever formats it (a record, a snapshot, a supervisor).
pub(crate) fn displayed(value: &dyn fmt::Display) -> String {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| value.to_string()))
        .unwrap_or_else(|_| "(its Display panicked)".to_owned())
}

/// Displays its value with control characters, backslashes and the Unicode line, paragraph
/// and bidirectional-override characters escaped (`\n` as `\\n`), so that a name or a detail
/// cannot forge or disguise a line of a multi-line report.
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
        while let Some(at) = rest.find(needs_escape) {
            self.0.write_str(&rest[..at])?;
            let special = rest[at..].chars().next().expect("found at a character");
            if special.is_control() || special == '\\' {
                write!(self.0, "{}", special.escape_debug())?;
            } else {
                write!(self.0, "{}", special.escape_unicode())?;
            }
            rest = &rest[at + special.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// Whether `c` could break or disguise a line when written as is.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}
