//! The few messages pgbridge writes itself or reads the fields of.
//!
//! pgwire's codec encodes and decodes them. Its strings are decoded lossily, so a decoded frame is
//! never re-encoded for forwarding unless pgbridge means to change it
//! (docs/DESIGN.md, principle 2).

use bytes::{Buf, Bytes, BytesMut};
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::startup::{Authentication, BackendKeyData, SecretKey};
use pgwire::messages::Message;
use pgwire::messages::{DecodeContext, ProtocolVersion};

use super::wire::{declared_len, Reader};

/// The SQLSTATEs pgbridge reports itself.
pub mod sqlstate {
    /// The primary cannot be reached or went away.
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// Too many client connections.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// A message over the configured size.
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    /// pgbridge is shutting down.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// Feature not supported (a second SSLRequest, for instance).
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
}

/// Severity of an ErrorResponse pgbridge writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

/// An ErrorResponse frame, as PostgreSQL writes it (S, V, C, M fields).
pub fn error_response(severity: Severity, sqlstate: &str, message: &str) -> Bytes {
    let sev = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    let msg = ErrorResponse::new(vec![
        (b'S', sev.to_string()),
        (b'V', sev.to_string()),
        (b'C', sqlstate.to_string()),
        (b'M', message.to_string()),
    ]);
    let mut buf = BytesMut::with_capacity(msg.message_length() + 1);
    // Encoding a vector of short strings into memory cannot fail.
    msg.encode(&mut buf)
        .expect("an ErrorResponse of short strings encodes");
    buf.freeze()
}

/// The fields of an ErrorResponse or NoticeResponse frame (whole frame, header included); none
/// when the frame is not one.
pub fn error_fields(frame: &[u8]) -> Vec<(u8, String)> {
    if !fields_terminated(frame) {
        // pgwire's decoder reads past the end of such a body and panics.
        return Vec::new();
    }
    let mut buf = BytesMut::from(frame);
    match ErrorResponse::decode(&mut buf, &DecodeContext::new(ProtocolVersion::PROTOCOL3_0)) {
        Ok(Some(e)) => e.fields,
        _ => Vec::new(),
    }
}

/// Whether the fields of an ErrorResponse body (a code byte and a NUL-terminated string each)
/// end with the terminating NUL inside the frame.
fn fields_terminated(frame: &[u8]) -> bool {
    let mut r = Reader::body(frame);
    loop {
        match r.u8() {
            None => return false,
            Some(0) => return true,
            Some(_) if r.cstr_bytes().is_none() => return false,
            Some(_) => {}
        }
    }
}

/// `SQLSTATE: message` of an ErrorResponse frame.
pub fn error_text(frame: &[u8]) -> String {
    let fields = error_fields(frame);
    let get = |c: u8| {
        fields
            .iter()
            .find(|(k, _)| *k == c)
            .map_or("", |(_, v)| v.as_str())
    };
    format!("{}: {}", get(b'C'), get(b'M'))
}

/// The SQLSTATE of an ErrorResponse frame.
pub fn error_code(frame: &[u8]) -> String {
    error_fields(frame)
        .into_iter()
        .find(|(k, _)| *k == b'C')
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// The transaction status byte of a ReadyForQuery frame: `I` idle, `T` in a transaction,
/// `E` in a failed transaction.
pub fn ready_status(frame: &[u8]) -> u8 {
    frame.get(5).copied().unwrap_or(b'I')
}

/// A decoded BackendKeyData: the backend's process id and its secret (4 bytes in protocol 3.0,
/// up to 256 from 3.2 on).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub pid: i32,
    pub secret: Bytes,
}

impl CancelKey {
    /// Decodes a whole BackendKeyData frame.
    pub fn from_backend_key_data(frame: &[u8]) -> Option<CancelKey> {
        if frame.len() < 13 || frame[0] != b'K' {
            return None;
        }
        let mut body = &frame[5..];
        let pid = body.get_i32();
        let secret = Bytes::copy_from_slice(body);
        (4..=256)
            .contains(&secret.len())
            .then_some(CancelKey { pid, secret })
    }

    /// The BackendKeyData frame that hands this key to a client.
    pub fn to_backend_key_data(&self) -> Bytes {
        let secret = if self.secret.len() == 4 {
            SecretKey::I32((&self.secret[..]).get_i32())
        } else {
            SecretKey::Bytes(self.secret.clone())
        };
        let msg = BackendKeyData::new(self.pid, secret);
        let mut buf = BytesMut::with_capacity(msg.message_length() + 1);
        msg.encode(&mut buf)
            .expect("a secret of 4 to 256 bytes encodes");
        buf.freeze()
    }

