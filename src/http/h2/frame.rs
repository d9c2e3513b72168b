//! HTTP/2 frames (RFC 9113 §4, §6): the 9-byte header, each type's payload parsed
//! with the length, stream-id and value rules of its section, and frames encoded into
//! a write buffer. What a frame means for a connection's state (stream states,
//! CONTINUATION sequencing, flow control) is the connection's (`server`).

use bytes::{Buf, Bytes};

/// Length of a frame header.
pub const HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value and lower bound.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// SETTINGS_MAX_FRAME_SIZE's upper bound.
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The largest flow-control window.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;
/// SETTINGS_INITIAL_WINDOW_SIZE's initial value.
pub const DEFAULT_WINDOW: u32 = 65_535;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

/// SETTINGS identifiers (RFC 9113 §6.5.2).
pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// Error codes (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Reason {
    NoError = 0x0,
    Protocol = 0x1,
    Internal = 0x2,
    FlowControl = 0x3,
    SettingsTimeout = 0x4,
    StreamClosed = 0x5,
    FrameSize = 0x6,
    RefusedStream = 0x7,
    Cancel = 0x8,
    Compression = 0x9,
    Connect = 0xa,
    EnhanceYourCalm = 0xb,
    InadequateSecurity = 0xc,
    Http11Required = 0xd,
}

/// A frame that breaks the protocol: the whole connection's error (GOAWAY), or one
/// stream's (RST_STREAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    Connection(Reason),
    Stream(u32, Reason),
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    /// The reserved bit cleared (RFC 9113 §4.1: ignored on receipt).
    pub stream: u32,
}

impl Head {
    pub fn parse(b: &[u8]) -> Head {
        Head {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }
}

/// A stream's dependency in HEADERS or PRIORITY: only checked (a stream may not
/// depend on itself), never used for scheduling (RFC 9113 deprecates the scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    pub dependency: u32,
    pub exclusive: bool,
    pub weight: u8,
}

/// Values a SETTINGS frame carries; the last of each identifier wins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    pub header_table_size: Option<u32>,
    pub enable_push: Option<bool>,
    pub max_concurrent_streams: Option<u32>,
    pub initial_window_size: Option<u32>,
    pub max_frame_size: Option<u32>,
    pub max_header_list_size: Option<u32>,
}

/// A parsed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        end_stream: bool,
        data: Bytes,
        /// The whole payload's length, padding included: what flow control counts.
        flow_len: u32,
    },
    Headers {
        stream: u32,
        end_stream: bool,
        end_headers: bool,
        priority: Option<Priority>,
        block: Bytes,
    },
    Priority {
        stream: u32,
        priority: Priority,
    },
    RstStream {
        stream: u32,
        reason: u32,
    },
    Settings {
        ack: bool,
        settings: Settings,
    },
    Ping {
        ack: bool,
        data: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        reason: u32,
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Continuation {
        stream: u32,
        end_headers: bool,
        block: Bytes,
    },
    /// A type this endpoint does not know: ignored (RFC 9113 §4.1, §5.5).
    Unknown,
}

/// Strips the padding of a PADDED frame's payload.
fn unpad(payload: &mut Bytes, flags: u8) -> Result<(), Error> {
    if flags & PADDED == 0 {
        return Ok(());
    }
    if payload.is_empty() {
        return Err(Error::Connection(Reason::FrameSize));
    }
    let pad = payload.get_u8() as usize;
    // RFC 9113 §6.1, §6.2: padding as long as the payload or longer.
    if pad > payload.len() {
        return Err(Error::Connection(Reason::Protocol));
    }
    payload.truncate(payload.len() - pad);
    Ok(())
}

fn priority(b: &[u8], stream: u32) -> Result<Priority, Error> {
    let word = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let priority = Priority { dependency: word & MAX_WINDOW, exclusive: word >> 31 == 1, weight: b[4] };
    // RFC 9113 §5.3.1: a stream cannot depend on itself.
    if priority.dependency == stream {
        return Err(Error::Stream(stream, Reason::Protocol));
    }
    Ok(priority)
}

