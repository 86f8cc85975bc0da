//! Frame boundaries in a byte stream.
//!
//! After the startup packet every PostgreSQL message is a frame: one type byte, a big-endian
//! `i32` length that counts itself and the body, then the body. The relay forwards the original
//! bytes; it only needs to know where each frame starts, so that it can inspect the few it cares
//! about whole and let every other one stream through, even one larger than its buffer.
//!
//! [`FrameScanner`] keeps that position across reads. It never copies: it reports, for the bytes
//! currently buffered, how far they may be forwarded and which complete frames were met.

use super::ProtocolError;

/// Bytes of a frame header: type byte and length.
pub const HEADER_LEN: usize = 5;

/// What a scanner's owner wants done with a frame, decided from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Forward the bytes as they come; the frame may be larger than any buffer.
    Pass,
    /// Wait until the whole frame is buffered and hand it over.
    Inspect,
}

/// Something the scanner found in the buffered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `buf[..end]` may be forwarded; nothing to look at inside it. The scanner continues after it.
    Forward { end: usize },
    /// `buf[start..end]` is a whole frame to inspect; bytes before `start` are already reported.
    Frame { start: usize, end: usize },
    /// The buffered bytes end inside a header or an inspected frame: read more. `need` is the
    /// number of bytes the buffer must hold from the scan position on to make progress.
    NeedMore { need: usize },
}

/// Walks frame headers across reads. The owner calls [`FrameScanner::next`] over its buffer
/// repeatedly, acting on each event, and [`FrameScanner::consume`] once it has forwarded and
/// dropped a prefix of the buffer.
#[derive(Debug, Default)]
pub struct FrameScanner {
    /// Offset in the current buffer where scanning resumes.
    pos: usize,
    /// Bytes of a passed-through frame that have not arrived yet.
    skip: usize,
    /// The type byte of the last frame whose header was seen.
    last_tag: u8,
    /// The length of a frame to inspect whose header is at `pos` but whose body is incomplete.
    pending: Option<usize>,
}

impl FrameScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when the bytes forwarded so far end exactly at a frame boundary, so that a message of
    /// pgbridge's own may be written to this stream without corrupting it.
    pub fn at_boundary(&self) -> bool {
        self.skip == 0
    }

    /// The type byte of the last frame whose header was seen.
    pub fn last_tag(&self) -> u8 {
        self.last_tag
    }

    /// The next event in `buf`. `classify` is asked once about every frame header (type byte and
    /// the declared length, which counts itself) and may refuse it.
    #[inline]
    pub fn next<F>(&mut self, buf: &[u8], mut classify: F) -> Result<Event, ProtocolError>
    where
        F: FnMut(u8, u32) -> Result<Disposition, ProtocolError>,
    {
        let start = self.pos;
        if let Some(total) = self.pending {
            return Ok(self.inspect_at(buf, start, total));
        }
        let mut pos = start + self.skip_within(buf.len() - start);
        while let Some((tag, len)) = header_at(buf, pos)? {
            self.last_tag = tag;
            let total = 1 + len as usize;
            match classify(tag, len)? {
                Disposition::Pass => pos = self.pass(buf.len(), pos, total),
                Disposition::Inspect => return Ok(self.inspect(buf, start, pos, total)),
            }
        }
        self.pos = pos;
        if pos > start {
            Ok(Event::Forward { end: pos })
        } else {
            Ok(Event::NeedMore { need: HEADER_LEN })
        }
    }

    /// Passes over what is left of a passed-through frame, within the `have` bytes buffered
    /// after the scan position; returns how many bytes that was.
    #[inline]
    fn skip_within(&mut self, have: usize) -> usize {
        let take = self.skip.min(have);
        self.skip -= take;
        take
    }

    /// Passes a frame of `total` bytes at `pos` through; returns where scanning goes on (the end
    /// of the buffer when the frame goes on past it).
    #[inline]
    fn pass(&mut self, buffered: usize, pos: usize, total: usize) -> usize {
        let have = buffered - pos;
        if have >= total {
            pos + total
        } else {
            self.skip = total - have;
            buffered
        }
    }

    /// A frame to inspect at `pos`: what precedes it is reported first.
    #[inline]
    fn inspect(&mut self, buf: &[u8], start: usize, pos: usize, total: usize) -> Event {
        self.pending = Some(total);
        if pos > start {
            self.pos = pos;
            return Event::Forward { end: pos };
        }
        self.inspect_at(buf, pos, total)
    }

    fn inspect_at(&mut self, buf: &[u8], pos: usize, total: usize) -> Event {
        if buf.len() - pos < total {
            return Event::NeedMore { need: total };
        }
        self.pending = None;
        self.pos = pos + total;
        Event::Frame {
            start: pos,
            end: pos + total,
        }
    }

    /// The owner dropped `n` bytes from the front of its buffer (everything before the scan
    /// position, or less).
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.pos);
        self.pos -= n;
    }

    /// Bytes from the start of the buffer that have been scanned (forwarded or reported).
    pub fn scanned(&self) -> usize {
        self.pos
    }
}

