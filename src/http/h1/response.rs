//! The client role's half of the codec: response heads parsed in place with the
//! body's framing decided in the same pass (RFC 9112 §6.3). A final response's fields
//! go either into a header map whose values share the read buffer (`parse_head`), or,
//! cheaper, as the `name: value\r\n` lines weir's server writes them
//! (`parse_head_into`): then no map is built unless someone asks for one. The
//! connection that reads the body is `client`.

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};

use super::chunked::Chunked;
use super::encode::{push_field, push_length};
use super::framing::{ends_chunked, is_hop_by_hop, parse_length_list, ConnectionOptions, MAX_HEADERS};
use super::head::{connection_names_a_field, Field};

/// A parsed response head: its parts, and for a final response its body's framing
/// and whether the connection may be reused after it (`None` for a 1xx).
pub type Head = (http::response::Parts, Option<(State, bool)>);

/// What the field lines `parse_head_into` wrote hold, for the encoder that writes
/// them on (`server::Encoded`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lines {
    /// A `Date`.
    pub date: bool,
    /// This `Content-Length`.
    pub length: Option<u64>,
}

/// Parses a response head at the start of `buf`, consuming it, its fields into
/// `parts.headers`. `Ok(None)`: more bytes are needed.
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, &'static str> {
    Ok(parse_head_into(buf, head_request, None)?.map(|(head, _)| head))
}

/// `parse_head`, but a final response's fields are written into `lines` (cleared
/// first), when it is given, as `name: value\r\n` lines, and `parts.headers` is left
/// empty: the fields a header map would hold after `proxy::hop_by_hop` stripped it,
/// as weir's server would write that map, so the client gets the same head either
/// way. Names in lowercase (as `HeaderName` keeps them), values as sent; no
/// hop-by-hop field (`framing::HOP_BY_HOP`); one `Content-Length`, as one number,
/// and none on a 1xx, 204 or 304. Only the order differs: the map groups the fields
/// of one name at the first one's place, the lines keep the server's order (the
/// order of fields of one name is the same in both, and the only one that means
/// anything, RFC 9110 §5.3).
///
/// The map is built all the same for a 1xx or 101 (their fields are read: an
/// upgrade's protocol), and when `Connection` names a field the head holds (the
/// map's strip removes it): rare, and one set of rules for those.
pub fn parse_head_into(
    buf: &mut BytesMut,
    head_request: bool,
    lines: Option<&mut Vec<u8>>,
) -> Result<Option<(Head, Option<Lines>)>, &'static str> {
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
    // SAFETY: the loop above wrote the first `count` fields (one per header).
    let fields = unsafe { std::slice::from_raw_parts(fields.as_ptr().cast::<Field>(), count) };
    let status = StatusCode::from_u16(code).map_err(|_| "invalid status code")?;
    // RFC 9110 §8.6: these carry no body, and no `Content-Length` goes on with them.
    let bodiless = matches!(code, 100..=199 | 204 | 304);
    let mut framing = ResponseFraming::default();
    for field in fields {
        framing.note(field.name(buf), field.value_bytes(buf), bodiless)?;
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    let needs_map =
        status.is_informational() || (framing.connection_seen && connection_names_a_field(fields, buf));
    let written = match lines.filter(|_| !needs_map) {
        Some(out) => {
            write_lines(out, fields, buf, bodiless, framing.length);
            buf.advance(len);
            Some(Lines { date: framing.date, length: framing.length.filter(|_| !bodiless) })
        }
        None => {
            *response.headers_mut() = header_map(buf, len, fields, bodiless, framing.length)?;
            None
        }
    };
    let (parts, ()) = response.into_parts();
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Some(((parts, None), None)));
    }
    let framing = framing.decide(&parts, head_request)?;
    Ok(Some(((parts, Some(framing)), written)))
}

/// The fields as a header map, their values sharing the head, which is split off
/// `buf`. A repeated `Content-Length` goes in once, a list as one number (`length`).
fn header_map(
    buf: &mut BytesMut,
    len: usize,
    fields: &[Field],
    bodiless: bool,
    length: Option<u64>,
) -> Result<HeaderMap, &'static str> {
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut has_length = false;
    for field in fields {
        let name = HeaderName::from_bytes(field.name(&head)).map_err(|_| "invalid response header name")?;
        let mut value = HeaderValue::from_maybe_shared(field.value(&head))
            .map_err(|_| "invalid response header value")?;
        if name == header::CONTENT_LENGTH {
            // Equal repeats (`5, 5`, or two fields) go on as one field of one number.
            if bodiless || std::mem::replace(&mut has_length, true) {
                continue;
            }
            if let Some(n) = length.filter(|_| value.as_bytes().contains(&b',')) {
                value = HeaderValue::from(n);
            }
        }
        headers.append(name, value);
    }
    Ok(headers)
}

/// The fields as `header_map` would hold them once stripped of hop-by-hop fields,
/// as `name: value\r\n` lines into `out` (cleared first). httparse took exactly the
/// names and values `HeaderName` and `HeaderValue` take, so nothing is refused here
/// that the map would take, nor the reverse. Lines the server wrote as weir writes
/// them (most servers' lines) are copied in runs, one copy per run.
fn write_lines(out: &mut Vec<u8>, fields: &[Field], head: &[u8], bodiless: bool, length: Option<u64>) {
    out.clear();
    let mut has_length = false;
    // Lines to copy as they are, not yet copied.
    let mut run = 0..0;
    for field in fields {
        let (name, value) = (field.name(head), field.value_bytes(head));
        let mut rewritten = None;
        if is_hop_by_hop(name) {
            out.extend_from_slice(&head[std::mem::take(&mut run)]);
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if bodiless || std::mem::replace(&mut has_length, true) {
                out.extend_from_slice(&head[std::mem::take(&mut run)]);
                continue;
            }
            rewritten = length.filter(|_| value.contains(&b','));
        }
        match field.as_written(head).filter(|_| rewritten.is_none()) {
            Some(line) if run.end == line.start && !run.is_empty() => run.end = line.end,
            Some(line) => {
                out.extend_from_slice(&head[std::mem::replace(&mut run, line)]);
            }
            None => {
                out.extend_from_slice(&head[std::mem::take(&mut run)]);
                match rewritten {
                    Some(n) => push_length(out, n),
                    None => {
                        let at = out.len();
                        push_field(out, name, value);
                        out[at..at + name.len()].make_ascii_lowercase();
                    }
                }
            }
        }
    }
    out.extend_from_slice(&head[run]);
}

