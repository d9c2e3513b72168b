//! The one chunked-body decoder (RFC 9112 §7.1), shared by weir's HTTP/1.1 server
//! (request bodies, `http::h1::body`) and client (response bodies,
//! `h1::response`), so both read a body the same strict way.
//!
//! Strict where a looser reading would let two parsers disagree on where a body ends
//! (request smuggling): `chunk-size = 1*HEXDIG`, every line ends in CRLF (no bare LF
//! in a size line, an extension or the trailers; no empty size line), chunk data is
//! followed by CRLF. Extensions are skipped, and bounded per body (`MAX_EXTENSIONS`,
//! as hyper): a body of tiny chunks with long extensions is otherwise a cheap way to
//! make a server read much and forward little.
//!
//! Framing bytes are consumed as they are read, so a size line or extension sent a
//! byte at a time costs one pass. The data of small chunks that are already buffered
//! is gathered into one frame: a body of 1-byte chunks becomes one frame per read,
//! not one per chunk, and so one write upstream instead of thousands.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Most chunk-extension bytes (whitespace after the size included) in one body.
pub const MAX_EXTENSIONS: u32 = 16 * 1024;
/// Largest trailer section.
pub const MAX_TRAILERS: usize = 16 * 1024;
/// Most trailer fields.
const MAX_TRAILER_FIELDS: usize = 32;
/// Chunks up to this size are copied into a gathered frame when more follow in the
/// buffer; larger ones are passed on without a copy.
const SMALL_CHUNK: u64 = 4 * 1024;
/// Largest gathered frame.
const GATHER: usize = 64 * 1024;

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chunked {
    at: At,
    /// The chunk size being read, then the data left of the chunk.
    size: u64,
    /// Extension bytes so far in this body.
    extensions: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum At {
    /// In the chunk-size, after this many hex digits.
    Size(u8),
    /// Whitespace after the size (BWS before a `;`).
    SizeSpace,
    Extension,
    /// The CR that ends the size line was read.
    SizeLf,
    /// `size` bytes of data are left.
    Data,
    DataCr,
    DataLf,
    /// After the last chunk; this many bytes of the trailer section were checked.
    Trailers(u32),
    Done,
}

/// What one call of `decode` found.
#[derive(Debug)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body ended (after its trailers, if any).
    End,
    /// More bytes are needed.
    More,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

impl Chunked {
    pub const fn new() -> Chunked {
        Chunked { at: At::Size(0), size: 0, extensions: 0 }
    }

    pub fn is_done(&self) -> bool {
        self.at == At::Done
    }

    /// Decodes what `buf` holds, consuming it: the next data (of one chunk, or of
    /// several small ones gathered), the trailers, the end, or `More`. `Err`: the
    /// body is malformed and whatever follows on the connection unframed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        let mut gathered: Option<BytesMut> = None;
        loop {
            let used = self.framing(buf)?;
            buf.advance(used);
            match self.at {
                At::Data => {
                    if buf.is_empty() {
                        break;
                    }
                    let n = (buf.len() as u64).min(self.size) as usize;
                    let whole = n as u64 == self.size;
                    let small = whole && self.size <= SMALL_CHUNK;
                    match gathered.as_mut() {
                        // A large or partial chunk after gathered ones: it comes next call.
                        Some(_) if !small => break,
                        Some(out) => out.extend_from_slice(&buf[..n]),
                        // A small chunk with more bytes behind it: gather.
                        None if small && buf.len() > n => {
                            let mut out = BytesMut::with_capacity(buf.len().min(GATHER));
                            out.extend_from_slice(&buf[..n]);
                            gathered = Some(out);
                        }
                        None => {
                            let data = buf.split_to(n).freeze();
                            self.size -= n as u64;
                            if self.size == 0 {
                                self.at = At::DataCr;
                            }
                            return Ok(Decoded::Data(data));
                        }
                    }
                    buf.advance(n);
                    self.size = 0;
                    self.at = At::DataCr;
                    if gathered.as_ref().is_some_and(|g| g.len() >= GATHER) {
                        break;
                    }
                }
                // Gathered data goes out before the trailers and the end.
                At::Trailers(_) | At::Done if gathered.is_some() => break,
                At::Trailers(_) => return self.trailers(buf),
                At::Done => return Ok(Decoded::End),
                // The buffer ended inside a line.
                _ => break,
            }
        }
        Ok(match gathered {
            Some(data) => Decoded::Data(data.freeze()),
            None => Decoded::More,
        })
    }

    /// Reads framing bytes (size lines, extensions, the CRLF after data) from the
    /// start of `buf` until data, the trailers or the buffer's end; returns how many
    /// it read.
    fn framing(&mut self, buf: &[u8]) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.at = match self.at {
                At::Data | At::Trailers(_) | At::Done => return Ok(i),
                At::Size(digits) => match hex(b) {
                    Some(v) if digits < 16 => {
                        self.size = self.size << 4 | u64::from(v);
                        At::Size(digits + 1)
                    }
                    Some(_) => return Err("chunk size too large"),
                    None if digits == 0 => return Err("invalid chunk size"),
                    None => self.after_size(b)?,
                },
                At::SizeSpace => self.after_size(b)?,
                At::Extension => match b {
                    b'\r' => At::SizeLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => {
                        self.extension_byte()?;
                        At::Extension
                    }
                    _ => return Err("invalid chunk extension"),
                },
                At::SizeLf => match b {
                    b'\n' if self.size == 0 => At::Trailers(0),
                    b'\n' => At::Data,
                    _ => return Err("chunk size line not ended by CRLF"),
                },
                At::DataCr if b == b'\r' => At::DataLf,
                At::DataLf if b == b'\n' => At::Size(0),
                At::DataCr | At::DataLf => return Err("chunk data not followed by CRLF"),
            };
            i += 1;
        }
        Ok(i)
    }

    /// The byte after a chunk size's digits: whitespace, an extension or the CR.
    fn after_size(&mut self, b: u8) -> Result<At, &'static str> {
        match b {
            b'\r' => Ok(At::SizeLf),
            b' ' | b'\t' => {
                self.extension_byte()?;
                Ok(At::SizeSpace)
            }
            b';' => {
                self.extension_byte()?;
                Ok(At::Extension)
            }
            _ => Err("invalid chunk size line"),
        }
    }

    fn extension_byte(&mut self) -> Result<(), &'static str> {
        self.extensions += 1;
        if self.extensions > MAX_EXTENSIONS {
            return Err("chunk extensions too long");
        }
        Ok(())
    }

    /// The trailer section after the last chunk, up to its empty line.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        let At::Trailers(checked) = self.at else { unreachable!("called in the trailers") };
        if buf.len() < 2 {
            return Ok(Decoded::More);
        }
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.at = At::Done;
            return Ok(Decoded::End);
        }
        // Every LF must end a CRLF; the section ends at the first CRLF CRLF. Checked
        // from where the last call stopped, so a section sent bytewise costs one pass.
        let mut end = None;
        for p in checked as usize..buf.len() {
            if buf[p] != b'\n' {
                continue;
            }
            if p == 0 || buf[p - 1] != b'\r' {
                return Err("bare LF in the trailers");
            }
            if p >= 3 && &buf[p - 3..p - 1] == b"\r\n" {
                end = Some(p + 1);
                break;
            }
        }
        let Some(end) = end else {
            if buf.len() > MAX_TRAILERS {
                return Err("trailers too large");
            }
            self.at = At::Trailers(buf.len() as u32);
            return Ok(Decoded::More);
        };
        if end > MAX_TRAILERS {
            return Err("trailers too large");
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
        let trailers = match httparse::parse_headers(&buf[..end], &mut fields) {
            Ok(httparse::Status::Complete((used, fields))) if used == end => {
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for f in fields {
                    let name = HeaderName::from_bytes(f.name.as_bytes());
                    let value = HeaderValue::from_bytes(f.value);
                    if let (Ok(name), Ok(value)) = (name, value) {
                        trailers.append(name, value);
                    }
                }
                trailers
            }
            _ => return Err("invalid chunked trailers"),
        };
        buf.advance(end);
        self.at = At::Done;
        Ok(Decoded::Trailers(trailers))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `parts` fed one after another: the data, the trailers, or the error.
    fn decode_all(parts: &[&[u8]]) -> Result<(Vec<u8>, Option<HeaderMap>), &'static str> {
        let (mut state, mut buf) = (Chunked::new(), BytesMut::new());
        let (mut body, mut trailers) = (Vec::new(), None);
        for part in parts {
            buf.extend_from_slice(part);
            loop {
                match state.decode(&mut buf)? {
                    Decoded::Data(data) => body.extend_from_slice(&data),
                    Decoded::Trailers(t) => trailers = Some(t),
                    Decoded::End => return Ok((body, trailers)),
                    Decoded::More => break,
                }
            }
        }
        Err("incomplete")
    }

    fn whole(wire: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), &'static str> {
        decode_all(&[wire])
    }

    proptest::proptest! {
        /// Whatever bytes arrive, in any split, decoding ends in data, an end or an
        /// error: never a panic, and never more data out than in.
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512), split in 0usize..512) {
            let split = split.min(bytes.len());
            let (a, b) = bytes.split_at(split);
            if let Ok((body, _)) = decode_all(&[a, b]) {
                proptest::prop_assert!(body.len() <= bytes.len());
            }
        }

        /// A body chunked any way, small chunks or large, decodes to its data in any split.
        #[test]
        fn chunked_data_round_trips(chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..6000), 0..6), split in 0usize..40000) {
            let mut wire = Vec::new();
            for chunk in &chunks {
                wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let split = split.min(wire.len());
            let (a, b) = wire.split_at(split);
            let (body, _) = decode_all(&[a, b]).unwrap();
            proptest::prop_assert_eq!(body, chunks.concat());
        }
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"3;ext=1\r\nabc\r\n2 ; a=\"b\"\r\nde\r\n0\r\nx-t: 1\r\n\r\n";
        for split in 0..wire.len() {
            let (a, b) = wire.split_at(split);
            let (body, trailers) = decode_all(&[a, b]).unwrap();
            assert_eq!(body, b"abcde", "split at {split}");
            assert_eq!(trailers.unwrap()["x-t"], "1");
        }
        let bytewise: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_all(&bytewise).unwrap().0, b"abcde");
        assert_eq!(whole(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap().0, b"0123456789");
    }

    #[test]
    fn small_chunks_are_gathered_into_one_frame() {
        let mut wire = Vec::new();
        for _ in 0..1000 {
            wire.extend_from_slice(b"1\r\nx\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let (mut state, mut buf) = (Chunked::new(), BytesMut::from(&wire[..]));
        let Decoded::Data(data) = state.decode(&mut buf).unwrap() else { panic!("no data") };
        assert_eq!(data.len(), 1000);
        assert!(matches!(state.decode(&mut buf), Ok(Decoded::End)));
        assert!(buf.is_empty());
    }

    #[test]
    fn malformed_framing_is_refused() {
        for bad in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"\r\n\r\n",                    // an empty size line is no last chunk
            b"3\nabc\r\n0\r\n\r\n",         // bare LF ending the size line
            b"3;a=b\nabc\r\n0\r\n\r\n",     // bare LF in an extension
            b"3;a\x00\r\nabc\r\n0\r\n\r\n", // a control byte in an extension
            b"0\r\nx-t: 1\n\r\n",           // bare LF in the trailers
            b"0\r\nx-t: 1\r\n\n",           // bare LF ending the trailers
            b"0\r\nbad name: 1\r\n\r\n",
            b"+3\r\nabc\r\n0\r\n\r\n",
            b"0x3\r\nabc\r\n0\r\n\r\n",
            b"3 4\r\nabcd\r\n0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            b"3\r\nabc\n0\r\n\r\n",
        ] {
            let result = whole(bad);
            assert!(result.is_err(), "{:?} was accepted: {result:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn extensions_are_bounded_per_body() {
        let ext = format!(";{}", "e".repeat(1000));
        let mut wire = Vec::new();
        for _ in 0..16 {
            wire.extend_from_slice(format!("1{ext}\r\nx\r\n").as_bytes());
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(whole(&wire).unwrap().0.len(), 16);
        let mut over = Vec::new();
        for _ in 0..17 {
            over.extend_from_slice(format!("1{ext}\r\nx\r\n").as_bytes());
        }
        over.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(whole(&over).unwrap_err(), "chunk extensions too long");
    }

    #[test]
    fn oversized_trailers_are_refused() {
        let mut wire = b"0\r\n".to_vec();
        while wire.len() <= MAX_TRAILERS + 10 {
            wire.extend_from_slice(b"x-a: aaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(whole(&wire).is_err());
    }
}