/// Parses a frame's payload. The frame's length has been checked against the
/// receiver's SETTINGS_MAX_FRAME_SIZE already (`FRAME_SIZE_ERROR`).
pub fn parse(head: Head, mut payload: Bytes) -> Result<Frame, Error> {
    let Head { len, kind, flags, stream } = head;
    let conn = |reason| Err(Error::Connection(reason));
    match kind {
        DATA => {
            if stream == 0 {
                return conn(Reason::Protocol);
            }
            unpad(&mut payload, flags)?;
            Ok(Frame::Data { stream, end_stream: flags & END_STREAM != 0, data: payload, flow_len: len })
        }
        HEADERS => {
            if stream == 0 {
                return conn(Reason::Protocol);
            }
            unpad(&mut payload, flags)?;
            let mut prio = None;
            if flags & PRIORITY_FLAG != 0 {
                if payload.len() < 5 {
                    return conn(Reason::FrameSize);
                }
                // A dependency on itself is checked by the connection once the block
                // is decoded: skipping the block would lose the HPACK table's state.
                let word = payload.get_u32();
                let weight = payload.get_u8();
                prio = Some(Priority { dependency: word & MAX_WINDOW, exclusive: word >> 31 == 1, weight });
            }
            Ok(Frame::Headers {
                stream,
                end_stream: flags & END_STREAM != 0,
                end_headers: flags & END_HEADERS != 0,
                priority: prio,
                block: payload,
            })
        }
        PRIORITY => {
            if stream == 0 {
                return conn(Reason::Protocol);
            }
            if len != 5 {
                return Err(Error::Stream(stream, Reason::FrameSize));
            }
            Ok(Frame::Priority { stream, priority: priority(&payload, stream)? })
        }
        RST_STREAM => {
            if stream == 0 {
                return conn(Reason::Protocol);
            }
            if len != 4 {
                return conn(Reason::FrameSize);
            }
            Ok(Frame::RstStream { stream, reason: payload.get_u32() })
        }
        SETTINGS => {
            if stream != 0 {
                return conn(Reason::Protocol);
            }
            let ack = flags & ACK != 0;
            if (ack && len != 0) || len % 6 != 0 {
                return conn(Reason::FrameSize);
            }
            let mut settings = Settings::default();
            while payload.has_remaining() {
                let (id, value) = (payload.get_u16(), payload.get_u32());
                match id {
                    SETTINGS_HEADER_TABLE_SIZE => settings.header_table_size = Some(value),
                    SETTINGS_ENABLE_PUSH => match value {
                        0 | 1 => settings.enable_push = Some(value == 1),
                        _ => return conn(Reason::Protocol),
                    },
                    SETTINGS_MAX_CONCURRENT_STREAMS => settings.max_concurrent_streams = Some(value),
                    SETTINGS_INITIAL_WINDOW_SIZE => {
                        if value > MAX_WINDOW {
                            return conn(Reason::FlowControl);
                        }
                        settings.initial_window_size = Some(value);
                    }
                    SETTINGS_MAX_FRAME_SIZE => {
                        if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) {
                            return conn(Reason::Protocol);
                        }
                        settings.max_frame_size = Some(value);
                    }
                    SETTINGS_MAX_HEADER_LIST_SIZE => settings.max_header_list_size = Some(value),
                    // Unknown settings are ignored (§6.5.2).
                    _ => {}
                }
            }
            Ok(Frame::Settings { ack, settings })
        }
        // A client cannot push (§8.4): SETTINGS_ENABLE_PUSH is a server's to send.
        PUSH_PROMISE => conn(Reason::Protocol),
        PING => {
            if stream != 0 {
                return conn(Reason::Protocol);
            }
            if len != 8 {
                return conn(Reason::FrameSize);
            }
            let mut data = [0; 8];
            payload.copy_to_slice(&mut data);
            Ok(Frame::Ping { ack: flags & ACK != 0, data })
        }
        GOAWAY => {
            if stream != 0 {
                return conn(Reason::Protocol);
            }
            if len < 8 {
                return conn(Reason::FrameSize);
            }
            Ok(Frame::GoAway { last_stream: payload.get_u32() & MAX_WINDOW, reason: payload.get_u32() })
        }
        WINDOW_UPDATE => {
            if len != 4 {
                return conn(Reason::FrameSize);
            }
            let increment = payload.get_u32() & MAX_WINDOW;
            if increment == 0 {
                return Err(match stream {
                    0 => Error::Connection(Reason::Protocol),
                    _ => Error::Stream(stream, Reason::Protocol),
                });
            }
            Ok(Frame::WindowUpdate { stream, increment })
        }
        CONTINUATION => {
            if stream == 0 {
                return conn(Reason::Protocol);
            }
            Ok(Frame::Continuation { stream, end_headers: flags & END_HEADERS != 0, block: payload })
        }
        _ => Ok(Frame::Unknown),
    }
}

