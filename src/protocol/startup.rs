//! The packets a client sends before the first typed frame.
//!
//! They have no type byte: a length (counting itself) and a 32-bit code, which is either a
//! protocol version (a StartupMessage) or one of the special request codes. Clients' packets are
//! decoded here; pgbridge's own StartupMessage (to the secondary) is encoded here.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::messages::CancelKey;
use super::ProtocolError;

pub const SSL_REQUEST_CODE: u32 = 80877103;
pub const GSSENC_REQUEST_CODE: u32 = 80877104;
pub const CANCEL_REQUEST_CODE: u32 = 80877102;
/// Protocol version 3.0, as a StartupMessage's code.
pub const PROTOCOL_3_0: u32 = 196_608;
/// PostgreSQL refuses longer startup packets (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// A packet of the startup phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelKey),
    /// A StartupMessage: the original bytes, to be forwarded unchanged, and its parameters.
    Startup {
        raw: Bytes,
        version: (u16, u16),
        params: BTreeMap<String, String>,
    },
}

impl StartupPacket {
    /// The length a startup packet declares in its first four bytes, checked against the limit.
    pub fn declared_len(header: [u8; 4]) -> Result<usize, ProtocolError> {
        let len = u32::from_be_bytes(header) as usize;
        if !(8..=MAX_STARTUP_PACKET).contains(&len) {
            return Err(ProtocolError::violation(format!(
                "invalid length of startup packet: {}",
                len as i32
            )));
        }
        Ok(len)
    }

    /// Decodes a whole packet (length included).
    pub fn decode(raw: Bytes) -> Result<StartupPacket, ProtocolError> {
        let mut body = &raw[4..];
        let code = body.get_u32();
        match code {
            SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
            GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
            CANCEL_REQUEST_CODE => {
                if body.len() < 8 {
                    return Err(ProtocolError::violation("invalid cancel request"));
                }
                let pid = body.get_i32();
                let secret = Bytes::copy_from_slice(body);
                if secret.len() > 256 {
                    return Err(ProtocolError::violation("invalid cancel request"));
                }
                Ok(StartupPacket::Cancel(CancelKey { pid, secret }))
            }
            _ => {
                let version = ((code >> 16) as u16, (code & 0xffff) as u16);
                let params = parse_params(body)?;
                Ok(StartupPacket::Startup {
                    raw,
                    version,
                    params,
                })
            }
        }
    }
}

/// A StartupMessage of protocol 3.0 with `params` (name, value), in their order.
pub fn startup_message<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u32(PROTOCOL_3_0);
    for (name, value) in params {
        for s in [name, value] {
            body.extend_from_slice(s.as_bytes());
            body.put_u8(0);
        }
    }
    body.put_u8(0);
    let mut packet = BytesMut::with_capacity(body.len() + 4);
    packet.put_u32(body.len() as u32 + 4);
    packet.extend_from_slice(&body);
    packet.freeze()
}

/// `name\0value\0 ... \0`, strictly: a StartupMessage that does not end so is refused, as
/// PostgreSQL refuses it.
fn parse_params(mut body: &[u8]) -> Result<BTreeMap<String, String>, ProtocolError> {
    let invalid = || {
        ProtocolError::violation("invalid startup packet layout: expected terminator as last byte")
    };
    let mut params = BTreeMap::new();
    loop {
        let nul = body.iter().position(|&b| b == 0).ok_or_else(invalid)?;
        if nul == 0 {
            return if body.len() == 1 {
                Ok(params)
            } else {
                Err(invalid())
            };
        }
        let name = String::from_utf8_lossy(&body[..nul]).into_owned();
        body = &body[nul + 1..];
        let nul = body.iter().position(|&b| b == 0).ok_or_else(invalid)?;
        let value = String::from_utf8_lossy(&body[..nul]).into_owned();
        body = &body[nul + 1..];
        params.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, body: &[u8]) -> Bytes {
        let mut v = ((8 + body.len()) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        Bytes::from(v)
    }

    #[test]
    fn a_startup_message_keeps_its_bytes_and_params() {
        let raw = packet(196608, b"user\0alice\0database\0db\0\0");
        match StartupPacket::decode(raw.clone()).unwrap() {
            StartupPacket::Startup {
                raw: r,
                version,
                params,
            } => {
                assert_eq!(r, raw);
                assert_eq!(version, (3, 0));
                assert_eq!(params["user"], "alice");
                assert_eq!(params["database"], "db");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pgbridges_startup_message_roundtrips() {
        let packet = startup_message([("user", "bridge"), ("database", "db"), ("TimeZone", "UTC")]);
        let len = StartupPacket::declared_len(packet[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, packet.len());
        let StartupPacket::Startup {
            raw,
            version,
            params,
        } = StartupPacket::decode(packet.clone()).unwrap()
        else {
            panic!("not a StartupMessage");
        };
        assert_eq!((raw, version), (packet, (3, 0)));
        let want = [("TimeZone", "UTC"), ("database", "db"), ("user", "bridge")];
        let want = want.map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(params, BTreeMap::from(want));
        let empty = startup_message([]);
        assert_eq!(&empty[..], &[0, 0, 0, 9, 0, 3, 0, 0, 0]);
    }

    #[test]
    fn a_cancel_request_roundtrips() {
        let key = CancelKey {
            pid: 4242,
            secret: Bytes::from_static(&[9; 32]),
        };
        let packet = key.to_cancel_request();
        let len = StartupPacket::declared_len(packet[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, packet.len());
        assert_eq!(
            StartupPacket::decode(packet).unwrap(),
            StartupPacket::Cancel(key)
        );
        let too_long = CancelKey {
            pid: 1,
            secret: Bytes::from(vec![1; 257]),
        };
        assert!(StartupPacket::decode(too_long.to_cancel_request()).is_err());
    }

    #[test]
    fn special_requests_are_recognised() {
        assert_eq!(
            StartupPacket::decode(packet(SSL_REQUEST_CODE, b"")).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            StartupPacket::decode(packet(GSSENC_REQUEST_CODE, b"")).unwrap(),
            StartupPacket::GssEncRequest
        );
        let cancel = StartupPacket::decode(packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 1, 2, 3, 4]));
        assert_eq!(
            cancel.unwrap(),
            StartupPacket::Cancel(CancelKey {
                pid: 7,
                secret: Bytes::from_static(&[1, 2, 3, 4])
            })
        );
    }

    #[test]
    fn malformed_packets_are_refused() {
        assert!(StartupPacket::declared_len([0, 0, 0, 4]).is_err());
        assert!(StartupPacket::declared_len([0, 1, 0, 0]).is_err());
        assert!(StartupPacket::decode(packet(196608, b"user\0alice")).is_err());
        assert!(StartupPacket::decode(packet(CANCEL_REQUEST_CODE, &[0, 0])).is_err());
    }
}
