//! (B) What a server answers: the decoders of RowDescription, DataRow, CommandComplete and
//! ParameterDescription, the editors that strip the columns the capture added from a
//! description and its rows, or give a statement's description a portal's formats, and the
//! ReadyForQuery pgbridge writes itself.

use bytes::{BufMut, Bytes, BytesMut};

use super::frontend::read_oids;
use super::{framed, Reader};

/// Type OID and format code of one result column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldInfo {
    pub type_oid: u32,
    pub format: u16,
}

/// Bytes of a RowDescription field after its name: table OID, column number, type OID, type
/// size, type modifier, format code.
const FIELD_TAIL: usize = 18;

/// The parameter type OIDs of a ParameterDescription frame.
pub fn parameter_types(frame: &[u8]) -> Vec<u32> {
    read_oids(&mut Reader::body(frame))
}

/// Offsets of the fields of a RowDescription: (start, end) of each field's bytes.
fn field_spans(frame: &[u8]) -> Option<Vec<(usize, usize)>> {
    let mut r = Reader::body(frame);
    let count = r.u16()? as usize;
    // A field takes at least its name's NUL and its tail: no more are allocated than fit.
    let mut spans = Vec::with_capacity(count.min(r.left() / (1 + FIELD_TAIL)));
    for _ in 0..count {
        let start = r.pos();
        r.cstr_bytes()?;
        r.bytes(FIELD_TAIL)?;
        spans.push((start, r.pos()));
    }
    Some(spans)
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

/// The type and format of every column of a RowDescription frame.
pub fn row_fields(frame: &[u8]) -> Option<Vec<FieldInfo>> {
    field_spans(frame)?
        .into_iter()
        .map(|(_, end)| {
            let mut tail = Reader::at(frame, end - 12);
            let type_oid = tail.u32()?;
            tail.bytes(6)?;
            Some(FieldInfo {
                type_oid,
                format: tail.u16()?,
            })
        })
        .collect()
}

/// The first OID of objects a database creates itself: below it, the built-in types every
/// server numbers alike.
const FIRST_NORMAL_OID: u32 = 16384;

/// Whether two RowDescription frames (of two servers) describe the same columns: as many, of
/// the same names, and of the same built-in types and type modifiers (a type a database made
/// itself has an OID of that database's: not compared).
pub fn same_columns(a: &[u8], b: &[u8]) -> bool {
    let (Some(fa), Some(fb)) = (field_spans(a), field_spans(b)) else {
        return false;
    };
    if fa.len() != fb.len() || row_names(a) != row_names(b) {
        return false;
    }
    let tail = |frame: &[u8], end: usize| {
        let mut r = Reader::at(frame, end - 12);
        let oid = r.u32()?;
        r.bytes(2)?;
        let typmod = r.u32()?;
        Some((oid, typmod))
    };
    fa.iter()
        .zip(&fb)
        .all(|(&(_, ea), &(_, eb))| match (tail(a, ea), tail(b, eb)) {
            (Some((oa, ma)), Some((ob, mb))) if oa < FIRST_NORMAL_OID || ob < FIRST_NORMAL_OID => {
                (oa, ma) == (ob, mb)
            }
            (Some(_), Some(_)) => true,
            _ => false,
        })
}

/// The column names of a RowDescription frame.
pub fn row_names(frame: &[u8]) -> Vec<String> {
    field_spans(frame)
        .unwrap_or_default()
        .into_iter()
        .map(|(start, end)| {
            String::from_utf8_lossy(&frame[start..end - FIELD_TAIL - 1]).into_owned()
        })
        .collect()
}

/// A RowDescription with only its first `keep` columns.
pub fn truncate_row_description(frame: &[u8], keep: usize) -> Option<Bytes> {
    let spans = field_spans(frame)?;
    let end = if keep == 0 { 7 } else { spans.get(keep - 1)?.1 };
    Some(with_count(b'T', keep, &frame[7..end]))
}

/// A frame of type `tag` whose body is a count of `items` and the items' bytes.
fn with_count(tag: u8, count: usize, items: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(7 + items.len());
    out.put_u8(tag);
    out.put_u32((6 + items.len()) as u32);
    out.put_u16(count as u16);
    out.extend_from_slice(items);
    out.freeze()
}

/// Offsets of the values of a DataRow: `None` for NULL, else (start, end).
fn value_spans(frame: &[u8]) -> Option<Vec<Option<(usize, usize)>>> {
    let mut r = Reader::body(frame);
    let count = r.u16()? as usize;
    let mut spans = Vec::with_capacity(count.min(r.left() / 4));
    for _ in 0..count {
        let len = r.i32()?;
        if len < 0 {
            spans.push(None);
        } else {
            let start = r.pos();
            r.bytes(len as usize)?;
            spans.push(Some((start, r.pos())));
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
    Some(with_count(b'D', keep, &frame[7..end]))
}

/// The tag of a CommandComplete frame (`INSERT 0 1`, `COMMIT`, ...); without its NUL, all the
/// body is the tag.
pub fn command_tag(frame: &[u8]) -> &str {
    let body = frame.get(5..).unwrap_or_default();
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    std::str::from_utf8(&body[..end]).unwrap_or("")
}

/// A ReadyForQuery frame with `status`.
pub fn ready(status: u8) -> Bytes {
    framed(b'Z', &[status])
}

#[cfg(test)]
mod tests {
    use super::super::put_cstr;
    use super::*;

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
    fn two_servers_describe_the_same_columns_or_not() {
        let primary = row_description(&[("ts", 1184, 0), ("close", 1700, 0), ("kind", 16390, 0)]);
        // A type of the database's own has another OID there.
        let secondary = row_description(&[("ts", 1184, 1), ("close", 1700, 1), ("kind", 17001, 0)]);
        assert!(
            same_columns(&primary, &secondary),
            "formats are the client's: not compared"
        );
        let renamed =
            row_description(&[("ts", 1184, 0), ("close_px", 1700, 0), ("kind", 16390, 0)]);
        assert!(!same_columns(&primary, &renamed));
        let retyped = row_description(&[("ts", 1114, 0), ("close", 1700, 0), ("kind", 16390, 0)]);
        assert!(!same_columns(&primary, &retyped));
        let fewer = row_description(&[("ts", 1184, 0), ("close", 1700, 0)]);
        assert!(!same_columns(&primary, &fewer));
        assert!(!same_columns(&primary, b"T\0\0"));
    }

    fn parameter_description(types: &[u32]) -> Bytes {
        let mut body = BytesMut::new();
        body.put_u16(types.len() as u16);
        types.iter().for_each(|t| body.put_u32(*t));
        framed(b't', &body)
    }

    fn field(type_oid: u32, format: u16) -> FieldInfo {
        FieldInfo { type_oid, format }
    }

    /// Every field of a RowDescription, read in order: its name, type and format.
    fn read_description<'a>(r: &mut Reader<'a>) -> Option<Vec<(&'a [u8], u32, u16)>> {
        let n = r.u16()?;
        (0..n)
            .map(|_| {
                let name = r.cstr_bytes()?;
                r.bytes(6)?;
                let oid = r.u32()?;
                r.bytes(6)?;
                Some((name, oid, r.u16()?))
            })
            .collect()
    }

    /// Every value of a DataRow, read in order.
    fn read_row<'a>(r: &mut Reader<'a>) -> Option<Vec<Option<&'a [u8]>>> {
        let n = r.u16()?;
        (0..n)
            .map(|_| match r.i32()? {
                len if len < 0 => Some(None),
                len => r.bytes(len as usize).map(Some),
            })
            .collect()
    }

    #[test]
    fn server_answers_roundtrip() {
        let desc = row_description(&[("id", 23, 0), ("symbol", 25, 1)]);
        let want = vec![(&b"id"[..], 23, 0), (&b"symbol"[..], 25, 1)];
        roundtrip!(desc, b'T', |r| read_description(r), want);
        assert_eq!(row_fields(&desc), Some(vec![field(23, 0), field(25, 1)]));
        assert_eq!(row_names(&desc), vec!["id", "symbol"]);
        let row = data_row(&[Some(b"7"), None, Some(b"")]);
        let want = vec![Some(&b"7"[..]), None, Some(&b""[..])];
        roundtrip!(row, b'D', |r| read_row(r), want.clone());
        assert_eq!(row_values(&row), Some(want));
        let types = parameter_description(&[23, 25]);
        roundtrip!(types, b't', |r| Some(read_oids(r)), vec![23, 25]);
        assert_eq!(parameter_types(&types), vec![23, 25]);
        roundtrip!(ready(b'T'), b'Z', |r| r.u8(), b'T');
        let mut body = BytesMut::new();
        put_cstr(&mut body, "INSERT 0 3");
        let done = framed(b'C', &body);
        roundtrip!(done, b'C', |r| r.cstr(), "INSERT 0 3");
        assert_eq!(command_tag(&done), "INSERT 0 3");
        assert_eq!(command_tag(&framed(b'C', b"SELECT 1")), "SELECT 1");
    }

    #[test]
    fn trailing_columns_are_stripped_from_descriptions_and_rows() {
        let desc = row_description(&[("id", 23, 0), ("symbol", 25, 1), ("ts", 1184, 0)]);
        assert_eq!(
            row_fields(&desc).unwrap(),
            vec![field(23, 0), field(25, 1), field(1184, 0)]
        );
        let kept = truncate_row_description(&desc, 1).unwrap();
        assert_eq!(kept, row_description(&[("id", 23, 0)]));
        roundtrip!(
            kept,
            b'T',
            |r| read_description(r),
            vec![(&b"id"[..], 23, 0)]
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
        let kept = truncate_data_row(&row, 2).unwrap();
        assert_eq!(kept, data_row(&[Some(b"7"), None]));
        roundtrip!(kept, b'D', |r| read_row(r), vec![Some(&b"7"[..]), None]);
        assert_eq!(truncate_data_row(&row, 0).unwrap(), data_row(&[]));
        assert_eq!(truncate_row_description(&desc, 4), None);
    }

    #[test]
    fn a_statements_description_takes_the_portals_formats() {
        let desc = row_description(&[("a", 23, 0), ("b", 25, 0)]);
        assert_eq!(with_formats(&desc, &[]), Some(desc.clone()));
        assert_eq!(
            with_formats(&desc, &[1]),
            Some(row_description(&[("a", 23, 1), ("b", 25, 1)]))
        );
        assert_eq!(
            with_formats(&desc, &[0, 1]),
            Some(row_description(&[("a", 23, 0), ("b", 25, 1)]))
        );
        assert_eq!(with_formats(&desc, &[1, 1, 1]), None);
    }

    #[test]
    fn truncated_or_lying_answers_are_refused_without_panicking() {
        let desc = row_description(&[("id", 23, 0), ("symbol", 25, 1)]);
        let row = data_row(&[Some(b"7"), None, Some(b"2026")]);
        for frame in [&desc, &row] {
            for cut in 0..frame.len() {
                let f = &frame[..cut];
                assert_eq!(row_fields(f), None, "cut at {cut}");
                let _ = (row_names(f), with_formats(f, &[1]), command_tag(f));
                let _ = (truncate_row_description(f, 1), truncate_data_row(f, 1));
                let _ = parameter_types(f);
                if frame == &row {
                    assert_eq!(row_values(f), None, "cut at {cut}");
                }
            }
        }
        // Counts the frame cannot hold are refused before anything is allocated for them.
        let huge = framed(b'D', &[0xff, 0xff]);
        assert_eq!(row_values(&huge), None);
        let huge = framed(b'T', &[0xff, 0xff]);
        assert_eq!(row_fields(&huge), None);
    }
}
