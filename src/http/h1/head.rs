//! Where a parsed head's parts sit, shared by both roles' head parsers.

use std::ops::Range;

use bytes::Bytes;

use super::framing::{connection_removes, is_hop_by_hop, tokens};

/// Where one header sits in a head httparse parsed: offsets into the buffer rather
/// than slices, so the head can be split off the buffer and shared by the header
/// values without a copy. Plain `usize` ranges: nothing is truncated, whatever the
/// head's size.
#[derive(Debug, Clone)]
pub struct Field {
    name: Range<usize>,
    value: Range<usize>,
}

/// The range of `part`, a slice of the buffer that starts at address `base`.
#[inline]
pub fn range_of(base: usize, part: &[u8]) -> Range<usize> {
    let at = part.as_ptr() as usize - base;
    at..at + part.len()
}

impl Field {
    /// The field of `header`, parsed from the buffer that starts at address `base`.
    #[inline]
    pub fn of(base: usize, header: &httparse::Header<'_>) -> Field {
        Field { name: range_of(base, header.name.as_bytes()), value: range_of(base, header.value) }
    }

    /// The name's bytes in `head`.
    #[inline]
    pub fn name<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.name.clone()]
    }

    /// Where the field's line sits in `head` when it is already written as weir
    /// writes fields (`encode::push_field`): a lowercase name, `: `, the value, CRLF.
    /// Such lines are copied as they are, many at a time.
    #[inline]
    pub fn as_written(&self, head: &[u8]) -> Option<Range<usize>> {
        let (name, value) = (self.name.clone(), self.value.clone());
        let written = value.start == name.end + 2
            && head.get(name.end..value.start) == Some(b": ")
            && head.get(value.end..value.end + 2) == Some(b"\r\n")
            && !head[name.clone()].iter().any(u8::is_ascii_uppercase);
        written.then_some(name.start..value.end + 2)
    }

    /// Lowercases the name in place in `head` (a name is a token: ASCII).
    #[inline]
    pub fn lowercase_name(&self, head: &mut [u8]) {
        head[self.name.clone()].make_ascii_lowercase();
    }

    /// Where the value sits in the head.
    #[inline]
    pub fn value_range(&self) -> Range<usize> {
        self.value.clone()
    }

    /// The value's bytes in `head`.
    #[inline]
    pub fn value_bytes<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.value.clone()]
    }

    /// The value, sharing `head`.
    #[inline]
    pub fn value(&self, head: &Bytes) -> Bytes {
        head.slice(self.value.clone())
    }
}

/// Whether a `Connection` field of a head names another field the head holds, one
/// the strip of hop-by-hop fields would remove: not a hop-by-hop one (those go
/// anyway) and not `Host` (`connection_removes`). A head that does keeps its map,
/// on either role, so the strip sees it.
pub fn connection_names_a_field(fields: &[Field], head: &[u8]) -> bool {
    let named = |token: &[u8]| {
        connection_removes(token)
            && !is_hop_by_hop(token)
            && fields.iter().any(|f| f.name(head).eq_ignore_ascii_case(token))
    };
    fields
        .iter()
        .filter(|f| f.name(head).eq_ignore_ascii_case(b"connection"))
        .any(|f| tokens(f.value_bytes(head)).any(named))
}
