//! HPACK (RFC 7541): the decoder of request header blocks, with its dynamic table,
//! and the encoder of response header blocks.
//!
//! The decoder refuses every malformed block h2spec and the RFC name: index 0, an
//! index past the tables, a dynamic table size update over the limit SETTINGS
//! allowed or after the block's first field, integers that overflow, strings longer
//! than the block, Huffman strings with the EOS symbol, padding longer than 7 bits or
//! not all ones. Any of these is a connection's COMPRESSION_ERROR: the peer's table
//! can no longer be known.
//!
//! The encoder never indexes: `:status` from the static table when it is there,
//! every other field a literal without indexing (never indexed for sensitive
//! values), its name indexed when the static table has it. That is legal whatever
//! table size the peer allows, and costs no table state per connection.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

#[cfg(test)]
use super::huffman_table::ENCODE_CODES;
use super::huffman_table::ENCODE_CODE_LENGTHS;

/// The static table (RFC 7541 Appendix A), from index 1.
static STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// What each dynamic table entry costs beyond its name and value (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// A header block that cannot be decoded: the connection's COMPRESSION_ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

/// The decoder of one connection's request header blocks.
pub struct Decoder {
    /// Newest first.
    table: VecDeque<(Bytes, Bytes)>,
    size: usize,
    /// The table's size now, as the peer last set it.
    max_size: usize,
    /// The most the peer may set (our SETTINGS_HEADER_TABLE_SIZE).
    limit: usize,
    /// Where Huffman strings are decoded; split off, so a value costs no allocation
    /// of its own until the buffer is used up.
    scratch: BytesMut,
}

impl Decoder {
    pub fn new(limit: usize) -> Decoder {
        Decoder { table: VecDeque::new(), size: 0, max_size: limit, limit, scratch: BytesMut::new() }
    }

    /// Decodes `block`, giving each field to `field` (name, value) in order. Literal
    /// values are slices of `block`, without a copy.
    pub fn decode(&mut self, block: &Bytes, mut field: impl FnMut(&[u8], Bytes)) -> Result<(), DecodeError> {
        let mut at = 0;
        let mut first = true;
        while at < block.len() {
            let b = block[at];
            if b & 0x80 != 0 {
                let index = integer(block, &mut at, 7)?;
                let (name, value) = self.get(index)?;
                field(&name, value);
            } else if b & 0xc0 == 0x40 {
                let (name, value) = self.literal(block, &mut at, 6)?;
                field(&name, value.clone());
                self.insert(copy(&name), copy(&value));
            } else if b & 0xe0 == 0x20 {
                // RFC 7541 §4.2: only at the start of a block.
                if !first {
                    return Err(DecodeError("table size update after a field"));
                }
                let size = integer(block, &mut at, 5)?;
                if size > self.limit {
                    return Err(DecodeError("table size update over the limit"));
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001).
                let (name, value) = self.literal(block, &mut at, 4)?;
                field(&name, value);
            }
            first = false;
        }
        Ok(())
    }

    fn get(&self, index: usize) -> Result<(Bytes, Bytes), DecodeError> {
        match index {
            0 => Err(DecodeError("index 0")),
            1..=61 => {
                let (name, value) = STATIC[index - 1];
                Ok((Bytes::from_static(name.as_bytes()), Bytes::from_static(value.as_bytes())))
            }
            _ => self.table.get(index - 62).cloned().ok_or(DecodeError("index past the tables")),
        }
    }

    fn literal(&mut self, block: &Bytes, at: &mut usize, prefix: u8) -> Result<(Bytes, Bytes), DecodeError> {
        let index = integer(block, at, prefix)?;
        let name = match index {
            0 => self.string(block, at)?,
            _ => self.get(index)?.0,
        };
        let value = self.string(block, at)?;
        Ok((name, value))
    }

    fn string(&mut self, block: &Bytes, at: &mut usize) -> Result<Bytes, DecodeError> {
        let huffman = block.get(*at).ok_or(DecodeError("string missing"))? & 0x80 != 0;
        let len = integer(block, at, 7)?;
        let end =
            at.checked_add(len).filter(|end| *end <= block.len()).ok_or(DecodeError("string too long"))?;
        let raw = &block[*at..end];
        let start = *at;
        *at = end;
        if !huffman {
            return Ok(block.slice(start..end));
        }
        // At most 8 octets per 5 bits.
        self.scratch.reserve(len * 8 / 5 + 1);
        huffman_decode(raw, &mut self.scratch)?;
        Ok(self.scratch.split().freeze())
    }

