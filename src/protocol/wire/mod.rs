//! The messages the capture and the secondary's reads decode, edit or write, on whole frames
//! (type byte and length included). Only frames that pgbridge changes are re-encoded; every
//! other frame keeps its bytes.
//!
//! [`frontend`] holds what a client sends (F), [`backend`] what a server answers (B); both read
//! their fields through one bounds-checked [`Reader`]. Every item is re-exported here, so
//! `crate::protocol::wire::<item>` names it whatever its direction.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::HEADER_LEN;

/// Test helper in the manner of pgwire's: `$frame`, just encoded, has the type byte `$tag` and a
/// length that counts exactly the bytes after it; `$read`, given a [`Reader`] past the header
/// as `$r`, reads back `$expected`, and no byte is left over.
#[cfg(test)]
macro_rules! roundtrip {
    ($frame:expr, $tag:expr, |$r:ident| $read:expr, $expected:expr) => {{
        let frame: &[u8] = &$frame;
        assert_eq!(frame[0], $tag, "type byte of {frame:?}");
        let declared = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(declared, frame.len() - 1, "declared length of {frame:?}");
        let mut reader = $crate::protocol::wire::Reader::body(frame);
        let $r = &mut reader;
        #[allow(clippy::redundant_closure_call)]
        let decoded = (|| $read)();
        assert_eq!(decoded, Some($expected), "decoded from {frame:?}");
        assert_eq!(reader.left(), 0, "bytes left over in {frame:?}");
    }};
}

pub mod backend;
pub mod frontend;

pub use backend::{
    command_tag, parameter_types, ready, row_fields, row_names, row_values, same_columns,
    truncate_data_row, truncate_row_description, with_formats, FieldInfo,
};
pub use frontend::{
    bind, bind_names, bind_params, bind_result_formats, bind_text, bind_to_statement, close,
    copy_done, describe_portal, describe_statement, execute, execute_max_rows, execute_portal,
    extend_bind_formats, flush, parse, parse_message, parse_param_types, parse_typed, query,
    query_text, replace_parse_query, sync, target, Param,
};

/// A cursor over the fields of one frame, for the decoders. Every read checks the bounds: past
/// the end of the frame it fails (`None`) and leaves the cursor where it was, so a truncated or
/// lying frame is refused and never panics.
#[derive(Debug, Clone)]
pub(super) struct Reader<'a> {
    frame: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader of `frame`'s body, past its type byte and length.
    pub(super) fn body(frame: &'a [u8]) -> Reader<'a> {
        Reader {
            frame,
            at: HEADER_LEN,
        }
    }

    /// A reader of `frame` from offset `at` on.
    pub(super) fn at(frame: &'a [u8], at: usize) -> Reader<'a> {
        Reader { frame, at }
    }

    /// The offset in the frame of the next field.
    pub(super) fn pos(&self) -> usize {
        self.at
    }

    /// Bytes not read yet.
    pub(super) fn left(&self) -> usize {
        self.frame.len().saturating_sub(self.at)
    }

    /// The next `n` bytes.
    pub(super) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.frame.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    pub(super) fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    pub(super) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.bytes(2)?.try_into().ok()?))
    }

    pub(super) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.bytes(4)?.try_into().ok()?))
    }

    /// A length or a count that PostgreSQL sends as a signed 32-bit integer (-1: NULL).
    pub(super) fn i32(&mut self) -> Option<i32> {
        self.u32().map(|v| v as i32)
    }

    /// A NUL-terminated string's bytes, without the NUL.
    pub(super) fn cstr_bytes(&mut self) -> Option<&'a [u8]> {
        let rest = self.frame.get(self.at..)?;
        let nul = rest.iter().position(|&b| b == 0)?;
        self.at += nul + 1;
        Some(&rest[..nul])
    }

    /// A NUL-terminated string that must be UTF-8.
    pub(super) fn cstr(&mut self) -> Option<&'a str> {
        let start = self.at;
        let s = self.cstr_bytes().and_then(|b| std::str::from_utf8(b).ok());
        if s.is_none() {
            self.at = start;
        }
        s
    }

    /// The bytes not read yet.
    pub(super) fn rest(&mut self) -> &'a [u8] {
        let rest = self.frame.get(self.at..).unwrap_or_default();
        self.at = self.at.max(self.frame.len());
        rest
    }
}

/// Reads a NUL-terminated string at `at`; returns it and the offset after the NUL.
pub fn cstr(frame: &[u8], at: usize) -> Option<(&str, usize)> {
    let mut r = Reader::at(frame, at);
    let s = r.cstr()?;
    Some((s, r.pos()))
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.extend_from_slice(s.as_bytes());
    buf.put_u8(0);
}

/// A frame of type `tag` around `body`.
pub fn framed(tag: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + HEADER_LEN);
    out.put_u8(tag);
    out.put_u32((body.len() + 4) as u32);
    out.extend_from_slice(body);
    out.freeze()
}

/// The length a frame header declares (counting itself and the body), once the type byte and
/// the four length bytes are in `buf`.
pub fn declared_len(buf: &[u8]) -> Option<u32> {
    Reader::at(buf, 1).u32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_refuses_to_read_past_the_end_and_stays_put() {
        let frame = framed(b'X', b"ab\0\xff\0\x00\x07");
        let mut r = Reader::body(&frame);
        assert_eq!(r.cstr(), Some("ab"));
        // Not UTF-8: refused, and the cursor does not move.
        assert_eq!(r.cstr(), None);
        assert_eq!(r.cstr_bytes(), Some(&b"\xff"[..]));
        assert_eq!(r.u32(), None);
        assert_eq!(r.u16(), Some(7));
        assert_eq!(r.left(), 0);
        assert_eq!(r.u8(), None);
        assert_eq!(r.bytes(usize::MAX), None);
        assert_eq!(r.rest(), b"");
    }

    #[test]
    fn a_frame_roundtrips_through_its_header() {
        roundtrip!(framed(b'X', b"body"), b'X', |r| r.bytes(4), &b"body"[..]);
        roundtrip!(framed(b'H', b""), b'H', |r| Some(r.rest()), &b""[..]);
        assert_eq!(declared_len(&framed(b'X', b"body")), Some(8));
        assert_eq!(declared_len(b"X\0\0\0"), None);
        assert_eq!(cstr(b"..a\0b", 2), Some(("a", 4)));
    }
}
