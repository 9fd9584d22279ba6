//! The answer to a request whose timeout header cannot be read: HTTP 400, or gRPC
//! `INVALID_ARGUMENT` for a gRPC request.

use std::fmt::{self, Write};

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::ParseTimeoutError;

/// The header that says why a plain HTTP request was rejected (gRPC has `grpc-message`).
///
/// The layer's response body is whatever the inner service answers with, and it asks no more of
/// it than `Default` (see [`RequestScope`](super::RequestScope)'s `Service` impl), so the reason
/// travels in a header, not in the body.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("taskscope-error");

/// A timeout header that cannot be read, and which one.
#[derive(Debug)]
pub(super) struct InvalidTimeout {
    header: HeaderName,
    why: Why,
}

#[derive(Debug)]
enum Why {
    /// Not visible ASCII: it cannot be quoted as text.
    NotText,
    Parse(ParseTimeoutError),
}

impl InvalidTimeout {
    pub(super) fn not_text(header: &HeaderName) -> Self {
        InvalidTimeout {
            header: header.clone(),
            why: Why::NotText,
        }
    }

    pub(super) fn parse(header: &HeaderName, error: ParseTimeoutError) -> Self {
        InvalidTimeout {
            header: header.clone(),
            why: Why::Parse(error),
        }
    }

    /// The response that rejects the request, with no body yet: gRPC's status in headers for a
    /// gRPC request (a "Trailers-Only" response), else 400 Bad Request.
    pub(super) fn response(&self, request: &HeaderMap) -> Response<()> {
        let message = self.to_string();
        let mut response = Response::new(());
        if is_grpc(request) {
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(GRPC_STATUS, HeaderValue::from_static(INVALID_ARGUMENT));
            let encoded = percent_encode(&message);
            let value = HeaderValue::try_from(encoded).expect("percent-encoded is visible ASCII");
            headers.insert(GRPC_MESSAGE, value);
        } else {
            *response.status_mut() = StatusCode::BAD_REQUEST;
            // The message quotes the value with `{:?}`, so it is visible ASCII; should that ever
            // change, the status alone still says what happened.
            if let Ok(value) = HeaderValue::try_from(message) {
                response.headers_mut().insert(ERROR_HEADER, value);
            }
        }
        response
    }
}

impl fmt::Display for InvalidTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.why {
            Why::NotText => write!(f, "invalid {} header: not visible ASCII", self.header),
            Why::Parse(error) => write!(
                f,
                "invalid {} header {:?}: {}",
                self.header,
                error.value(),
                error.reason()
            ),
        }
    }
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const INVALID_ARGUMENT: &str = "3";

/// Whether the request is gRPC: its content type is `application/grpc`, alone or with a
/// subtype (`application/grpc+proto`).
fn is_grpc(request: &HeaderMap) -> bool {
    request
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// `grpc-message` encoding, as the gRPC over HTTP/2 protocol defines it: UTF-8, with every byte
/// outside visible ASCII and space (0x20..=0x7E), and `%` itself, written as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7E).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            write!(encoded, "%{byte:02X}").expect("writing to a String cannot fail");
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::percent_encode;

    #[test]
    fn grpc_message_is_percent_encoded_as_the_spec_says() {
        assert_eq!(percent_encode("plain text: ok"), "plain text: ok");
        assert_eq!(percent_encode("100%"), "100%25");
        assert_eq!(percent_encode("a\nb"), "a%0Ab");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
