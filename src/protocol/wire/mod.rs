//! The messages the capture reads, edits or writes, on whole frames (type byte and length
//! included). Only frames that pgbridge changes are re-encoded; every other frame keeps its bytes.

use bytes::{BufMut, Bytes, BytesMut};

/// Type OID and format code of one result column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldInfo {
    pub type_oid: u32,
    pub format: u16,
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The parameter type OIDs of a ParameterDescription frame.
pub fn parameter_types(frame: &[u8]) -> Vec<u32> {
    let n = be_u16(frame, 5).unwrap_or(0) as usize;
    (0..n).filter_map(|i| be_u32(frame, 7 + 4 * i)).collect()
}

/// The result-column format codes of a Bind frame (none: all text; one: all alike).
pub fn bind_result_formats(frame: &[u8]) -> Option<Vec<u16>> {
    let at = bind_results_at(frame)?;
    let n = be_u16(frame, at)? as usize;
    (0..n).map(|i| be_u16(frame, at + 2 + 2 * i)).collect()
}

/// The offset of a Bind frame's result-format count, past its names and parameters.
fn bind_results_at(frame: &[u8]) -> Option<usize> {
    let (_, at) = cstr(frame, 5)?;
    let (_, mut at) = cstr(frame, at)?;
    let nformats = be_u16(frame, at)? as usize;
    at += 2 + 2 * nformats;
    let nparams = be_u16(frame, at)? as usize;
    at += 2;
    for _ in 0..nparams {
        let len = be_u32(frame, at)? as i32;
        at += 4 + len.max(0) as usize;
    }
    Some(at)
}

/// A statement's RowDescription (every format 0) as a portal with result formats `formats`
/// describes it.
pub fn with_formats(frame: &[u8], formats: &[u16]) -> Option<Bytes> {
    if formats.iter().all(|&f| f == 0) {
        return Some(Bytes::copy_from_slice(frame));
    }
    let spans = field_spans(frame)?;
    if formats.len() > 1 && formats.len() != spans.len() {
        return None;
    }
    let mut out = BytesMut::from(frame);
    for (i, (_, end)) in spans.iter().enumerate() {
        let f = if formats.len() == 1 {
            formats[0]
        } else {
            formats[i]
        };
        out[end - 2..*end].copy_from_slice(&f.to_be_bytes());
    }
    Some(out.freeze())
}

/// Offsets of the fields of a RowDescription: (start, end) of each field's bytes.
fn field_spans(frame: &[u8]) -> Option<Vec<(usize, usize)>> {
    let count = be_u16(frame, 5)? as usize;
    let mut at = 7;
    let mut spans = Vec::with_capacity(count);
    for _ in 0..count {
        let nul = frame.get(at..)?.iter().position(|&b| b == 0)?;
        let end = at + nul + 1 + 18;
        if end > frame.len() {
            return None;
        }
        spans.push((at, end));
        at = end;
    }
    Some(spans)
}

/// The type and format of every column of a RowDescription frame.
pub fn row_fields(frame: &[u8]) -> Option<Vec<FieldInfo>> {
    field_spans(frame)?
        .into_iter()
        .map(|(_, end)| {
            Some(FieldInfo {
                type_oid: be_u32(frame, end - 12)?,
                format: be_u16(frame, end - 2)?,
            })
        })
        .collect()
}

/// The column names of a RowDescription frame.
pub fn row_names(frame: &[u8]) -> Vec<String> {
    field_spans(frame)
        .unwrap_or_default()
        .into_iter()
        .map(|(start, end)| String::from_utf8_lossy(&frame[start..end - 19]).into_owned())
        .collect()
}

/// A RowDescription with only its first `keep` columns.
pub fn truncate_row_description(frame: &[u8], keep: usize) -> Option<Bytes> {
    let spans = field_spans(frame)?;
    let end = if keep == 0 { 7 } else { spans.get(keep - 1)?.1 };
    let mut out = BytesMut::with_capacity(end);
    out.put_u8(b'T');
    out.put_u32((end - 1) as u32);
    out.put_u16(keep as u16);
    out.extend_from_slice(&frame[7..end]);
    Some(out.freeze())
}

/// Offsets of the values of a DataRow: `None` for NULL, else (start, end).
fn value_spans(frame: &[u8]) -> Option<Vec<Option<(usize, usize)>>> {
    let count = be_u16(frame, 5)? as usize;
    let mut at = 7;
    let mut spans = Vec::with_capacity(count);
    for _ in 0..count {
        let len = be_u32(frame, at)? as i32;
        at += 4;
        if len < 0 {
            spans.push(None);
        } else {
            let end = at + len as usize;
            if end > frame.len() {
                return None;
            }
            spans.push(Some((at, end)));
            at = end;
        }
    }
    Some(spans)
}

