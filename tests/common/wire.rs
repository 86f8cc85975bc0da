//! A raw wire-protocol client, for what libraries hide: exact reply bytes, pipelines written in
//! one go, special startup packets, and garbage.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct Wire {
    pub stream: TcpStream,
}

/// A frame: type byte and body.
pub type Frame = (u8, Vec<u8>);

impl Wire {
    pub fn connect(port: u16) -> Wire {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Wire { stream }
    }

    /// Sends a StartupMessage (protocol 3.0) for a trust user; returns the frames up to and
    /// including the first ReadyForQuery.
    pub fn startup(&mut self, user: &str, db: &str) -> Vec<Frame> {
        self.send(&startup_packet((3, 0), &[("user", user), ("database", db)]));
        self.frames_until_ready(1)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next frame, or `None` at end of stream.
    pub fn frame(&mut self) -> Option<Frame> {
        let mut header = [0u8; 5];
        if self.stream.read_exact(&mut header).is_err() {
            return None;
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.stream.read_exact(&mut body).ok()?;
        Some((header[0], body))
    }

    /// Frames until `n` ReadyForQuery have arrived (or the stream ends).
    pub fn frames_until_ready(&mut self, n: usize) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut seen = 0;
        while seen < n {
            let Some(f) = self.frame() else { break };
            if f.0 == b'Z' {
                seen += 1;
            }
            frames.push(f);
        }
        frames
    }

    /// Everything until the peer closes the connection.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.stream.read_to_end(&mut out);
        out
    }
}

/// Re-encodes frames as the bytes they came in.
pub fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, body) in frames {
        out.extend_from_slice(&frame(*tag, body));
    }
    out
}

pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

pub fn startup_packet(version: (u16, u16), params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version.0.to_be_bytes());
    body.extend_from_slice(&version.1.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut v = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&body);
    v
}

/// An 8-byte request packet (SSLRequest, GSSENCRequest).
pub fn request_packet(code: u32) -> Vec<u8> {
    let mut v = 8u32.to_be_bytes().to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    v
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, sql);
    frame(b'Q', &body)
}

pub fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, sql);
    body.extend_from_slice(&(types.len() as u16).to_be_bytes());
    for t in types {
        body.extend_from_slice(&t.to_be_bytes());
    }
    frame(b'P', &body)
}

/// Bind with one format code for all parameters and one for all results (0 text, 1 binary).
pub fn bind(
    portal: &str,
    stmt: &str,
    param_format: u16,
    params: &[Option<&[u8]>],
    result_format: u16,
) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal);
    cstr(&mut body, stmt);
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&param_format.to_be_bytes());
    body.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        match p {
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v);
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&result_format.to_be_bytes());
    frame(b'B', &body)
}

pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    cstr(&mut body, name);
    frame(b'D', &body)
}

pub fn execute(portal: &str, max_rows: u32) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal);
    body.extend_from_slice(&max_rows.to_be_bytes());
    frame(b'E', &body)
}

pub fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    cstr(&mut body, name);
    frame(b'C', &body)
}

pub fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    frame(b'H', &[])
}

pub fn terminate() -> Vec<u8> {
    frame(b'X', &[])
}

/// The SQLSTATE of an ErrorResponse body.
pub fn sqlstate(body: &[u8]) -> String {
    field(body, b'C')
}

/// One field of an ErrorResponse/NoticeResponse body.
pub fn field(body: &[u8], code: u8) -> String {
    let mut rest = body;
    while let Some((&c, tail)) = rest.split_first() {
        if c == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if c == code {
            return String::from_utf8_lossy(&tail[..end]).into_owned();
        }
        rest = &tail[(end + 1).min(tail.len())..];
    }
    String::new()
}