/// Appends a frame header.
pub fn head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// Appends a SETTINGS frame with `values` (identifier, value).
pub fn settings(out: &mut Vec<u8>, values: &[(u16, u32)]) {
    head(out, values.len() * 6, SETTINGS, 0, 0);
    for (id, value) in values {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub fn settings_ack(out: &mut Vec<u8>) {
    head(out, 0, SETTINGS, ACK, 0);
}

pub fn ping(out: &mut Vec<u8>, ack: bool, data: [u8; 8]) {
    head(out, 8, PING, if ack { ACK } else { 0 }, 0);
    out.extend_from_slice(&data);
}

pub fn goaway(out: &mut Vec<u8>, last_stream: u32, reason: Reason) {
    head(out, 8, GOAWAY, 0, 0);
    out.extend_from_slice(&last_stream.to_be_bytes());
    out.extend_from_slice(&(reason as u32).to_be_bytes());
}

pub fn rst_stream(out: &mut Vec<u8>, stream: u32, reason: Reason) {
    head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&(reason as u32).to_be_bytes());
}

pub fn window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    head(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&increment.to_be_bytes());
}

/// Appends a DATA frame carrying `data` (at most the peer's MAX_FRAME_SIZE).
pub fn data(out: &mut Vec<u8>, stream: u32, data: &[u8], end_stream: bool) {
    head(out, data.len(), DATA, if end_stream { END_STREAM } else { 0 }, stream);
    out.extend_from_slice(data);
}

