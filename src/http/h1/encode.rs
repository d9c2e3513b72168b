//! The encoders both roles share: header lines, chunk-size lines, and the vectored
//! write that sends a gathered head (or chunk framing) and a large body frame in one
//! `writev`.

use std::future::poll_fn;
use std::pin::Pin;

use tokio::io::AsyncWrite;

/// `name: value\r\n`.
#[inline]
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    // The separators byte by byte: a `memcpy` call per two bytes costs more.
    out.extend_from_slice(name);
    out.push(b':');
    out.push(b' ');
    out.extend_from_slice(value);
    out.push(b'\r');
    out.push(b'\n');
}

/// The fields of a block of `name: value\r\n` lines (as `push_field` writes them) as
/// (name, value).
pub fn fields(mut block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    std::iter::from_fn(move || {
        let colon = block.iter().position(|&b| b == b':')?;
        let end = colon + block[colon..].iter().position(|&b| b == b'\r')?;
        let field = (&block[..colon], &block[colon + 2..end]);
        block = &block[end + 2..];
        Some(field)
    })
}

/// `content-length: n\r\n`.
pub fn push_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `n` in lowercase hex, for a chunk-size line.
pub fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Writes `a` then `b`, with vectored writes.
pub async fn write_both<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut a: &[u8],
    mut b: &[u8],
) -> std::io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let bufs = [std::io::IoSlice::new(a), std::io::IoSlice::new(b)];
        let n = poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, &bufs)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        let mut buf = [0u8; 16];
        assert_eq!(hex_len(0, &mut buf), b"0");
        assert_eq!(hex_len(255, &mut buf), b"ff");
        assert_eq!(hex_len(65536, &mut buf), b"10000");
    }
}