    fn insert(&mut self, name: Bytes, value: Bytes) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        self.evict(size);
        // An entry larger than the table empties it and is not added (§4.4).
        if size <= self.max_size {
            self.size += size;
            self.table.push_front((name, value));
        }
    }

    /// Evicts the oldest entries until `room` more fits.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some((name, value)) => self.size -= name.len() + value.len() + ENTRY_OVERHEAD,
                None => break,
            }
        }
    }
}

/// A table entry's own copy: a slice of the read buffer would keep all of it alive.
fn copy(bytes: &Bytes) -> Bytes {
    if bytes.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(bytes)
    }
}

/// Decodes an integer with an N-bit prefix (RFC 7541 §5.1), bounded well below
/// overflow: no size in a block is near 2^28.
fn integer(block: &[u8], at: &mut usize, prefix: u8) -> Result<usize, DecodeError> {
    let mask = (1usize << prefix) - 1;
    let first = *block.get(*at).ok_or(DecodeError("integer missing"))? as usize & mask;
    *at += 1;
    if first < mask {
        return Ok(first);
    }
    let mut value = mask;
    let mut shift = 0;
    loop {
        let b = *block.get(*at).ok_or(DecodeError("integer cut short"))?;
        *at += 1;
        value += ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 21 {
            return Err(DecodeError("integer too large"));
        }
    }
}