/// What a response's headers say about its framing, gathered in one pass over its
/// fields rather than by a lookup per header.
#[derive(Default)]
struct ResponseFraming {
    /// The `Content-Length`; repeated values must agree.
    length: Option<u64>,
    /// `Transfer-Encoding` is present; `chunked`: its last coding is chunked.
    coded: bool,
    chunked: bool,
    connection: ConnectionOptions,
    /// A `Connection` field is present.
    connection_seen: bool,
    /// A `Date` field is present.
    date: bool,
}

impl ResponseFraming {
    /// Notes one field. A `Content-Length` of a response that cannot have a body
    /// (`bodiless`) is dropped unread.
    fn note(&mut self, name: &[u8], value: &[u8], bodiless: bool) -> Result<(), &'static str> {
        if name.eq_ignore_ascii_case(b"content-length") {
            if bodiless {
                return Ok(());
            }
            let n = parse_length_list(value).ok_or("invalid Content-Length")?;
            if self.length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length values");
            }
            self.length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.coded = true;
            self.chunked = ends_chunked(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            self.connection.note(value);
            self.connection_seen = true;
        } else if name.eq_ignore_ascii_case(b"date") {
            self.date = true;
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

    fn lines_of(text: &str, head_request: bool) -> (http::response::Parts, Option<Lines>, String) {
        let mut out = b"left from the request".to_vec();
        let ((parts, _), lines) =
            parse_head_into(&mut BytesMut::from(text), head_request, Some(&mut out)).unwrap().unwrap();
        (parts, lines, String::from_utf8(out).unwrap())
    }

    #[test]
    fn fields_as_lines_are_the_stripped_map_written_out() {
        let (parts, lines, out) = lines_of(
            "HTTP/1.1 200 OK\r\nServer: t\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nX-A: 1\r\n\
             Content-Length: 2, 2\r\ncontent-length: 2\r\nTE: x\r\nUpgrade: h2c\r\nProxy-Connection: a\r\n\
             x-a:2 \r\nDate: d\r\n\r\n",
            false,
        );
        assert!(parts.headers.is_empty(), "no map: {:?}", parts.headers);
        assert_eq!(out, "server: t\r\nx-a: 1\r\ncontent-length: 2\r\nx-a: 2\r\ndate: d\r\n");
        assert_eq!(lines, Some(Lines { date: true, length: Some(2) }));
        let (_, lines, out) =
            lines_of("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\netag: \"a\"\r\n\r\n", false);
        assert_eq!((out.as_str(), lines), ("etag: \"a\"\r\n", Some(Lines { date: false, length: None })));
        let (_, lines, out) = lines_of("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", false);
        assert_eq!((out.as_str(), lines), ("", Some(Lines { date: false, length: None })));
        let (_, lines, _) = lines_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true);
        assert_eq!(lines, Some(Lines { date: false, length: Some(5) }), "a HEAD answer keeps its length");
    }

    #[test]
    fn lines_written_as_weir_writes_them_are_copied_in_runs_around_what_is_left_out() {
        let (_, lines, out) = lines_of(
            "HTTP/1.1 200 OK\r\na: 1\r\nb: 2\r\nkeep-alive: 5\r\nc: 3\r\ncontent-length: 4, 4\r\nd: 4\r\n\
             content-length: 4\r\ne:5\r\nf: 6\r\nG: 7\r\nh: 8\r\n\r\n",
            false,
        );
        assert_eq!(
            out,
            "a: 1\r\nb: 2\r\nc: 3\r\ncontent-length: 4\r\nd: 4\r\ne: 5\r\nf: 6\r\ng: 7\r\nh: 8\r\n"
        );
        assert_eq!(lines, Some(Lines { date: false, length: Some(4) }));
        let (_, _, out) = lines_of("HTTP/1.1 200 OK\nx: 1\nconnection: close\ny: 2\n\n", false);
        assert_eq!(out, "x: 1\r\ny: 2\r\n", "bare LF lines are written anew");
    }

    #[test]
    fn a_field_connection_names_and_an_upgrade_go_through_the_map() {
        let (parts, lines, _) = lines_of(
            "HTTP/1.1 200 OK\r\nConnection: x-gone\r\nX-Gone: 1\r\ncontent-length: 0\r\n\r\n",
            false,
        );
        assert_eq!((lines, parts.headers.len()), (None, 3), "stripped later, by the map's rules");
        // Naming a field that is not there, or `Host`, or a hop-by-hop one, changes nothing.
        let (_, lines, out) = lines_of(
            "HTTP/1.1 200 OK\r\nConnection: close, x-absent, host, te\r\nHost: h\r\ncontent-length: 0\r\n\r\n",
            false,
        );
        assert_eq!((lines.is_some(), out.as_str()), (true, "host: h\r\ncontent-length: 0\r\n"));
        let (parts, lines, _) =
            lines_of("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n", false);
        assert_eq!((lines, parts.headers.len()), (None, 1));
        assert!(lines_of("HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n", false).1.is_none());
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