/// Appends a header block `block` as a HEADERS frame and as many CONTINUATION frames
/// as `max_frame` needs.
pub fn headers(out: &mut Vec<u8>, stream: u32, block: &[u8], end_stream: bool, max_frame: usize) {
    let mut chunks = block.chunks(max_frame.max(1));
    let first = chunks.next().unwrap_or(&[]);
    let rest = block.len() - first.len();
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if rest == 0 {
        flags |= END_HEADERS;
    }
    head(out, first.len(), HEADERS, flags, stream);
    out.extend_from_slice(first);
    let mut left = rest;
    for chunk in chunks {
        left -= chunk.len();
        head(out, chunk.len(), CONTINUATION, if left == 0 { END_HEADERS } else { 0 }, stream);
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<Frame, Error> {
        let mut out = Vec::new();
        head(&mut out, payload.len(), kind, flags, stream);
        let h = Head::parse(&out);
        assert_eq!(h, Head { len: payload.len() as u32, kind, flags, stream });
        parse(h, Bytes::copy_from_slice(payload))
    }

    use Error::{Connection as C, Stream as S};

    #[test]
    fn the_reserved_bit_of_a_stream_id_is_ignored() {
        let h = Head::parse(&[0, 0, 4, 8, 0, 0x80, 0, 0, 1]);
        assert_eq!(h.stream, 1);
    }

    #[test]
    fn data_frames_lose_their_padding_but_count_it() {
        assert_eq!(
            frame(DATA, PADDED | END_STREAM, 1, b"\x02abcpp"),
            Ok(Frame::Data { stream: 1, end_stream: true, data: Bytes::from_static(b"abc"), flow_len: 6 })
        );
        assert_eq!(
            frame(DATA, PADDED, 1, b"\x02pp"),
            Ok(Frame::Data { stream: 1, end_stream: false, data: Bytes::new(), flow_len: 3 })
        );
        assert_eq!(frame(DATA, PADDED, 1, b"\x03pp"), Err(C(Reason::Protocol)));
        assert_eq!(frame(DATA, PADDED, 1, b""), Err(C(Reason::FrameSize)));
        assert_eq!(frame(DATA, 0, 0, b"a"), Err(C(Reason::Protocol)));
    }

    #[test]
    fn headers_frames_with_padding_and_priority() {
        let payload = b"\x01\x80\x00\x00\x03\x10blockp";
        assert_eq!(
            frame(HEADERS, PADDED | PRIORITY_FLAG | END_HEADERS, 1, payload),
            Ok(Frame::Headers {
                stream: 1,
                end_stream: false,
                end_headers: true,
                priority: Some(Priority { dependency: 3, exclusive: true, weight: 16 }),
                block: Bytes::from_static(b"block"),
            })
        );
        // Depends on itself: parsed, for the connection to decode the block, then refuse.
        assert!(matches!(
            frame(HEADERS, PRIORITY_FLAG, 3, b"\x00\x00\x00\x03\x10"),
            Ok(Frame::Headers { priority: Some(Priority { dependency: 3, .. }), .. })
        ));
        assert_eq!(frame(HEADERS, PRIORITY_FLAG, 3, b"\x00\x00"), Err(C(Reason::FrameSize)));
        assert_eq!(frame(HEADERS, 0, 0, b""), Err(C(Reason::Protocol)));
        assert_eq!(frame(HEADERS, PADDED, 1, b"\x05ab"), Err(C(Reason::Protocol)));
    }

    #[test]
    fn priority_frames() {
        assert_eq!(
            frame(PRIORITY, 0, 5, b"\x00\x00\x00\x01\x00"),
            Ok(Frame::Priority {
                stream: 5,
                priority: Priority { dependency: 1, exclusive: false, weight: 0 }
            })
        );
        assert_eq!(frame(PRIORITY, 0, 5, b"\x00\x00\x00\x05\x00"), Err(S(5, Reason::Protocol)));
        assert_eq!(frame(PRIORITY, 0, 5, b"\x00\x00\x00\x01"), Err(S(5, Reason::FrameSize)));
        assert_eq!(frame(PRIORITY, 0, 0, b"\x00\x00\x00\x01\x00"), Err(C(Reason::Protocol)));
    }

    #[test]
    fn rst_stream_frames() {
        assert_eq!(frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]), Ok(Frame::RstStream { stream: 1, reason: 8 }));
        assert_eq!(frame(RST_STREAM, 0, 1, &[0, 0, 8]), Err(C(Reason::FrameSize)));
        assert_eq!(frame(RST_STREAM, 0, 0, &[0, 0, 0, 8]), Err(C(Reason::Protocol)));
    }

    #[test]
    fn settings_frames_are_validated() {
        let mut out = Vec::new();
        settings(
            &mut out,
            &[(SETTINGS_MAX_CONCURRENT_STREAMS, 100), (0x99, 1), (SETTINGS_INITIAL_WINDOW_SIZE, 10)],
        );
        let h = Head::parse(&out);
        let parsed = parse(h, Bytes::copy_from_slice(&out[HEADER_LEN..]));
        let expected = Settings {
            max_concurrent_streams: Some(100),
            initial_window_size: Some(10),
            ..Settings::default()
        };
        assert_eq!(parsed, Ok(Frame::Settings { ack: false, settings: expected }));
        let one = |id: u16, value: u32| {
            let mut p = id.to_be_bytes().to_vec();
            p.extend_from_slice(&value.to_be_bytes());
            frame(SETTINGS, 0, 0, &p)
        };
        assert_eq!(one(SETTINGS_ENABLE_PUSH, 2), Err(C(Reason::Protocol)));
        assert!(one(SETTINGS_ENABLE_PUSH, 0).is_ok());
        assert_eq!(one(SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW + 1), Err(C(Reason::FlowControl)));
        assert!(one(SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW).is_ok());
        assert_eq!(one(SETTINGS_MAX_FRAME_SIZE, 16_383), Err(C(Reason::Protocol)));
        assert_eq!(one(SETTINGS_MAX_FRAME_SIZE, 1 << 24), Err(C(Reason::Protocol)));
        assert!(one(SETTINGS_MAX_FRAME_SIZE, 1 << 20).is_ok());
        assert_eq!(frame(SETTINGS, ACK, 0, &[0; 6]), Err(C(Reason::FrameSize)));
        assert_eq!(frame(SETTINGS, 0, 0, &[0; 5]), Err(C(Reason::FrameSize)));
        assert_eq!(frame(SETTINGS, 0, 1, &[]), Err(C(Reason::Protocol)));
        assert_eq!(
            frame(SETTINGS, ACK, 0, &[]),
            Ok(Frame::Settings { ack: true, settings: Settings::default() })
        );
    }

    #[test]
    fn ping_goaway_window_update_push_promise_continuation_unknown() {
        let mut out = Vec::new();
        ping(&mut out, true, *b"12345678");
        assert_eq!(
            parse(Head::parse(&out), Bytes::copy_from_slice(&out[9..])),
            Ok(Frame::Ping { ack: true, data: *b"12345678" })
        );
        assert_eq!(frame(PING, 0, 0, &[0; 7]), Err(C(Reason::FrameSize)));
        assert_eq!(frame(PING, 0, 1, &[0; 8]), Err(C(Reason::Protocol)));
        out.clear();
        goaway(&mut out, 7, Reason::EnhanceYourCalm);
        assert_eq!(
            parse(Head::parse(&out), Bytes::copy_from_slice(&out[9..])),
            Ok(Frame::GoAway { last_stream: 7, reason: 0xb })
        );
        assert_eq!(frame(GOAWAY, 0, 0, &[0; 7]), Err(C(Reason::FrameSize)));
        assert_eq!(frame(GOAWAY, 0, 1, &[0; 8]), Err(C(Reason::Protocol)));
        out.clear();
        window_update(&mut out, 3, 1000);
        assert_eq!(
            parse(Head::parse(&out), Bytes::copy_from_slice(&out[9..])),
            Ok(Frame::WindowUpdate { stream: 3, increment: 1000 })
        );
        assert_eq!(frame(WINDOW_UPDATE, 0, 3, &[0; 4]), Err(S(3, Reason::Protocol)));
        assert_eq!(frame(WINDOW_UPDATE, 0, 0, &[0; 4]), Err(C(Reason::Protocol)));
        assert_eq!(frame(WINDOW_UPDATE, 0, 0, &[0; 3]), Err(C(Reason::FrameSize)));
        assert_eq!(frame(PUSH_PROMISE, 0, 1, &[0; 4]), Err(C(Reason::Protocol)));
        assert_eq!(frame(CONTINUATION, 0, 0, &[]), Err(C(Reason::Protocol)));
        assert_eq!(frame(0x42, 0xff, 9, b"whatever"), Ok(Frame::Unknown));
        out.clear();
        rst_stream(&mut out, 9, Reason::Cancel);
        assert_eq!(
            parse(Head::parse(&out), Bytes::copy_from_slice(&out[9..])),
            Ok(Frame::RstStream { stream: 9, reason: 8 })
        );
    }

    #[test]
    fn a_long_header_block_is_split_into_continuations() {
        let block: Vec<u8> = (0..40).collect();
        let mut out = Vec::new();
        headers(&mut out, 1, &block, true, 16);
        let mut at = 0;
        let mut got = Vec::new();
        let mut kinds = Vec::new();
        while at < out.len() {
            let h = Head::parse(&out[at..]);
            kinds.push((h.kind, h.flags));
            got.extend_from_slice(&out[at + 9..at + 9 + h.len as usize]);
            at += 9 + h.len as usize;
        }
        assert_eq!(got, block);
        assert_eq!(kinds, [(HEADERS, END_STREAM), (CONTINUATION, 0), (CONTINUATION, END_HEADERS)]);
        out.clear();
        data(&mut out, 1, b"abc", true);
        assert_eq!(
            parse(Head::parse(&out), Bytes::copy_from_slice(&out[9..])),
            Ok(Frame::Data { stream: 1, end_stream: true, data: Bytes::from_static(b"abc"), flow_len: 3 })
        );
    }
}
