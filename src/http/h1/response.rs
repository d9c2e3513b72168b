//! The client role's half of the codec: response heads parsed in place (their
//! header values share the read buffer) with the body's framing decided in the same
//! pass (RFC 9112 §6.3). The connection that reads the body is `client`.

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};

use super::chunked::Chunked;
use super::framing::{ends_chunked, parse_length_list, ConnectionOptions, MAX_HEADERS};
use super::head::Field;

/// A parsed response head: its parts, and for a final response its body's framing
/// and whether the connection may be reused after it (`None` for a 1xx).
pub type Head = (http::response::Parts, Option<(State, bool)>);

/// Parses a response head at the start of `buf`, consuming it. `Ok(None)`: more bytes
/// are needed.
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, &'static str> {
    // Offsets rather than slices, so the head can be split off the buffer and shared
    // by the header values without a copy. Left uninitialised: only the first `count`
    // are written and read, and zeroing them all would cost more than the parse.
    let mut fields = [const { std::mem::MaybeUninit::<Field>::uninit() }; MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut response, buf, &mut storage)
            .map_err(|e| match e {
                httparse::Error::TooManyHeaders => "too many response headers",
                _ => "malformed response head",
            })?;
        let httparse::Status::Complete(len) = status else { return Ok(None) };
        let base = buf.as_ptr() as usize;
        for (slot, h) in fields.iter_mut().zip(response.headers.iter()) {
            slot.write(Field::of(base, h));
        }
        (len, response.code.unwrap_or(0), response.version.unwrap_or(1), response.headers.len())
    };
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut framing = ResponseFraming::default();
    // RFC 9110 §8.6: these carry no body, and no `Content-Length` goes on with them.
    let bodiless = matches!(code, 100..=199 | 204 | 304);
    for field in &fields[..count] {
        // SAFETY: the loop above wrote the first `count` fields (one per header).
        let field = unsafe { field.assume_init_ref() };
        let name = HeaderName::from_bytes(field.name(&head)).map_err(|_| "invalid response header name")?;
        let mut value = HeaderValue::from_maybe_shared(field.value(&head))
            .map_err(|_| "invalid response header value")?;
        if name == header::CONTENT_LENGTH {
            if bodiless {
                continue;
            }
            // Equal repeats (`5, 5`, or two fields) go on as one field of one number.
            let repeat = framing.length.is_some();
            framing.note(&name, &value)?;
            if repeat {
                continue;
            }
            if let Some(n) = framing.length.filter(|_| value.as_bytes().contains(&b',')) {
                value = HeaderValue::from(n);
            }
        } else {
            framing.note(&name, &value)?;
        }
        headers.append(name, value);
    }
    let status = StatusCode::from_u16(code).map_err(|_| "invalid status code")?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    *response.headers_mut() = headers;
    let (parts, ()) = response.into_parts();
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Some((parts, None)));
    }
    let framing = framing.decide(&parts, head_request)?;
    Ok(Some((parts, Some(framing))))
}

/// What a response's headers say about its framing, gathered in the one pass that
/// builds its header map rather than by a lookup per header.
#[derive(Default)]
struct ResponseFraming {
    /// The `Content-Length`; repeated values must agree.
    length: Option<u64>,
    /// `Transfer-Encoding` is present; `chunked`: its last coding is chunked.
    coded: bool,
    chunked: bool,
    connection: ConnectionOptions,
}

impl ResponseFraming {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), &'static str> {
        if *name == header::CONTENT_LENGTH {
            let n = parse_length_list(value.as_bytes()).ok_or("invalid Content-Length")?;
            if self.length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length values");
            }
            self.length = Some(n);
        } else if *name == header::TRANSFER_ENCODING {
            self.coded = true;
            self.chunked = ends_chunked(value.as_bytes());
        } else if *name == header::CONNECTION {
            self.connection.note(value.as_bytes());
        }
        Ok(())
    }

    /// The response body's framing (RFC 9112 §6.3) and whether the connection
    /// outlives it.
    fn decide(
        self,
        parts: &http::response::Parts,
        head_request: bool,
    ) -> Result<(State, bool), &'static str> {
        let mut reusable = self.connection.persist(parts.version);
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok((State::Upgraded, false));
        }
        if self.coded && parts.version == Version::HTTP_10 {
            // RFC 9112 §6.1: faulty framing. Refused, as hyper does.
            return Err("Transfer-Encoding in an HTTP/1.0 response");
        }
        if self.coded && self.length.is_some() {
            // RFC 9112 §6.3: possibly response splitting; the connection is not reused.
            return Err("both Content-Length and Transfer-Encoding");
        }
        if head_request || parts.status == StatusCode::NO_CONTENT || parts.status == StatusCode::NOT_MODIFIED
        {
            return Ok((State::Done, reusable));
        }
        let state = match (self.coded, self.length) {
            (true, _) if self.chunked => State::Chunked(Chunked::new()),
            (false, Some(0)) => State::Done,
            (false, Some(n)) => State::Length(n),
            // A coding other than chunked last, or no length at all: to the close.
            _ => {
                reusable = false;
                State::Eof
            }
        };
        Ok((state, reusable))
    }
}