/// The values of a DataRow frame.
pub fn row_values(frame: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    Some(
        value_spans(frame)?
            .into_iter()
            .map(|s| s.map(|(a, b)| &frame[a..b]))
            .collect(),
    )
}

/// A DataRow with only its first `keep` values.
pub fn truncate_data_row(frame: &[u8], keep: usize) -> Option<Bytes> {
    let spans = value_spans(frame)?;
    let mut end = 7;
    for span in spans.iter().take(keep) {
        end = match span {
            Some((_, e)) => *e,
            None => end + 4,
        };
    }
    let mut out = BytesMut::with_capacity(end);
    out.put_u8(b'D');
    out.put_u32((end - 1) as u32);
    out.put_u16(keep as u16);
    out.extend_from_slice(&frame[7..end]);
    Some(out.freeze())
}

/// The tag of a CommandComplete frame (`INSERT 0 1`, `COMMIT`, ...).
pub fn command_tag(frame: &[u8]) -> &str {
    let body = frame.get(5..).unwrap_or_default();
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    std::str::from_utf8(&body[..end]).unwrap_or("")
}

/// Reads a NUL-terminated string at `at`; returns it and the offset after the NUL.
pub fn cstr(frame: &[u8], at: usize) -> Option<(&str, usize)> {
    let rest = frame.get(at..)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    Some((std::str::from_utf8(&rest[..nul]).ok()?, at + nul + 1))
}

/// The statement name and query text of a Parse frame, and the offset of the parameter types.
pub fn parse_message(frame: &[u8]) -> Option<(&str, &str, usize)> {
    let (name, at) = cstr(frame, 5)?;
    let (query, at) = cstr(frame, at)?;
    Some((name, query, at))
}

/// The parameter type OIDs a Parse frame declares (0: unspecified).
pub fn parse_param_types(frame: &[u8]) -> Vec<u32> {
    let Some((_, _, at)) = parse_message(frame) else {
        return Vec::new();
    };
    let n = be_u16(frame, at).unwrap_or(0) as usize;
    (0..n)
        .filter_map(|i| be_u32(frame, at + 2 + 4 * i))
        .collect()
}

/// A bound parameter: its format code and value (`None` for NULL).
pub type Param<'a> = (u16, Option<&'a [u8]>);

/// The parameters of a Bind frame.
pub fn bind_params(frame: &[u8]) -> Option<Vec<Param<'_>>> {
    let (_, at) = cstr(frame, 5)?;
    let (_, mut at) = cstr(frame, at)?;
    let nformats = be_u16(frame, at)? as usize;
    let formats: Vec<u16> = (0..nformats)
        .filter_map(|i| be_u16(frame, at + 2 + 2 * i))
        .collect();
    at += 2 + 2 * nformats;
    let nparams = be_u16(frame, at)? as usize;
    at += 2;
    let mut params = Vec::with_capacity(nparams);
    for i in 0..nparams {
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => *formats.get(i)?,
        };
        let len = be_u32(frame, at)? as i32;
        at += 4;
        if len < 0 {
            params.push((format, None));
        } else {
            let end = at + len as usize;
            params.push((format, Some(frame.get(at..end)?)));
            at = end;
        }
    }
    Some(params)
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

/// Portal and statement names of a Bind frame, and the offset of its result-format section.
pub fn bind_names(frame: &[u8]) -> Option<(&str, &str)> {
    let (portal, at) = cstr(frame, 5)?;
    let (stmt, _) = cstr(frame, at)?;
    Some((portal, stmt))
}

/// The Bind frame with `extra` more result columns in text format, when it lists a format per
/// column (one or no format code applies to every column already).
pub fn extend_bind_formats(frame: &[u8], extra: usize) -> Option<Option<Bytes>> {
    let at = bind_results_at(frame)?;
    let nresults = be_u16(frame, at)? as usize;
    if nresults <= 1 {
        return Some(None);
    }
    let results_end = at + 2 + 2 * nresults;
    let mut body = BytesMut::with_capacity(frame.len() + 2 * extra);
    body.extend_from_slice(&frame[5..at]);
    body.put_u16((nresults + extra) as u16);
    body.extend_from_slice(frame.get(at + 2..results_end)?);
    for _ in 0..extra {
        body.put_u16(0);
    }
    body.extend_from_slice(&frame[results_end..]);
    Some(Some(framed(b'B', &body)))
}

/// The portal an Execute frame runs.
pub fn execute_portal(frame: &[u8]) -> Option<&str> {
    cstr(frame, 5).map(|(p, _)| p)
}

/// The row limit of an Execute frame (0: all rows).
pub fn execute_max_rows(frame: &[u8]) -> Option<u32> {
    let (_, at) = cstr(frame, 5)?;
    be_u32(frame, at)
}

