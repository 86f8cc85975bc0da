//! SCRAM channel binding data of type `tls-server-end-point` (RFC 5929): the hash of the server's
//! certificate, with the hash function of the certificate's own signature (SHA-256 for MD5 and
//! SHA-1), as PostgreSQL computes it. pgbridge's own connections then log in with
//! SCRAM-SHA-256-PLUS wherever the server offers it.

use ring::digest;

/// The binding data for a DER certificate; `None` when its signature algorithm names no single
/// hash pgbridge knows (Ed25519, RSA-PSS): the login then goes without channel binding.
pub fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    let algorithm = hash_of(signature_algorithm(cert)?)?;
    Some(digest::digest(algorithm, cert).as_ref().to_vec())
}

/// The hash function of a signature algorithm OID (its DER content bytes).
fn hash_of(oid: &[u8]) -> Option<&'static digest::Algorithm> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    if oid == ECDSA_SHA1 {
        return Some(&digest::SHA256);
    }
    let (family, last) = oid.split_last().map(|(l, f)| (f, *l))?;
    match (family, last) {
        // md5WithRSAEncryption, sha1WithRSAEncryption, sha256WithRSAEncryption
        (RSA, 4 | 5 | 11) | (ECDSA_SHA2, 2) => Some(&digest::SHA256),
        (RSA, 12) | (ECDSA_SHA2, 3) => Some(&digest::SHA384),
        (RSA, 13) | (ECDSA_SHA2, 4) => Some(&digest::SHA512),
        _ => None,
    }
}

/// The OID of `Certificate.signatureAlgorithm`: SEQUENCE { tbsCertificate, signatureAlgorithm
/// SEQUENCE { algorithm OID, ... }, signatureValue }.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = tlv(cert, 0x30)?;
    let (_tbs, rest) = tlv(certificate, 0x30)?;
    let (algorithm, _) = tlv(rest, 0x30)?;
    let (oid, _) = tlv(algorithm, 0x06)?;
    Some(oid)
}

/// One DER element of type `tag` at the start of `input`: its contents and what follows it.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ecdsa_sha256_certificate_binds_with_its_sha256() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = cert.cert.der();
        let binding = tls_server_end_point(der).expect("ECDSA with SHA-256 is known");
        assert_eq!(binding, digest::digest(&digest::SHA256, der).as_ref());
    }

    #[test]
    fn hashes_follow_the_signature_algorithm() {
        let rsa = |last: u8| {
            [
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01][..],
                &[last],
            ]
            .concat()
        };
        assert_eq!(
            hash_of(&rsa(5)),
            Some(&digest::SHA256),
            "SHA-1 becomes SHA-256"
        );
        assert_eq!(hash_of(&rsa(12)), Some(&digest::SHA384));
        assert_eq!(hash_of(&rsa(13)), Some(&digest::SHA512));
        assert_eq!(hash_of(&rsa(10)), None, "RSA-PSS names its hash elsewhere");
        assert_eq!(
            hash_of(&[0x2b, 0x65, 0x70]),
            None,
            "Ed25519 has no single hash"
        );
    }

    #[test]
    fn garbage_is_no_certificate() {
        assert_eq!(tls_server_end_point(b""), None);
        assert_eq!(tls_server_end_point(&[0x30, 0x82, 0xff]), None);
        assert_eq!(tls_server_end_point(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
    }
}
