//! The client side of a password login (pgbridge's own, to the secondary), without I/O.
//!
//! [`ClientAuth::step`] takes each Authentication request the server sends and says what to
//! answer: the password in clear or md5-hashed (postgres-protocol's `md5_hash`), or the
//! SCRAM-SHA-256 exchange (postgres-protocol's `ScramSha256`, without channel binding: pgbridge
//! does not offer SCRAM-SHA-256-PLUS). The connection sends what it is told and reads on.

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};

use super::wire::{framed, Reader};

/// The Authentication request codes (the `R` frame's first field).
mod code {
    pub const OK: u32 = 0;
    pub const CLEARTEXT_PASSWORD: u32 = 3;
    pub const MD5_PASSWORD: u32 = 5;
    pub const SASL: u32 = 10;
    pub const SASL_CONTINUE: u32 = 11;
    pub const SASL_FINAL: u32 = 12;
}

/// Why a login cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The server's request is not what the protocol says.
    #[error("{0}")]
    Malformed(&'static str),
    #[error("no supported SASL mechanism offered")]
    NoMechanism,
    /// The SCRAM exchange failed: a bad server message, or a server that does not know the
    /// password (its signature is wrong).
    #[error("{0}")]
    Scram(#[from] std::io::Error),
    #[error("unsupported authentication request {0}")]
    Unsupported(u32),
}

/// What to do after one Authentication request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this frame (PasswordMessage, SASLInitialResponse or SASLResponse), then read on.
    Send(Bytes),
    /// Nothing to send: the server proved it knows the password; AuthenticationOk follows.
    Verified,
    /// AuthenticationOk: logged in. ParameterStatus, BackendKeyData and ReadyForQuery follow.
    Done,
}

/// One login's state: who, with what password, and the SCRAM exchange once begun.
pub struct ClientAuth {
    user: String,
    password: Vec<u8>,
    scram: Option<ScramSha256>,
}

impl ClientAuth {
    pub fn new(user: &str, password: &[u8]) -> ClientAuth {
        ClientAuth {
            user: user.to_string(),
            password: password.to_vec(),
            scram: None,
        }
    }

    /// The answer to `request`, a whole Authentication (`R`) frame.
    pub fn step(&mut self, request: &[u8]) -> Result<Step, AuthError> {
        let mut r = Reader::body(request);
        let code = r.u32().ok_or(AuthError::Malformed("short frame"))?;
        let data = r.rest();
        match code {
            code::OK => Ok(Step::Done),
            code::CLEARTEXT_PASSWORD => Ok(Step::Send(password_message(&self.password))),
            code::MD5_PASSWORD => self.md5(data),
            code::SASL => self.sasl_start(data),
            code::SASL_CONTINUE => self.sasl_continue(data),
            code::SASL_FINAL => self.sasl_final(data),
            other => Err(AuthError::Unsupported(other)),
        }
    }

    fn md5(&self, salt: &[u8]) -> Result<Step, AuthError> {
        let salt: [u8; 4] = salt
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or(AuthError::Malformed("short md5 salt"))?;
        let hash = md5_hash(self.user.as_bytes(), &self.password, salt);
        Ok(Step::Send(password_message(hash.as_bytes())))
    }

    /// AuthenticationSASL: the mechanisms offered, each NUL-terminated.
    fn sasl_start(&mut self, mechanisms: &[u8]) -> Result<Step, AuthError> {
        let offered = mechanisms
            .split(|&b| b == 0)
            .any(|m| m == SCRAM_SHA_256.as_bytes());
        if !offered {
            return Err(AuthError::NoMechanism);
        }
        let scram = ScramSha256::new(&self.password, ChannelBinding::unsupported());
        let reply = sasl_initial_response(SCRAM_SHA_256, scram.message());
        self.scram = Some(scram);
        Ok(Step::Send(reply))
    }

