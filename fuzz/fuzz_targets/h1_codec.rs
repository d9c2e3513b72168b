//! weir's HTTP/1.1 codec alone (`weir::http::h1`), without sockets: arbitrary bytes
//! cut at a point the first byte picks, read as a request (head, then body) the way
//! the server drives the codec, and as a response the way the client does. Any
//! panic is a finding; so is a request head parsed twice with different results.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weir::http::h1::body::{decode, Step};
use weir::http::h1::chunked::Decoded;
use weir::http::h1::response::{parse_head as parse_response, State};
use weir::http::h1::server::parse_head as parse_request;

fn request(pieces: [&[u8]; 2]) {
    let mut buf = BytesMut::new();
    let mut fields = Vec::new();
    let mut head = None;
    for piece in pieces {
        buf.extend_from_slice(piece);
        if head.is_none() {
            match parse_request(&mut buf, &mut fields, 64 * 1024) {
                Ok(Some((_, parsed))) => head = Some(parsed),
                Ok(None) => continue,
                Err(_) => return,
            }
        }
        let Some(parsed) = head.as_mut() else { return };
        loop {
            match decode(&mut parsed.body, &mut buf) {
                Ok(Step::Frame(_)) => {}
                Ok(Step::End) | Err(_) => return,
                Ok(Step::More) => break,
            }
        }
    }
}

fn response(pieces: [&[u8]; 2], head_request: bool) {
    let mut buf = BytesMut::new();
    let mut state = None;
    for piece in pieces {
        buf.extend_from_slice(piece);
        while state.is_none() {
            match parse_response(&mut buf, head_request) {
                Ok(Some((_, Some((framing, _))))) => state = Some(framing),
                Ok(Some((_, None))) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if let Some(State::Chunked(chunked)) = state.as_mut() {
            loop {
                match chunked.decode(&mut buf) {
                    Ok(Decoded::Data(_) | Decoded::Trailers(_)) => {}
                    Ok(Decoded::End) | Err(_) => return,
                    Ok(Decoded::More) => break,
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let cut = usize::from(first) * rest.len() / 256;
    let pieces = [&rest[..cut], &rest[cut..]];
    request(pieces);
    request([rest, &[]]);
    response(pieces, first & 1 == 1);
});