    /// The CancelRequest packet that asks a server to cancel this backend's query.
    pub fn to_cancel_request(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(12 + self.secret.len());
        buf.extend_from_slice(&((12 + self.secret.len()) as u32).to_be_bytes());
        buf.extend_from_slice(&super::startup::CANCEL_REQUEST_CODE.to_be_bytes());
        buf.extend_from_slice(&self.pid.to_be_bytes());
        buf.extend_from_slice(&self.secret);
        buf.freeze()
    }
}

/// The Authentication request code of AuthenticationSASL.
const AUTH_SASL: u32 = 10;

/// The SASL mechanisms of an AuthenticationSASL frame, or `None` for another request, or for a
/// frame that is not whole and well formed (read field by field: pgwire's decoder reads past
/// the end of a short frame and panics).
pub fn sasl_mechanisms(frame: &[u8]) -> Option<Vec<String>> {
    if frame.first() != Some(&b'R') || declared_len(frame)? as usize + 1 != frame.len() {
        return None;
    }
    let mut r = Reader::body(frame);
    if r.u32()? != AUTH_SASL {
        return None;
    }
    let mut mechanisms = Vec::new();
    loop {
        match r.cstr()? {
            "" => break,
            m => mechanisms.push(m.to_string()),
        }
    }
    (r.left() == 0).then_some(mechanisms)
}

/// An AuthenticationSASL frame offering `mechanisms`.
pub fn sasl_offer(mechanisms: Vec<String>) -> Bytes {
    let msg = Authentication::SASL(mechanisms);
    let mut buf = BytesMut::with_capacity(msg.message_length() + 1);
    msg.encode(&mut buf)
        .expect("a list of mechanism names encodes");
    buf.freeze()
}

/// The AuthenticationSASL frame to send a client instead of `frame` when `frame` offers
/// mechanisms with channel binding (`SCRAM-SHA-256-PLUS`): the offer without them. A client's
/// TLS session ends at pgbridge, so it could never complete them with the primary.
pub fn sasl_offer_without_channel_binding(frame: &[u8]) -> Option<Bytes> {
    let mechanisms = sasl_mechanisms(frame)?;
    if !mechanisms.iter().any(|m| m.ends_with("-PLUS")) {
        return None;
    }
    let kept = mechanisms.into_iter().filter(|m| !m.ends_with("-PLUS"));
    Some(sasl_offer(kept.collect()))
}

