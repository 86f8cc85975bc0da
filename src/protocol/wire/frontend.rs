//! (F) What a client sends: the decoders of Query, Parse, Bind, Execute, Describe and Close, the
//! editors of Parse and Bind (the capture splices RETURNING into a Parse and widens a Bind's
//! result formats; the secondary's reads point a Bind at their own statement), and the encoders
//! of the messages pgbridge sends on its own (to the primary or the secondary).

use bytes::{BufMut, Bytes, BytesMut};

use super::{framed, put_cstr, Reader};

/// The query text of a Query frame.
pub fn query_text(frame: &[u8]) -> Option<&str> {
    Reader::body(frame).cstr()
}

/// The statement name and query text of a Parse frame, and the offset of the parameter types.
pub fn parse_message(frame: &[u8]) -> Option<(&str, &str, usize)> {
    let mut r = Reader::body(frame);
    let name = r.cstr()?;
    let query = r.cstr()?;
    Some((name, query, r.pos()))
}

/// The parameter type OIDs a Parse frame declares (0: unspecified); as many as are there.
pub fn parse_param_types(frame: &[u8]) -> Vec<u32> {
    let mut r = Reader::body(frame);
    if r.cstr().and(r.cstr()).is_none() {
        return Vec::new();
    }
    read_oids(&mut r)
}

/// A count, then that many type OIDs; as many as are there.
pub(super) fn read_oids(r: &mut Reader) -> Vec<u32> {
    let n = r.u16().unwrap_or(0) as usize;
    (0..n).map_while(|_| r.u32()).collect()
}

/// A bound parameter: its format code and value (`None` for NULL).
pub type Param<'a> = (u16, Option<&'a [u8]>);

/// Portal and statement names of a Bind frame.
pub fn bind_names(frame: &[u8]) -> Option<(&str, &str)> {
    let mut r = Reader::body(frame);
    Some((r.cstr()?, r.cstr()?))
}

/// The parameters of a Bind frame.
pub fn bind_params(frame: &[u8]) -> Option<Vec<Param<'_>>> {
    let mut r = Reader::body(frame);
    r.cstr()?;
    r.cstr()?;
    read_params(&mut r)
}

/// A Bind's parameter format codes and its parameters, each with its format (none: all text;
/// one: all alike; else one per parameter).
fn read_params<'a>(r: &mut Reader<'a>) -> Option<Vec<Param<'a>>> {
    let formats = read_formats(r)?;
    let n = r.u16()? as usize;
    let mut params = Vec::with_capacity(n.min(r.left() / 4));
    for i in 0..n {
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => *formats.get(i)?,
        };
        let len = r.i32()?;
        let value = if len < 0 {
            None
        } else {
            Some(r.bytes(len as usize)?)
        };
        params.push((format, value));
    }
    Some(params)
}

/// A count, then that many format codes.
fn read_formats(r: &mut Reader) -> Option<Vec<u16>> {
    let n = r.u16()? as usize;
    (0..n).map(|_| r.u16()).collect()
}

/// The result-column format codes of a Bind frame (none: all text; one: all alike).
pub fn bind_result_formats(frame: &[u8]) -> Option<Vec<u16>> {
    read_formats(&mut bind_results(frame)?)
}

/// A reader of a Bind frame at its result-format count, past its names and parameters.
fn bind_results(frame: &[u8]) -> Option<Reader<'_>> {
    let mut r = Reader::body(frame);
    r.cstr()?;
    r.cstr()?;
    let nformats = r.u16()? as usize;
    r.bytes(2 * nformats)?;
    let nparams = r.u16()?;
    for _ in 0..nparams {
        let len = r.i32()?;
        r.bytes(len.max(0) as usize)?;
    }
    Some(r)
}

/// The Bind frame with `extra` more result columns in text format, when it lists a format per
/// column (one or no format code applies to every column already).
pub fn extend_bind_formats(frame: &[u8], extra: usize) -> Option<Option<Bytes>> {
    let mut r = bind_results(frame)?;
    let at = r.pos();
    let nresults = r.u16()? as usize;
    if nresults <= 1 {
        return Some(None);
    }
    let codes = r.bytes(2 * nresults)?;
    let mut body = BytesMut::with_capacity(frame.len() + 2 * extra);
    body.extend_from_slice(&frame[5..at]);
    body.put_u16((nresults + extra) as u16);
    body.extend_from_slice(codes);
    for _ in 0..extra {
        body.put_u16(0);
    }
    body.extend_from_slice(r.rest());
    Some(Some(framed(b'B', &body)))
}