/// The type byte and declared length of the frame header at `pos`, once it is buffered; a
/// length that cannot be (under 4, or over `i32::MAX`) is a protocol violation.
#[inline]
fn header_at(buf: &[u8], pos: usize) -> Result<Option<(u8, u32)>, ProtocolError> {
    let Some(h) = buf.get(pos..pos + HEADER_LEN) else {
        return Ok(None);
    };
    let (tag, len) = (h[0], u32::from_be_bytes([h[1], h[2], h[3], h[4]]));
    if !(4..=i32::MAX as u32).contains(&len) {
        return Err(ProtocolError::violation(format!(
            "invalid message length {} for message type {}",
            len as i32,
            printable(tag)
        )));
    }
    Ok(Some((tag, len)))
}

/// A type byte for an error message: the character when printable, else its number.
pub fn printable(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("\"{}\"", tag as char)
    } else {
        format!("{tag}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// Feeds `stream` in chunks of `chunk` bytes, the way a socket may deliver it, and returns the
    /// bytes forwarded and the frames inspected (type bytes of `inspect`).
    fn run(stream: &[u8], chunk: usize, inspect: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>, usize) {
        let mut scanner = FrameScanner::new();
        let mut headers = 0;
        let mut buf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut frames = Vec::new();
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                let ev = scanner
                    .next(&buf, |tag, _| {
                        headers += 1;
                        Ok(if inspect.contains(&tag) {
                            Disposition::Inspect
                        } else {
                            Disposition::Pass
                        })
                    })
                    .unwrap();
                match ev {
                    Event::Forward { end } => {
                        out.extend_from_slice(&buf[..end]);
                        buf.drain(..end);
                        scanner.consume(end);
                    }
                    Event::Frame { start, end } => {
                        assert_eq!(start, 0);
                        frames.push(buf[start..end].to_vec());
                        out.extend_from_slice(&buf[..end]);
                        buf.drain(..end);
                        scanner.consume(end);
                    }
                    Event::NeedMore { .. } => break,
                }
            }
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        assert!(scanner.at_boundary());
        (out, frames, headers)
    }

    #[test]
    fn every_chunking_forwards_the_stream_unchanged_and_finds_every_inspected_frame() {
        let mut stream = Vec::new();
        stream.extend(frame(b'T', b"row description"));
        stream.extend(frame(b'D', &[7u8; 300]));
        stream.extend(frame(b'C', b"SELECT 1\0"));
        stream.extend(frame(b'Z', b"I"));
        stream.extend(frame(b'D', b""));
        stream.extend(frame(b'Z', b"T"));
        for chunk in 1..stream.len() + 1 {
            let (out, frames, headers) = run(&stream, chunk, b"Z");
            assert_eq!(headers, 6, "each header is classified once, chunk {chunk}");
            assert_eq!(out, stream, "chunk {chunk}");
            assert_eq!(
                frames,
                vec![frame(b'Z', b"I"), frame(b'Z', b"T")],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_passed_frame_larger_than_the_buffer_streams_through() {
        let big = frame(b'D', &vec![1u8; 100_000]);
        let mut scanner = FrameScanner::new();
        let ev = scanner
            .next(&big[..1000], |_, _| Ok(Disposition::Pass))
            .unwrap();
        assert_eq!(ev, Event::Forward { end: 1000 });
        assert!(!scanner.at_boundary());
        scanner.consume(1000);
        let ev = scanner
            .next(&big[1000..], |_, _| Ok(Disposition::Pass))
            .unwrap();
        assert_eq!(
            ev,
            Event::Forward {
                end: big.len() - 1000
            }
        );
        assert!(scanner.at_boundary());
    }

    #[test]
    fn a_bad_length_is_a_protocol_violation() {
        let mut scanner = FrameScanner::new();
        let bad = [b'Q', 0, 0, 0, 3];
        let err = scanner
            .next(&bad, |_, _| Ok(Disposition::Pass))
            .unwrap_err();
        assert_eq!(err.sqlstate, "08P01");
        let bad = [b'Q', 0xff, 0xff, 0xff, 0xff];
        assert!(scanner.next(&bad, |_, _| Ok(Disposition::Pass)).is_err());
    }

    #[test]
    fn the_classifier_can_refuse_a_frame() {
        let mut scanner = FrameScanner::new();
        let err = scanner
            .next(&frame(b'?', b""), |tag, _| {
                Err(ProtocolError::violation(format!("bad {}", printable(tag))))
            })
            .unwrap_err();
        assert_eq!(err.message, "bad \"?\"");
    }
}