    /// AuthenticationSASLContinue: the server-first message.
    fn sasl_continue(&mut self, server_first: &[u8]) -> Result<Step, AuthError> {
        let scram = self
            .scram
            .as_mut()
            .ok_or(AuthError::Malformed("SASLContinue without SASL"))?;
        scram.update(server_first)?;
        Ok(Step::Send(framed(b'p', scram.message())))
    }

    /// AuthenticationSASLFinal: the server-final message, with the server's signature.
    fn sasl_final(&mut self, server_final: &[u8]) -> Result<Step, AuthError> {
        let mut scram = self
            .scram
            .take()
            .ok_or(AuthError::Malformed("SASLFinal without SASL"))?;
        scram.finish(server_final)?;
        Ok(Step::Verified)
    }
}

/// A PasswordMessage: the password in clear, or its md5 hash.
fn password_message(password: &[u8]) -> Bytes {
    let mut body = password.to_vec();
    body.push(0);
    framed(b'p', &body)
}

/// A SASLInitialResponse choosing `mechanism`, with the client-first message.
fn sasl_initial_response(mechanism: &str, message: &[u8]) -> Bytes {
    let mut body = BytesMut::new();
    body.extend_from_slice(mechanism.as_bytes());
    body.put_u8(0);
    body.put_u32(message.len() as u32);
    body.extend_from_slice(message);
    framed(b'p', &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::tls13::OkmBlock;

    /// An Authentication request with `code` and `data`.
    fn request(code: u32, data: &[u8]) -> Bytes {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(data);
        framed(b'R', &body)
    }

    /// The body of a PasswordMessage, SASLInitialResponse or SASLResponse.
    fn sent(step: Step) -> Vec<u8> {
        let Step::Send(frame) = step else {
            panic!("nothing to send: {step:?}")
        };
        assert_eq!(frame[0], b'p');
        let mut r = Reader::body(&frame);
        r.rest().to_vec()
    }

    #[test]
    fn a_password_goes_in_clear_or_md5_hashed() {
        let mut auth = ClientAuth::new("md5_user", b"password");
        assert_eq!(sent(auth.step(&request(3, b"")).unwrap()), b"password\0");
        // postgres-protocol's own vector.
        let reply = sent(auth.step(&request(5, &[0x2a, 0x3d, 0x8f, 0xe0])).unwrap());
        assert_eq!(reply, b"md562af4dd09bbb41884907a838a3233294\0");
        assert_eq!(auth.step(&request(0, b"")).unwrap(), Step::Done);
        let short = auth.step(&request(5, b"ab")).unwrap_err();
        assert_eq!(short.to_string(), "short md5 salt");
        let short = auth.step(&[b'R', 0, 0, 0, 6, 0, 0]).unwrap_err();
        assert!(matches!(short, AuthError::Malformed("short frame")));
    }

    #[test]
    fn an_unsupported_method_or_mechanism_fails_the_login() {
        let mut auth = ClientAuth::new("u", b"p");
        // AuthenticationGSS.
        let e = auth.step(&request(7, b"")).unwrap_err();
        assert_eq!(e.to_string(), "unsupported authentication request 7");
        let e = auth
            .step(&request(10, b"SCRAM-SHA-256-PLUS\0\0"))
            .unwrap_err();
        assert_eq!(e.to_string(), "no supported SASL mechanism offered");
        let e = auth.step(&request(11, b"r=x,s=eA==,i=1")).unwrap_err();
        assert_eq!(e.to_string(), "SASLContinue without SASL");
        let e = auth.step(&request(12, b"v=x")).unwrap_err();
        assert_eq!(e.to_string(), "SASLFinal without SASL");
    }

    /// HMAC-SHA-256 and SHA-256 for the server's side, lent by rustls (a dependency already).
    fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
        let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13();
        let tag = suite
            .unwrap()
            .hkdf_provider
            .hmac_sign(&OkmBlock::new(key), message);
        tag.as_ref().to_vec()
    }

    fn sha256(data: &[u8]) -> Vec<u8> {
        let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13();
        suite
            .unwrap()
            .common
            .hash_provider
            .hash(data)
            .as_ref()
            .to_vec()
    }

    /// PBKDF2 with HMAC-SHA-256, one block: SCRAM's `Hi`.
    fn hi(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut u = hmac(password, &[salt, &[0, 0, 0, 1]].concat());
        let mut out = u.clone();
        for _ in 1..iterations {
            u = hmac(password, &u);
            out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
        }
        out
    }

    fn base64(bytes: &[u8]) -> String {
        const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |n, &b| n << 8 | b as u32) << (8 * (3 - chunk.len()));
            for i in 0..4 {
                let c = if i <= chunk.len() {
                    ABC[(n >> (18 - 6 * i) & 63) as usize]
                } else {
                    b'='
                };
                out.push(c as char);
            }
        }
        out
    }

    /// A server's side of SCRAM-SHA-256 (RFC 5802) for `password`: the server-first message for
    /// a client-first, then, given the client-final, whether its proof holds and the
    /// server-final message.
    struct Server {
        salted: Vec<u8>,
        first_bare: String,
        server_first: String,
    }

    impl Server {
        fn first(password: &str, client_first: &str) -> Server {
            let bare = client_first
                .strip_prefix("n,,")
                .expect("no channel binding");
            let nonce = bare.split_once("r=").unwrap().1;
            let salt = b"pgbridge salt";
            Server {
                salted: hi(password.as_bytes(), salt, 4096),
                first_bare: bare.to_string(),
                server_first: format!("r={nonce}srv0123,s={},i=4096", base64(salt)),
            }
        }

        fn last(&self, client_final: &str) -> (bool, String) {
            let (without_proof, proof) = client_final.split_once(",p=").unwrap();
            let auth_message = format!("{},{},{without_proof}", self.first_bare, self.server_first);
            let client_key = hmac(&self.salted, b"Client Key");
            let signature = hmac(&sha256(&client_key), auth_message.as_bytes());
            let want: Vec<u8> = client_key
                .iter()
                .zip(&signature)
                .map(|(k, s)| k ^ s)
                .collect();
            let server_key = hmac(&self.salted, b"Server Key");
            let verifier = hmac(&server_key, auth_message.as_bytes());
            (proof == base64(&want), format!("v={}", base64(&verifier)))
        }
    }

    /// The SASLInitialResponse's mechanism and client-first message.
    fn initial_response(body: &[u8]) -> (String, String) {
        let frame = framed(b'p', body);
        let mut r = Reader::body(&frame);
        let mechanism = r.cstr().unwrap().to_string();
        let len = r.u32().unwrap() as usize;
        let message = String::from_utf8(r.bytes(len).unwrap().to_vec()).unwrap();
        assert_eq!(r.left(), 0);
        (mechanism, message)
    }

    #[test]
    fn the_base64_of_the_test_server_is_right() {
        assert_eq!(base64(b"pgbridge salt"), "cGdicmlkZ2Ugc2FsdA==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn scram_sha_256_proves_the_password_and_checks_the_servers_signature() {
        for (server_password, accepted) in [("pencil", true), ("not the password", false)] {
            let mut auth = ClientAuth::new("u", b"pencil");
            let offer = request(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
            let (mechanism, client_first) = initial_response(&sent(auth.step(&offer).unwrap()));
            assert_eq!(mechanism, "SCRAM-SHA-256");
            let server = Server::first(server_password, &client_first);
            let next = auth.step(&request(11, server.server_first.as_bytes()));
            let client_final = String::from_utf8(sent(next.unwrap())).unwrap();
            let (proof_holds, server_final) = server.last(&client_final);
            assert_eq!(proof_holds, accepted, "{client_final}");
            let last = auth.step(&request(12, server_final.as_bytes()));
            if accepted {
                assert_eq!(last.unwrap(), Step::Verified);
                assert_eq!(auth.step(&request(0, b"")).unwrap(), Step::Done);
            } else {
                // A server that does not know the password cannot sign: the login stops.
                let e = last.unwrap_err();
                assert!(matches!(e, AuthError::Scram(_)), "{e}");
            }
        }
    }
}