/// The Parse frame with its query text replaced.
pub fn replace_parse_query(frame: &[u8], query: &str) -> Option<Bytes> {
    let (name, _, types_at) = parse_message(frame)?;
    let mut body = BytesMut::new();
    put_cstr(&mut body, name);
    put_cstr(&mut body, query);
    body.extend_from_slice(&frame[types_at..]);
    Some(framed(b'P', &body))
}

/// The portal an Execute frame runs.
pub fn execute_portal(frame: &[u8]) -> Option<&str> {
    Reader::body(frame).cstr()
}

/// The row limit of an Execute frame (0: all rows).
pub fn execute_max_rows(frame: &[u8]) -> Option<u32> {
    let mut r = Reader::body(frame);
    r.cstr()?;
    r.u32()
}

/// Kind (`S` or `P`) and name of a Describe or Close frame.
pub fn target(frame: &[u8]) -> Option<(u8, &str)> {
    let mut r = Reader::body(frame);
    Some((r.u8()?, r.cstr()?))
}

pub fn query(sql: &str) -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, sql);
    framed(b'Q', &body)
}

/// A Parse of `sql` as statement `name`, its parameter types left to the server.
pub fn parse(name: &str, sql: &str) -> Bytes {
    parse_typed(name, sql, &[])
}

/// A Parse of `sql` as statement `name`, with parameter types `types` (0: left to the server).
pub fn parse_typed(name: &str, sql: &str, types: &[u32]) -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, name);
    put_cstr(&mut body, sql);
    body.put_u16(types.len() as u16);
    for t in types {
        body.put_u32(*t);
    }
    framed(b'P', &body)
}

/// The client's Bind `frame`, to the unnamed portal of statement `stmt`; the rest (parameters,
/// their formats, result formats) as the client sent it.
pub fn bind_to_statement(frame: &[u8], stmt: &str) -> Option<Bytes> {
    let mut r = Reader::body(frame);
    r.cstr()?;
    r.cstr()?;
    let mut body = BytesMut::with_capacity(frame.len());
    put_cstr(&mut body, "");
    put_cstr(&mut body, stmt);
    body.extend_from_slice(r.rest());
    Some(framed(b'B', &body))
}

/// Bind without parameters, text results.
pub fn bind(portal: &str, stmt: &str) -> Bytes {
    bind_text(portal, stmt, &[])
}

/// Bind of `values` as text parameters (none NULL), text results.
pub fn bind_text(portal: &str, stmt: &str, values: &[String]) -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, portal);
    put_cstr(&mut body, stmt);
    body.put_u16(0);
    body.put_u16(values.len() as u16);
    for v in values {
        body.put_u32(v.len() as u32);
        body.extend_from_slice(v.as_bytes());
    }
    body.put_u16(0);
    framed(b'B', &body)
}

pub fn execute(portal: &str) -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, portal);
    body.put_u32(0);
    framed(b'E', &body)
}

/// Describe of a prepared statement.
pub fn describe_statement(name: &str) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u8(b'S');
    put_cstr(&mut body, name);
    framed(b'D', &body)
}

pub fn describe_portal(portal: &str) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u8(b'P');
    put_cstr(&mut body, portal);
    framed(b'D', &body)
}

/// Close of a statement (`S`) or portal (`P`).
pub fn close(kind: u8, name: &str) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u8(kind);
    put_cstr(&mut body, name);
    framed(b'C', &body)
}

pub fn flush() -> Bytes {
    framed(b'H', &[])
}

pub fn sync() -> Bytes {
    framed(b'S', &[])
}

