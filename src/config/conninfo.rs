//! The TLS keys taken out of a connection string, in either of libpq's forms
//! (`postgres://h/db?sslmode=verify-full&sslrootcert=/x/ca.pem` or
//! `host=h sslmode='verify-full'`): pgbridge reads `sslmode`, `sslrootcert`, `sslcert`, `sslkey`
//! and `sslnegotiation` itself (tokio-postgres knows three of libpq's six sslmodes and none of
//! the files), and the rest of the string goes to tokio-postgres as it was written.

/// The keys pgbridge reads itself.
const TLS_KEYS: [&str; 5] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslnegotiation",
];

/// A key pgbridge read, with its value.
pub(super) type TlsKey = (&'static str, String);

/// The string without its TLS keys, and those keys with their values, in the order written.
pub(super) fn split_tls(raw: &str) -> Result<(String, Vec<TlsKey>), String> {
    let url = ["postgres://", "postgresql://"]
        .iter()
        .any(|prefix| raw.starts_with(prefix));
    if url {
        split_url(raw)
    } else {
        split_key_values(raw)
    }
}

fn tls_key(key: &str) -> Option<&'static str> {
    TLS_KEYS.iter().find(|k| **k == key).copied()
}

/// URL form: the TLS parameters of the query string (percent-decoded) out, the others kept.
fn split_url(raw: &str) -> Result<(String, Vec<TlsKey>), String> {
    let Some((base, query)) = raw.split_once('?') else {
        return Ok((raw.to_string(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for param in query.split('&') {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match tls_key(&percent_decode(key)?) {
            Some(key) => taken.push((key, percent_decode(value)?)),
            None => kept.push(param),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, taken))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return Err(format!("invalid percent-encoding in {s:?}"));
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// `key=value` form: the TLS parameters' text cut out (libpq's quoting and backslash escapes
/// understood), everything else left as written.
fn split_key_values(raw: &str) -> Result<(String, Vec<TlsKey>), String> {
    let mut rest = String::with_capacity(raw.len());
    let mut taken = Vec::new();
    let mut pos = 0;
    while let Some(param) = next_param(raw, pos)? {
        match tls_key(param.key) {
            Some(key) => {
                rest.push_str(&raw[pos..param.start]);
                taken.push((key, param.value));
            }
            None => rest.push_str(&raw[pos..param.end]),
        }
        pos = param.end;
    }
    rest.push_str(&raw[pos..]);
    Ok((rest, taken))
}

/// One `key = value` of the key=value form, and where its text is.
struct Param<'a> {
    key: &'a str,
    value: String,
    start: usize,
    end: usize,
}

/// The parameter at or after `pos`; `None` at the end of the string.
fn next_param(raw: &str, pos: usize) -> Result<Option<Param<'_>>, String> {
    let skip_ws = |from: usize| {
        raw[from..]
            .find(|c: char| !c.is_whitespace())
            .map_or(raw.len(), |i| from + i)
    };
    let start = skip_ws(pos);
    if start == raw.len() {
        return Ok(None);
    }
    let key_end = raw[start..]
        .find(|c: char| c.is_whitespace() || c == '=')
        .map_or(raw.len(), |i| start + i);
    let key = &raw[start..key_end];
    let eq = skip_ws(key_end);
    if !raw[eq..].starts_with('=') {
        return Err(format!("missing \"=\" after {key:?}"));
    }
    let (value, end) = value_at(raw, skip_ws(eq + 1))?;
    Ok(Some(Param {
        key,
        value,
        start,
        end,
    }))
}

/// A value at `pos`, quoted or not, with its escapes undone; and where it ends.
fn value_at(raw: &str, pos: usize) -> Result<(String, usize), String> {
    let quoted = raw[pos..].starts_with('\'');
    let mut value = String::new();
    let mut chars = raw[pos..].char_indices().skip(usize::from(quoted));
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' if quoted => return Ok((value, pos + i + 1)),
            c if c.is_whitespace() && !quoted => return Ok((value, pos + i)),
            '\\' => value.extend(chars.next().map(|(_, c)| c)),
            c => value.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted connection parameter value".into());
    }
    Ok((value, raw.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(pairs: &[(&'static str, &str)]) -> Vec<TlsKey> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn url_parameters_are_taken_out_and_decoded() {
        let (rest, keys) = split_tls(
            "postgres://u:p@h:5432/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fx%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(
            keys,
            taken(&[("sslmode", "verify-full"), ("sslrootcert", "/x/ca.pem")])
        );
        let (rest, keys) = split_tls("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), keys),
            ("postgresql://h/db", taken(&[("sslmode", "require")]))
        );
        let (rest, keys) = split_tls("postgres://h/db").unwrap();
        assert_eq!((rest.as_str(), keys), ("postgres://h/db", vec![]));
        assert!(split_tls("postgres://h/db?sslcert=%zz").is_err());
    }

    #[test]
    fn key_value_parameters_are_cut_out_with_their_quotes() {
        let (rest, keys) = split_tls(
            "host=h sslmode = verify-ca  dbname=db sslkey='/my keys/k.pem' sslcert=/a\\ b user=u",
        )
        .unwrap();
        assert_eq!(rest, "host=h   dbname=db   user=u");
        assert_eq!(
            keys,
            taken(&[
                ("sslmode", "verify-ca"),
                ("sslkey", "/my keys/k.pem"),
                ("sslcert", "/a b")
            ])
        );
        let (rest, keys) = split_tls(r"password='it\'s' sslmode=disable").unwrap();
        assert_eq!(rest, r"password='it\'s' ");
        assert_eq!(keys, taken(&[("sslmode", "disable")]));
        assert!(split_tls("host=h sslkey='/x").is_err());
        assert!(split_tls("host").is_err());
        let (rest, keys) = split_tls("  ").unwrap();
        assert_eq!((rest.as_str(), keys), ("  ", vec![]));
    }
}