/// Appends an integer with an N-bit prefix; `high` are the first octet's other bits.
fn put_integer(out: &mut Vec<u8>, high: u8, prefix: u8, value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(high | value as u8);
        return;
    }
    out.push(high | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// The canonical Huffman code's shape: per length, how many codes, the first code,
/// and where its symbols start in `SYMBOLS` (sorted by length, then value).
struct Canonical {
    count: [u32; 31],
    first: [u32; 31],
    offset: [u16; 31],
    symbols: [u8; 256],
}

const CANONICAL: Canonical = {
    let mut c = Canonical { count: [0; 31], first: [0; 31], offset: [0; 31], symbols: [0; 256] };
    let mut s = 0;
    while s < 256 {
        c.count[ENCODE_CODE_LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let mut code = 0u32;
    let mut offset = 0u16;
    let mut len = 1;
    while len <= 30 {
        c.first[len] = code;
        c.offset[len] = offset;
        // Symbols of one length, in order of value.
        let mut s = 0;
        while s < 256 {
            if ENCODE_CODE_LENGTHS[s] as usize == len {
                c.symbols[offset as usize] = s as u8;
                offset += 1;
            }
            s += 1;
        }
        code = (code + c.count[len]) << 1;
        len += 1;
    }
    c
};

/// Decodes a Huffman string (RFC 7541 §5.2) onto `out`.
pub fn huffman_decode(src: &[u8], out: &mut BytesMut) -> Result<(), DecodeError> {
    const C: &Canonical = &CANONICAL;
    // Bits not yet decoded, left-aligned.
    let mut acc = 0u64;
    let mut n = 0u32;
    let mut input = src.iter();
    loop {
        while n <= 56 {
            match input.next() {
                Some(&b) => {
                    acc |= (b as u64) << (56 - n);
                    n += 8;
                }
                None => break,
            }
        }
        let mut len = 5;
        let symbol = loop {
            if len > n || len > 30 {
                break None;
            }
            let code = (acc >> (64 - len)) as u32;
            if code < C.first[len as usize] + C.count[len as usize] {
                let index = C.offset[len as usize] as u32 + code - C.first[len as usize];
                break Some(C.symbols[index as usize]);
            }
            len += 1;
        };
        match symbol {
            Some(symbol) => {
                out.extend_from_slice(&[symbol]);
                acc <<= len;
                n -= len;
            }
            None if n >= 30 => return Err(DecodeError("Huffman EOS or invalid code")),
            None => {
                // The input is used up: what is left is padding, the EOS code's first
                // bits, fewer than 8.
                if n >= 8 {
                    return Err(DecodeError("Huffman padding too long"));
                }
                if n > 0 && acc >> (64 - n) != (1 << n) - 1 {
                    return Err(DecodeError("Huffman padding not all ones"));
                }
                return Ok(());
            }
        }
    }
}

/// The static table's index of `name`, if it has one.
fn static_name(name: &str) -> Option<usize> {
    Some(match name {
        "accept-charset" => 15,
        "accept-encoding" => 16,
        "accept-language" => 17,
        "accept-ranges" => 18,
        "accept" => 19,
        "access-control-allow-origin" => 20,
        "age" => 21,
        "allow" => 22,
        "cache-control" => 24,
        "content-disposition" => 25,
        "content-encoding" => 26,
        "content-language" => 27,
        "content-length" => 28,
        "content-location" => 29,
        "content-range" => 30,
        "content-type" => 31,
        "date" => 33,
        "etag" => 34,
        "expires" => 36,
        "last-modified" => 44,
        "link" => 45,
        "location" => 46,
        "proxy-authenticate" => 48,
        "refresh" => 52,
        "retry-after" => 53,
        "server" => 54,
        "set-cookie" => 55,
        "strict-transport-security" => 56,
        "vary" => 59,
        "via" => 60,
        "www-authenticate" => 61,
        _ => return None,
    })
}

/// Appends a response's `:status`.
pub fn encode_status(out: &mut Vec<u8>, status: u16) {
    let index = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => {
            // Literal without indexing, name `:status`.
            put_integer(out, 0, 4, 8);
            let mut digits = itoa::Buffer::new();
            let digits = digits.format(status);
            put_integer(out, 0, 7, digits.len());
            out.extend_from_slice(digits.as_bytes());
            return;
        }
    };
    put_integer(out, 0x80, 7, index);
}

/// Appends one field (its name lowercase already, as `http` keeps it).
pub fn encode_field(out: &mut Vec<u8>, name: &str, value: &[u8], sensitive: bool) {
    let high = if sensitive { 0x10 } else { 0 };
    match static_name(name) {
        Some(index) => put_integer(out, high, 4, index),
        None => {
            out.push(high);
            put_integer(out, 0, 7, name.len());
            out.extend_from_slice(name.as_bytes());
        }
    }
    put_integer(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

#[cfg(test)]
pub fn huffman_encode(src: &[u8], out: &mut Vec<u8>) {
    let mut bits = 0u64;
    let mut n = 0;
    for &b in src {
        bits = (bits << ENCODE_CODE_LENGTHS[b as usize]) | ENCODE_CODES[b as usize] as u64;
        n += ENCODE_CODE_LENGTHS[b as usize] as u32;
        while n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    if n > 0 {
        out.push(((bits << (8 - n)) as u8) | (0xff >> n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<_>>()
            .into()
    }

    fn decode(d: &mut Decoder, block: &Bytes) -> Result<Vec<(String, String)>, DecodeError> {
        let mut fields = Vec::new();
        d.decode(block, |n, v| {
            fields.push((String::from_utf8(n.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap()))
        })?;
        Ok(fields)
    }

    fn table(d: &Decoder) -> Vec<(String, String)> {
        d.table
            .iter()
            .map(|(n, v)| (String::from_utf8(n.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_code_is_canonical_and_every_octet_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let mut enc = Vec::new();
        huffman_encode(&all, &mut enc);
        let mut out = BytesMut::new();
        huffman_decode(&enc, &mut out).unwrap();
        assert_eq!(&out[..], &all[..]);
        for s in ["", "a", "www.example.com", "no-cache", "custom-value", "0", "00000000"] {
            let mut enc = Vec::new();
            huffman_encode(s.as_bytes(), &mut enc);
            let mut out = BytesMut::new();
            huffman_decode(&enc, &mut out).unwrap();
            assert_eq!(&out[..], s.as_bytes());
        }
    }

    #[test]
    fn bad_huffman_strings_are_refused() {
        let mut out = BytesMut::new();
        // EOS (30 ones) spelled out.
        assert!(huffman_decode(&[0xff, 0xff, 0xff, 0xff], &mut out).is_err());
        // 'a' (00011) then 11 bits of ones: padding over 7 bits.
        assert!(huffman_decode(&[0x1f, 0xff], &mut out).is_err());
        // 'a' then padding of zeros.
        assert!(huffman_decode(&[0x18], &mut out).is_err());
        out.clear();
        assert!(huffman_decode(&[0x1f], &mut out).is_ok());
        assert_eq!(&out[..], b"a");
    }

    #[test]
    fn integers_rfc7541_c1() {
        let mut out = Vec::new();
        put_integer(&mut out, 0, 5, 10);
        assert_eq!(out, [0x0a]);
        out.clear();
        put_integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        let mut at = 0;
        assert_eq!(integer(&out, &mut at, 5), Ok(1337));
        assert_eq!(at, 3);
        out.clear();
        put_integer(&mut out, 0, 8, 42);
        assert_eq!(out, [42]);
        let mut at = 0;
        assert!(integer(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x0f], &mut at, 5).is_err());
        let mut at = 0;
        assert!(integer(&[0x1f, 0x9a], &mut at, 5).is_err());
    }

    #[test]
    fn rfc7541_c2_literals_and_indexed() {
        let mut d = Decoder::new(4096);
        let block = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
        assert_eq!(decode(&mut d, &block).unwrap(), pairs(&[("custom-key", "custom-header")]));
        assert_eq!(d.size, 55);
        let mut d = Decoder::new(4096);
        assert_eq!(
            decode(&mut d, &hex("040c 2f73 616d 706c 652f 7061 7468")).unwrap(),
            pairs(&[(":path", "/sample/path")])
        );
        assert!(d.table.is_empty());
        assert_eq!(
            decode(&mut d, &hex("1008 7061 7373 776f 7264 0673 6563 7265 74")).unwrap(),
            pairs(&[("password", "secret")])
        );
        assert!(d.table.is_empty());
        assert_eq!(decode(&mut d, &hex("82")).unwrap(), pairs(&[(":method", "GET")]));
    }

    #[test]
    fn rfc7541_c3_requests_without_huffman() {
        let mut d = Decoder::new(4096);
        let r1 = hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d");
        assert_eq!(
            decode(&mut d, &r1).unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(d.size, 57);
        let r2 = hex("8286 84be 5808 6e6f 2d63 6163 6865");
        assert_eq!(
            decode(&mut d, &r2).unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        assert_eq!(d.size, 110);
        let r3 = hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65");
        assert_eq!(
            decode(&mut d, &r3).unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(
            table(&d),
            pairs(&[
                ("custom-key", "custom-value"),
                ("cache-control", "no-cache"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(d.size, 164);
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        let mut d = Decoder::new(4096);
        let r1 = hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
        assert_eq!(
            decode(&mut d, &r1).unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        let r2 = hex("8286 84be 5886 a8eb 1064 9cbf");
        assert_eq!(decode(&mut d, &r2).unwrap()[4], ("cache-control".into(), "no-cache".into()));
        let r3 = hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf");
        assert_eq!(decode(&mut d, &r3).unwrap()[4], ("custom-key".into(), "custom-value".into()));
        assert_eq!(d.size, 164);
    }

    #[test]
    fn rfc7541_c5_eviction_with_a_small_table() {
        // Responses decoded with a 256-octet table: entries are evicted.
        let mut d = Decoder::new(256);
        let r1 = hex("4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d");
        decode(&mut d, &r1).unwrap();
        assert_eq!(d.size, 222);
        let r2 = hex("4803 3330 37c1 c0bf");
        assert_eq!(decode(&mut d, &r2).unwrap()[0], (":status".into(), "307".into()));
        assert_eq!(d.size, 222);
        assert_eq!(table(&d)[0], (":status".into(), "307".into()));
        assert_eq!(d.table.len(), 4);
    }

    #[test]
    fn malformed_blocks_are_refused() {
        let mut d = Decoder::new(4096);
        assert!(decode(&mut d, &hex("80")).is_err(), "index 0");
        assert!(decode(&mut d, &hex("be")).is_err(), "past the tables");
        assert!(decode(&mut d, &hex("3fe21f")).is_err(), "size update over 4096");
        assert!(decode(&mut d, &hex("82 20")).is_err(), "size update after a field");
        assert!(decode(&mut d, &hex("20 3f e1 1f 82")).is_ok(), "updates at the start");
        assert!(decode(&mut d, &hex("0085 ffff ffff ff00")).is_err(), "EOS in a name");
        assert!(decode(&mut d, &hex("0004 6162")).is_err(), "string past the block");
        assert!(decode(&mut d, &hex("40")).is_err(), "cut short");
    }

    #[test]
    fn a_table_size_update_evicts() {
        let mut d = Decoder::new(4096);
        decode(&mut d, &hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572")).unwrap();
        assert_eq!(d.table.len(), 1);
        decode(&mut d, &hex("20")).unwrap();
        assert!(d.table.is_empty());
        assert!(decode(&mut d, &hex("be")).is_err());
    }

    #[test]
    fn the_encoder_round_trips_through_the_decoder() {
        let mut out = Vec::new();
        encode_status(&mut out, 200);
        encode_status(&mut out, 418);
        encode_field(&mut out, "content-type", b"text/plain", false);
        encode_field(&mut out, "x-custom", b"v", false);
        encode_field(&mut out, "set-cookie", b"a=b", true);
        let mut d = Decoder::new(4096);
        assert_eq!(
            decode(&mut d, &Bytes::from(out)).unwrap(),
            pairs(&[
                (":status", "200"),
                (":status", "418"),
                ("content-type", "text/plain"),
                ("x-custom", "v"),
                ("set-cookie", "a=b")
            ])
        );
        assert!(d.table.is_empty());
    }
}