/// CopyDone: the end of the data of a COPY FROM STDIN.
pub fn copy_done() -> Bytes {
    framed(b'c', &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Bind as a client writes it: names, parameter formats, parameters, result formats.
    fn client_bind(
        names: (&str, &str),
        formats: &[u16],
        params: &[Option<&[u8]>],
        results: &[u16],
    ) -> Bytes {
        let mut body = BytesMut::new();
        put_cstr(&mut body, names.0);
        put_cstr(&mut body, names.1);
        body.put_u16(formats.len() as u16);
        formats.iter().for_each(|f| body.put_u16(*f));
        body.put_u16(params.len() as u16);
        for p in params {
            match p {
                Some(v) => {
                    body.put_u32(v.len() as u32);
                    body.extend_from_slice(v);
                }
                None => body.put_i32(-1),
            }
        }
        body.put_u16(results.len() as u16);
        results.iter().for_each(|f| body.put_u16(*f));
        framed(b'B', &body)
    }

    /// A Bind's names, parameters and result formats.
    type BindParts<'a> = ((&'a str, &'a str), Vec<Param<'a>>, Vec<u16>);

    /// The whole of a Bind, read in order.
    fn read_bind<'a>(r: &mut Reader<'a>) -> Option<BindParts<'a>> {
        let names = (r.cstr()?, r.cstr()?);
        let params = read_params(r)?;
        Some((names, params, read_formats(r)?))
    }

    #[test]
    fn the_messages_pgbridge_sends_roundtrip() {
        roundtrip!(query("SELECT 1"), b'Q', |r| r.cstr(), "SELECT 1");
        assert_eq!(query_text(&query("SELECT 1")), Some("SELECT 1"));
        let p = parse("s1", "SELECT $1");
        roundtrip!(
            p,
            b'P',
            |r| Some((r.cstr()?, r.cstr()?, read_oids(r))),
            ("s1", "SELECT $1", vec![])
        );
        assert_eq!(parse_message(&p), Some(("s1", "SELECT $1", p.len() - 2)));
        assert_eq!(parse_param_types(&p), Vec::<u32>::new());
        let b = bind("p", "s1");
        roundtrip!(b, b'B', |r| read_bind(r), (("p", "s1"), vec![], vec![]));
        assert_eq!(bind_names(&b), Some(("p", "s1")));
        roundtrip!(
            execute("p"),
            b'E',
            |r| Some((r.cstr()?, r.u32()?)),
            ("p", 0)
        );
        assert_eq!(execute_portal(&execute("p")), Some("p"));
        assert_eq!(execute_max_rows(&execute("p")), Some(0));
        roundtrip!(
            describe_statement("s1"),
            b'D',
            |r| Some((r.u8()?, r.cstr()?)),
            (b'S', "s1")
        );
        roundtrip!(
            describe_portal(""),
            b'D',
            |r| Some((r.u8()?, r.cstr()?)),
            (b'P', "")
        );
        roundtrip!(
            close(b'S', "s1"),
            b'C',
            |r| Some((r.u8()?, r.cstr()?)),
            (b'S', "s1")
        );
        assert_eq!(target(&close(b'P', "p")), Some((b'P', "p")));
        roundtrip!(flush(), b'H', |r| Some(r.rest()), &b""[..]);
        roundtrip!(sync(), b'S', |r| Some(r.rest()), &b""[..]);
    }

    #[test]
    fn a_clients_bind_decodes_whole() {
        let b = client_bind(("p", "s1"), &[1], &[Some(b"42"), None], &[1, 0]);
        let params: Vec<Param> = vec![(1, Some(b"42")), (1, None)];
        roundtrip!(
            b,
            b'B',
            |r| read_bind(r),
            (("p", "s1"), params.clone(), vec![1, 0])
        );
        assert_eq!(bind_params(&b), Some(params));
        assert_eq!(bind_result_formats(&b), Some(vec![1, 0]));
        // A format per parameter, and too few of them.
        let b = client_bind(("", "s"), &[0, 1], &[Some(b"a"), Some(b"b")], &[]);
        assert_eq!(
            bind_params(&b),
            Some(vec![(0, Some(&b"a"[..])), (1, Some(&b"b"[..]))])
        );
        let b = client_bind(("", "s"), &[0, 1], &[Some(b"a"), Some(b"b"), None], &[]);
        assert_eq!(bind_params(&b), None);
    }

    #[test]
    fn a_typed_parse_roundtrips() {
        let p = parse_typed("pgbridge_s1", "SELECT $1, $2", &[23, 0]);
        let want = ("pgbridge_s1", "SELECT $1, $2", vec![23, 0]);
        roundtrip!(
            p,
            b'P',
            |r| Some((r.cstr()?, r.cstr()?, read_oids(r))),
            want
        );
        assert_eq!(parse_param_types(&p), vec![23, 0]);
        assert_eq!(parse_typed("s", "SELECT 1", &[]), parse("s", "SELECT 1"));
    }

    #[test]
    fn a_bind_is_pointed_at_another_statement() {
        let bind = client_bind(
            ("client_portal", "client_stmt"),
            &[1],
            &[Some(b"\0\x07")],
            &[1],
        );
        let out = bind_to_statement(&bind, "pgbridge_s1").unwrap();
        let want = (
            ("", "pgbridge_s1"),
            vec![(1, Some(&b"\0\x07"[..]))],
            vec![1],
        );
        roundtrip!(out, b'B', |r| read_bind(r), want);
        assert_eq!(bind_to_statement(&bind[..12], "s"), None);
    }

    #[test]
    fn an_execute_names_its_row_limit() {
        let mut body = BytesMut::new();
        body.extend_from_slice(b"\0");
        body.extend_from_slice(&10u32.to_be_bytes());
        assert_eq!(execute_max_rows(&framed(b'E', &body)), Some(10));
        assert_eq!(execute_max_rows(&execute("")), Some(0));
    }

    #[test]
    fn parse_and_bind_are_edited_in_place() {
        let p = parse("s1", "INSERT INTO t VALUES ($1)");
        let edited = replace_parse_query(&p, "INSERT INTO t VALUES ($1) RETURNING id").unwrap();
        assert_eq!(
            parse_message(&edited).unwrap().1,
            "INSERT INTO t VALUES ($1) RETURNING id"
        );
        // A Bind with one parameter and a format per result column (2 columns).
        let b = client_bind(("p", "s1"), &[1], &[Some(b"42")], &[1, 0]);
        let wider = extend_bind_formats(&b, 3).unwrap().unwrap();
        assert_eq!(
            &wider[wider.len() - 12..],
            &[0, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        roundtrip!(
            wider,
            b'B',
            |r| read_bind(r),
            (
                ("p", "s1"),
                vec![(1, Some(&b"42"[..]))],
                vec![1, 0, 0, 0, 0]
            )
        );
        assert_eq!(extend_bind_formats(&bind("p", "s"), 3).unwrap(), None);
    }

    #[test]
    fn truncated_or_lying_frames_are_refused_without_panicking() {
        let frames = [
            query("SELECT 1"),
            parse("s1", "SELECT $1"),
            client_bind(("p", "s1"), &[1], &[Some(b"42"), None], &[1, 0]),
            execute("p"),
            describe_statement("s1"),
            close(b'P', "p"),
        ];
        for frame in &frames {
            for cut in 0..frame.len() {
                let f = &frame[..cut];
                let _ = (
                    query_text(f),
                    parse_message(f),
                    parse_param_types(f),
                    bind_names(f),
                );
                let _ = (bind_result_formats(f), extend_bind_formats(f, 2));
                let _ = (execute_portal(f), execute_max_rows(f), target(f));
                let _ = (bind_params(f), replace_parse_query(f, "SELECT 2"));
                let _ = bind_to_statement(f, "s");
            }
        }
        // Decoders that read a frame to its end need every byte of it.
        let (bind, exec) = (&frames[2], &frames[3]);
        for cut in 0..bind.len() {
            assert_eq!(bind_result_formats(&bind[..cut]), None, "cut at {cut}");
        }
        for cut in 0..exec.len() {
            assert_eq!(execute_max_rows(&exec[..cut]), None, "cut at {cut}");
        }
        // A parameter longer than the frame.
        let mut lying = client_bind(("", "s"), &[], &[Some(b"abc")], &[]).to_vec();
        let at = lying.len() - 2 - 3 - 4;
        lying[at..at + 4].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(bind_params(&lying), None);
        assert_eq!(bind_result_formats(&lying), None);
    }
}
