//! Where a parsed head's parts sit, shared by both roles' head parsers.

use std::ops::Range;

use bytes::Bytes;

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