/// Kind (`S` or `P`) and name of a Describe or Close frame.
pub fn target(frame: &[u8]) -> Option<(u8, &str)> {
    let kind = *frame.get(5)?;
    cstr(frame, 6).map(|(n, _)| (kind, n))
}

/// The query text of a Query frame.
pub fn query_text(frame: &[u8]) -> Option<&str> {
    cstr(frame, 5).map(|(q, _)| q)
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.extend_from_slice(s.as_bytes());
    buf.put_u8(0);
}

/// A frame of type `tag` around `body`.
pub fn framed(tag: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(tag);
    out.put_u32((body.len() + 4) as u32);
    out.extend_from_slice(body);
    out.freeze()
}

pub fn query(sql: &str) -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, sql);
    framed(b'Q', &body)
}

pub fn parse(name: &str, sql: &str) -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, name);
    put_cstr(&mut body, sql);
    body.put_u16(0);
    framed(b'P', &body)
}

/// Bind without parameters, text results.
pub fn bind(portal: &str, stmt: &str) -> Bytes {
    let mut body = BytesMut::new();
    put_cstr(&mut body, portal);
    put_cstr(&mut body, stmt);
    body.put_u16(0);
    body.put_u16(0);
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

/// A ReadyForQuery frame with `status`.
pub fn ready(status: u8) -> Bytes {
    framed(b'Z', &[status])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_execute_names_its_row_limit() {
        let mut body = BytesMut::new();
        body.extend_from_slice(b"\0");
        body.extend_from_slice(&10u32.to_be_bytes());
        assert_eq!(execute_max_rows(&framed(b'E', &body)), Some(10));
        assert_eq!(execute_max_rows(&execute("")), Some(0));
    }

    fn row_description(fields: &[(&str, u32, u16)]) -> Bytes {
        let mut body = BytesMut::new();
        body.put_u16(fields.len() as u16);
        for (name, oid, format) in fields {
            put_cstr(&mut body, name);
            body.put_u32(0);
            body.put_u16(0);
            body.put_u32(*oid);
            body.put_i16(-1);
            body.put_i32(-1);
            body.put_u16(*format);
        }
        framed(b'T', &body)
    }

    fn data_row(values: &[Option<&[u8]>]) -> Bytes {
        let mut body = BytesMut::new();
        body.put_u16(values.len() as u16);
        for v in values {
            match v {
                Some(v) => {
                    body.put_u32(v.len() as u32);
                    body.extend_from_slice(v);
                }
                None => body.put_i32(-1),
            }
        }
        framed(b'D', &body)
    }

    #[test]
    fn trailing_columns_are_stripped_from_descriptions_and_rows() {
        let desc = row_description(&[("id", 23, 0), ("symbol", 25, 1), ("ts", 1184, 0)]);
        assert_eq!(
            row_fields(&desc).unwrap(),
            vec![
                FieldInfo {
                    type_oid: 23,
                    format: 0
                },
                FieldInfo {
                    type_oid: 25,
                    format: 1
                },
                FieldInfo {
                    type_oid: 1184,
                    format: 0
                }
            ]
        );
        assert_eq!(
            truncate_row_description(&desc, 1).unwrap(),
            row_description(&[("id", 23, 0)])
        );
        assert_eq!(
            truncate_row_description(&desc, 0).unwrap(),
            row_description(&[])
        );
        let row = data_row(&[Some(b"7"), None, Some(b"2026")]);
        assert_eq!(
            row_values(&row).unwrap(),
            vec![Some(&b"7"[..]), None, Some(&b"2026"[..])]
        );
        assert_eq!(
            truncate_data_row(&row, 2).unwrap(),
            data_row(&[Some(b"7"), None])
        );
        assert_eq!(truncate_data_row(&row, 0).unwrap(), data_row(&[]));
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
        let mut body = BytesMut::new();
        put_cstr(&mut body, "p");
        put_cstr(&mut body, "s1");
        body.put_u16(1);
        body.put_u16(1);
        body.put_u16(1);
        body.put_u32(2);
        body.extend_from_slice(b"42");
        body.put_u16(2);
        body.put_u16(1);
        body.put_u16(0);
        let b = framed(b'B', &body);
        let wider = extend_bind_formats(&b, 3).unwrap().unwrap();
        assert_eq!(
            &wider[wider.len() - 12..],
            &[0, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(bind_names(&wider).unwrap(), ("p", "s1"));
        assert_eq!(extend_bind_formats(&bind("p", "s"), 3).unwrap(), None);
    }

    #[test]
    fn command_tags_read() {
        let mut body = BytesMut::new();
        put_cstr(&mut body, "INSERT 0 3");
        assert_eq!(command_tag(&framed(b'C', &body)), "INSERT 0 3");
    }
}