/// Where a response body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    /// Until the server closes the connection.
    Eof,
    Done,
    /// A 101: the connection now belongs to the tunnel.
    Upgraded,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, head_request: bool) -> Result<Option<Head>, &'static str> {
        parse_head(&mut BytesMut::from(text), head_request)
    }

    fn framing_of(text: &str) -> (State, bool) {
        match head(text, false) {
            Ok(Some((_, Some(framing)))) => framing,
            other => panic!("{text:?}: {:?}", other.map(|h| h.map(|(p, f)| (p.status, f)))),
        }
    }

    fn bad(text: &str) -> &'static str {
        match head(text, false) {
            Err(reason) => reason,
            other => panic!("{text:?} was accepted: {:?}", other.map(|h| h.map(|(p, f)| (p.status, f)))),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"), (State::Length(5), true));
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n"), (State::Length(5), true));
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), (State::Done, true));
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            (State::Chunked(Chunked::new()), true)
        );
        // Not chunked last, or no length at all: the body runs to the close.
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"), (State::Eof, false));
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\n\r\n"), (State::Eof, false));
        assert_eq!(framing_of("HTTP/1.1 204 No Content\r\n\r\n"), (State::Done, true));
        assert_eq!(framing_of("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n"), (State::Done, true));
        assert!(!framing_of("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\n").1);
        assert!(!framing_of("HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\n").1);
        assert!(framing_of("HTTP/1.0 200 OK\r\ncontent-length: 3\r\nconnection: keep-alive\r\n\r\n").1);
        assert_eq!(
            framing_of("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n").0,
            State::Upgraded
        );
        let Ok(Some((_, Some(framing)))) = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true) else {
            panic!("HEAD response not parsed")
        };
        assert_eq!(framing, (State::Done, true), "a response to HEAD has no body");
    }

    #[test]
    fn bodiless_responses_lose_their_length_and_repeats_go_on_once() {
        let parts = |text: &str| head(text, false).unwrap().unwrap().0;
        let no_content = parts("HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n");
        assert!(!no_content.headers.contains_key(header::CONTENT_LENGTH));
        let not_modified = parts("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\netag: \"a\"\r\n\r\n");
        assert!(!not_modified.headers.contains_key(header::CONTENT_LENGTH));
        let twice = parts("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(twice.headers.get_all(header::CONTENT_LENGTH).iter().collect::<Vec<_>>(), ["2"]);
        let listed = parts("HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\n");
        assert_eq!(listed.headers.get_all(header::CONTENT_LENGTH).iter().collect::<Vec<_>>(), ["2"]);
        assert_eq!(
            bad("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            "Transfer-Encoding in an HTTP/1.0 response"
        );
    }

    #[test]
    fn responses_framed_two_ways_are_refused() {
        bad("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
        bad("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n");
        bad("HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n");
        bad("HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n");
        bad("HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n");
        bad("HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 0\r\n\r\n");
        bad("HTTP/1.1 200 OK\r\nbad name: a\r\n\r\n");
        bad("SSH-2.0-OpenSSH_9.6\r\n\r\n");
    }

    #[test]
    fn interim_responses_are_consumed_and_partial_heads_wait() {
        let mut buf =
            BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        let (parts, framing) = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!((parts.status, framing.is_none()), (StatusCode::CONTINUE, true));
        let (parts, framing) = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!((parts.status, framing), (StatusCode::OK, Some((State::Length(2), true))));
        assert_eq!(&buf[..], b"ok", "the body stays in the buffer");
        assert!(head("HTTP/1.1 200 OK\r\ncontent-le", false).unwrap().is_none());
    }

    #[test]
    fn header_values_share_the_read_buffer() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nX-A: one\r\nx-a: two\r\nServer: t\r\n\r\n");
        let (parts, _) = parse_head(&mut buf, false).unwrap().unwrap();
        let values: Vec<_> = parts.headers.get_all("x-a").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(values, ["one", "two"]);
        assert_eq!(parts.headers["server"], "t");
    }
}