/// The channel binding flag that opens the client-first message of a SASLInitialResponse
/// (`n`: the client does not support channel binding; `y`: it does, but thinks the server does
/// not; `p`: it requires it), or `None` for another frame.
pub fn sasl_channel_binding_flag(frame: &[u8]) -> Option<u8> {
    if frame.first() != Some(&b'p') {
        return None;
    }
    let mut r = Reader::body(frame);
    r.cstr_bytes()?;
    let len = r.i32()?;
    (len > 0).then(|| r.u8()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_response_has_postgres_fields() {
        let frame = error_response(Severity::Fatal, "08006", "primary gone");
        assert_eq!(frame[0], b'E');
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(len + 1, frame.len());
        let fields = error_fields(&frame);
        assert!(fields.contains(&(b'C', "08006".to_string())));
        assert!(fields.contains(&(b'S', "FATAL".to_string())));
        assert!(fields.contains(&(b'M', "primary gone".to_string())));
        assert_eq!(error_code(&frame), "08006");
        assert_eq!(error_text(&frame), "08006: primary gone");
    }

    #[test]
    fn an_error_response_roundtrips_with_nothing_left_over() {
        let frame = error_response(Severity::Error, "54000", "too big");
        let mut buf = BytesMut::from(&frame[..]);
        let ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
        let decoded = ErrorResponse::decode(&mut buf, &ctx).unwrap().unwrap();
        assert!(buf.is_empty(), "left over: {buf:?}");
        let want = [
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "54000"),
            (b'M', "too big"),
        ];
        let want: Vec<(u8, String)> = want.iter().map(|(k, v)| (*k, v.to_string())).collect();
        assert_eq!(decoded.fields, want);
        // Not an ErrorResponse, cut short, or without its terminator: no fields, and no panic.
        assert_eq!(error_fields(&frame[..frame.len() - 1]), Vec::new());
        let unterminated = crate::protocol::wire::framed(b'E', b"M\0");
        assert_eq!(error_fields(&unterminated), Vec::new());
        assert_eq!(error_code(b"Z\0\0\0\x05I"), "");
        assert_eq!(error_text(b""), ": ");
    }

    #[test]
    fn a_cancel_key_roundtrips_through_backend_key_data() {
        for secret in [vec![1, 2, 3, 4], vec![9; 32]] {
            let key = CancelKey {
                pid: 4242,
                secret: Bytes::from(secret),
            };
            let frame = key.to_backend_key_data();
            assert_eq!(frame[0], b'K');
            let declared = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]);
            assert_eq!(declared as usize, frame.len() - 1);
            assert_eq!(CancelKey::from_backend_key_data(&frame), Some(key.clone()));
            // Cut short, it is no key.
            assert_eq!(CancelKey::from_backend_key_data(&frame[..12]), None);
            let req = key.to_cancel_request();
            assert_eq!(req.len(), 12 + key.secret.len());
            assert_eq!(&req[4..8], &80877102u32.to_be_bytes());
        }
    }

    #[test]
    fn sasl_offers_roundtrip() {
        let offer = sasl_offer(vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]);
        assert_eq!(
            sasl_mechanisms(&offer),
            Some(vec![
                "SCRAM-SHA-256-PLUS".to_string(),
                "SCRAM-SHA-256".to_string()
            ])
        );
        let mut md5 = vec![b'R', 0, 0, 0, 12, 0, 0, 0, 5];
        md5.extend_from_slice(b"salt");
        assert_eq!(sasl_mechanisms(&md5), None);
    }

    #[test]
    fn a_short_or_lying_sasl_offer_is_no_offer() {
        let offer = sasl_offer(vec!["SCRAM-SHA-256".into()]);
        for cut in 0..offer.len() {
            assert_eq!(sasl_mechanisms(&offer[..cut]), None, "cut at {cut}");
        }
        // The length says more than there is; the list is not terminated; bytes follow it.
        let mut lying = offer.to_vec();
        lying[4] += 1;
        assert_eq!(sasl_mechanisms(&lying), None);
        let unterminated = crate::protocol::wire::framed(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0");
        assert_eq!(sasl_mechanisms(&unterminated), None);
        let trailing = crate::protocol::wire::framed(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0x");
        assert_eq!(sasl_mechanisms(&trailing), None);
        assert_eq!(sasl_offer_without_channel_binding(&offer[..7]), None);
    }

    #[test]
    fn channel_binding_is_taken_out_of_an_offer() {
        let both = sasl_offer(vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]);
        let rewritten = sasl_offer_without_channel_binding(&both).expect("PLUS was offered");
        assert_eq!(rewritten, sasl_offer(vec!["SCRAM-SHA-256".into()]));
        assert_eq!(
            &rewritten[..],
            b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0",
            "byte for byte what the primary sends without TLS"
        );
        // Without PLUS the primary's own frame goes on.
        assert_eq!(sasl_offer_without_channel_binding(&rewritten), None);
        let md5 = [b'R', 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4];
        assert_eq!(sasl_offer_without_channel_binding(&md5), None);
    }

    #[test]
    fn the_channel_binding_flag_of_a_sasl_initial_response() {
        let response = |flag: &[u8]| {
            let mut body = b"SCRAM-SHA-256\0".to_vec();
            let message = [flag, b",,n=,r=abc"].concat();
            body.extend_from_slice(&(message.len() as i32).to_be_bytes());
            body.extend_from_slice(&message);
            crate::protocol::wire::framed(b'p', &body)
        };
        assert_eq!(sasl_channel_binding_flag(&response(b"y")), Some(b'y'));
        assert_eq!(sasl_channel_binding_flag(&response(b"n")), Some(b'n'));
        let plus = response(b"p=tls-server-end-point");
        assert_eq!(sasl_channel_binding_flag(&plus), Some(b'p'));
        // No data (-1), cut short, another message: no flag.
        let empty = crate::protocol::wire::framed(b'p', b"SCRAM-SHA-256\0\xff\xff\xff\xff");
        assert_eq!(sasl_channel_binding_flag(&empty), None);
        assert_eq!(sasl_channel_binding_flag(&plus[..20]), None);
        assert_eq!(sasl_channel_binding_flag(b"Q\0\0\0\x05"), None);
    }

    #[test]
    fn ready_status_reads_the_transaction_state() {
        assert_eq!(ready_status(&[b'Z', 0, 0, 0, 5, b'T']), b'T');
    }
}
