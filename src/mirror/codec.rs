//! The binary encoding of a [`TxnRecord`] inside a journal record.
//!
//! Little-endian, length-prefixed, versioned; values keep their bytes as the primary sent them.
//! The journal's framing (length, checksum, kind) is around this, in [`super::journal`].
//!
//! Each change starts with a kind byte. Kinds are only ever added: a change that carries
//! what the write comparison needs uses a kind of its own (6: an upsert with the primary's
//! effect, 7: a statement with the primary's command tag), and one that does not is written in
//! its original kind (1, 5), so records written before those existed decode as they always did.
//!
//! Version 2 is version 1 with the transaction's WAL position ([`TxnRecord::lsn`]) after its
//! changes; a record without one is written as version 1, as before.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{Change, ChangeOp, Effect, Row, TxnRecord, Value};
use crate::rules::TableName;

const VERSION: u8 = 1;
/// [`VERSION`] with the WAL position after the changes.
const VERSION_WITH_LSN: u8 = 2;

// Change kinds. Only ever added; see the module docs.
const UPSERT: u8 = 1;
const DELETE: u8 = 2;
const UPDATE_KEY: u8 = 3;
const TRUNCATE: u8 = 4;
const STATEMENT: u8 = 5;
/// An upsert with the primary's effect.
const UPSERT_WITH_EFFECT: u8 = 6;
/// A statement with the primary's command tag.
const STATEMENT_WITH_TAG: u8 = 7;

// The primary's effect of an upsert.
const INSERTED: u8 = 1;
const UPDATED: u8 = 2;

/// Why a record's payload could not be decoded (the checksum matched, so a bug or a newer format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("undecodable journal record: {}", self.reason())]
pub enum DecodeError {
    Truncated,
    UnknownVersion,
    UnknownChangeKind,
    UnknownEffect,
    NotUtf8,
}

impl DecodeError {
    /// What is wrong, in a few words.
    pub fn reason(self) -> &'static str {
        match self {
            DecodeError::Truncated => "truncated",
            DecodeError::UnknownVersion => "unknown version",
            DecodeError::UnknownChangeKind => "unknown change kind",
            DecodeError::UnknownEffect => "unknown upsert effect",
            DecodeError::NotUtf8 => "a name is not UTF-8",
        }
    }
}

pub fn encode(txn: &TxnRecord, out: &mut BytesMut) {
    out.put_u8(match txn.lsn {
        Some(_) => VERSION_WITH_LSN,
        None => VERSION,
    });
    out.put_u64_le(txn.session);
    match txn.xid {
        Some(x) => {
            out.put_u8(1);
            out.put_i64_le(x);
        }
        None => out.put_u8(0),
    }
    out.put_i64_le(txn.captured_at_us);
    out.put_u32_le(txn.settings.len() as u32);
    for (k, v) in &txn.settings {
        put_str(out, k);
        put_str(out, v);
    }
    out.put_u32_le(txn.changes.len() as u32);
    for c in &txn.changes {
        put_str(out, &c.table.schema);
        put_str(out, &c.table.name);
        put_op(out, &c.op);
    }
    if let Some(lsn) = txn.lsn {
        out.put_u64_le(lsn);
    }
}

/// A change's kind byte and body. A change without the write comparison's information keeps
/// its original kind.
fn put_op(out: &mut BytesMut, op: &ChangeOp) {
    match op {
        ChangeOp::Upsert {
            row,
            in_filter,
            effect,
        } => {
            put_upsert_kind(out, *effect);
            put_filter(out, *in_filter);
            put_row(out, row);
        }
        ChangeOp::Delete { key, in_filter } => {
            out.put_u8(DELETE);
            put_filter(out, *in_filter);
            put_row(out, key);
        }
        ChangeOp::UpdateKey {
            old_key,
            row,
            in_filter,
        } => {
            out.put_u8(UPDATE_KEY);
            put_filter(out, *in_filter);
            put_row(out, old_key);
            put_row(out, row);
        }
        ChangeOp::Truncate => out.put_u8(TRUNCATE),
        ChangeOp::Statement { sql, params, tag } => put_statement(out, sql, params, tag.as_deref()),
    }
}

fn put_upsert_kind(out: &mut BytesMut, effect: Option<Effect>) {
    match effect {
        None => out.put_u8(UPSERT),
        Some(Effect::Inserted) => out.put_slice(&[UPSERT_WITH_EFFECT, INSERTED]),
        Some(Effect::Updated) => out.put_slice(&[UPSERT_WITH_EFFECT, UPDATED]),
    }
}

fn put_statement(out: &mut BytesMut, sql: &str, params: &Row, tag: Option<&str>) {
    out.put_u8(if tag.is_some() {
        STATEMENT_WITH_TAG
    } else {
        STATEMENT
    });
    put_str(out, sql);
    put_row(out, params);
    if let Some(tag) = tag {
        put_str(out, tag);
    }
}

pub fn decode(mut buf: Bytes) -> Result<TxnRecord, DecodeError> {
    let b = &mut buf;
    let version = get_u8(b)?;
    if version != VERSION && version != VERSION_WITH_LSN {
        return Err(DecodeError::UnknownVersion);
    }
    let session = get_u64(b)?;
    let xid = match get_u8(b)? {
        0 => None,
        _ => Some(get_u64(b)? as i64),
    };
    let captured_at_us = get_u64(b)? as i64;
    let n = get_u32(b)?;
    let mut settings = Vec::new();
    for _ in 0..n {
        settings.push((get_str(b)?, get_str(b)?));
    }
    let n = get_u32(b)?;
    let mut changes = Vec::new();
    for _ in 0..n {
        let table = TableName {
            schema: get_str(b)?,
            name: get_str(b)?,
        };
        changes.push(Change {
            table,
            op: get_op(b)?,
        });
    }
    let lsn = match version {
        VERSION_WITH_LSN => Some(get_u64(b)?),
        _ => None,
    };
    Ok(TxnRecord {
        session,
        xid,
        captured_at_us,
        settings,
        changes,
        lsn,
    })
}

/// A change's kind byte and body.
fn get_op(b: &mut Bytes) -> Result<ChangeOp, DecodeError> {
    Ok(match get_u8(b)? {
        UPSERT => get_upsert(b, None)?,
        UPSERT_WITH_EFFECT => {
            let effect = match get_u8(b)? {
                INSERTED => Effect::Inserted,
                UPDATED => Effect::Updated,
                _ => return Err(DecodeError::UnknownEffect),
            };
            get_upsert(b, Some(effect))?
        }
        DELETE => ChangeOp::Delete {
            in_filter: get_filter(b)?,
            key: get_row(b)?,
        },
        UPDATE_KEY => ChangeOp::UpdateKey {
            in_filter: get_filter(b)?,
            old_key: get_row(b)?,
            row: get_row(b)?,
        },
        TRUNCATE => ChangeOp::Truncate,
        STATEMENT => ChangeOp::Statement {
            sql: get_str(b)?,
            params: get_row(b)?,
            tag: None,
        },
        STATEMENT_WITH_TAG => ChangeOp::Statement {
            sql: get_str(b)?,
            params: get_row(b)?,
            tag: Some(get_str(b)?),
        },
        _ => return Err(DecodeError::UnknownChangeKind),
    })
}

fn get_upsert(b: &mut Bytes, effect: Option<Effect>) -> Result<ChangeOp, DecodeError> {
    Ok(ChangeOp::Upsert {
        in_filter: get_filter(b)?,
        row: get_row(b)?,
        effect,
    })
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32_le(s.len() as u32);
    out.put_slice(s.as_bytes());
}

fn put_filter(out: &mut BytesMut, f: Option<bool>) {
    out.put_u8(match f {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    });
}

fn put_row(out: &mut BytesMut, row: &Row) {
    out.put_u32_le(row.columns.len() as u32);
    for (c, v) in row.columns.iter().zip(&row.values) {
        put_str(out, c);
        out.put_u32_le(v.type_oid);
        out.put_u8(v.format);
        match &v.bytes {
            None => out.put_i32_le(-1),
            Some(b) => {
                out.put_i32_le(b.len() as i32);
                out.put_slice(b);
            }
        }
    }
}

fn need(b: &Bytes, n: usize) -> Result<(), DecodeError> {
    if b.remaining() < n {
        Err(DecodeError::Truncated)
    } else {
        Ok(())
    }
}

fn get_u8(b: &mut Bytes) -> Result<u8, DecodeError> {
    need(b, 1)?;
    Ok(b.get_u8())
}

fn get_u32(b: &mut Bytes) -> Result<u32, DecodeError> {
    need(b, 4)?;
    Ok(b.get_u32_le())
}

fn get_u64(b: &mut Bytes) -> Result<u64, DecodeError> {
    need(b, 8)?;
    Ok(b.get_u64_le())
}

fn get_str(b: &mut Bytes) -> Result<String, DecodeError> {
    let n = get_u32(b)? as usize;
    need(b, n)?;
    String::from_utf8(b.split_to(n).to_vec()).map_err(|_| DecodeError::NotUtf8)
}

fn get_filter(b: &mut Bytes) -> Result<Option<bool>, DecodeError> {
    Ok(match get_u8(b)? {
        0 => None,
        1 => Some(false),
        _ => Some(true),
    })
}

fn get_row(b: &mut Bytes) -> Result<Row, DecodeError> {
    let n = get_u32(b)? as usize;
    let mut row = Row {
        columns: Vec::with_capacity(n.min(1024)),
        values: Vec::with_capacity(n.min(1024)),
    };
    for _ in 0..n {
        row.columns.push(get_str(b)?);
        let type_oid = get_u32(b)?;
        let format = get_u8(b)?;
        let len = get_u32(b)? as i32;
        let bytes = if len < 0 {
            None
        } else {
            need(b, len as usize)?;
            Some(b.split_to(len as usize))
        };
        row.values.push(Value {
            type_oid,
            format,
            bytes,
        });
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> TxnRecord {
        let row = Row::new()
            .with("symbol", Value::text(25, "DXY"))
            .with("ts", Value::binary(1184, vec![0, 1, 2, 3, 4, 5, 6, 7]))
            .with("volume", Value::null(20));
        TxnRecord {
            session: 7,
            xid: Some(1234),
            captured_at_us: 1_700_000_000_000_000,
            settings: vec![("DateStyle".into(), "ISO, MDY".into())],
            changes: vec![
                Change {
                    table: TableName::new("public", "derived_data_bars"),
                    op: ChangeOp::Upsert {
                        row: row.clone(),
                        in_filter: Some(true),
                        effect: None,
                    },
                },
                Change {
                    table: TableName::new("public", "derived_data_bars"),
                    op: ChangeOp::Upsert {
                        row: row.clone(),
                        in_filter: None,
                        effect: Some(Effect::Updated),
                    },
                },
                Change {
                    table: TableName::new("s", "t"),
                    op: ChangeOp::Statement {
                        sql: "UPDATE t SET v = $1".into(),
                        params: Row::new().with("", Value::text(0, "x")),
                        tag: Some("UPDATE 2".into()),
                    },
                },
                Change {
                    table: TableName::new("public", "derived_data_bars"),
                    op: ChangeOp::UpdateKey {
                        old_key: row.clone(),
                        row: row.clone(),
                        in_filter: None,
                    },
                },
                Change {
                    table: TableName::new("s", "t"),
                    op: ChangeOp::Delete {
                        key: row,
                        in_filter: Some(false),
                    },
                },
                Change {
                    table: TableName::new("s", "t"),
                    op: ChangeOp::Truncate,
                },
            ],
            lsn: None,
        }
    }

    /// [`sample`] as pgbridge has encoded it since kinds 6 and 7 (every change kind, both
    /// value formats, NULL, a setting): journals written before must still read the same.
    const SAMPLE: &str =
        "01070000000000000001d20400000000000000401e18240a06000100000009000000446174655374796c65\
        0800000049534f2c204d445906000000060000007075626c696311000000646572697665645f646174615f\
        626172730102030000000600000073796d626f6c190000000003000000445859020000007473a004000001\
        08000000000102030405060706000000766f6c756d651400000000ffffffff060000007075626c69631100\
        0000646572697665645f646174615f62617273060200030000000600000073796d626f6c19000000000300\
        0000445859020000007473a00400000108000000000102030405060706000000766f6c756d651400000000\
        ffffffff0100000073010000007407130000005550444154452074205345542076203d2024310100000000\
        00000000000000000100000078080000005550444154452032060000007075626c69631100000064657269\
        7665645f646174615f626172730300030000000600000073796d626f6c1900000000030000004458590200\
        00007473a00400000108000000000102030405060706000000766f6c756d651400000000ffffffff030000\
        000600000073796d626f6c190000000003000000445859020000007473a004000001080000000001020304\
        05060706000000766f6c756d651400000000ffffffff010000007301000000740201030000000600000073\
        796d626f6c190000000003000000445859020000007473a004000001080000000001020304050607060000\
        00766f6c756d651400000000ffffffff0100000073010000007404";

    #[test]
    fn roundtrip() {
        let mut txn = sample();
        for lsn in [None, Some(0x16_B374_D848)] {
            txn.lsn = lsn;
            let mut buf = BytesMut::new();
            encode(&txn, &mut buf);
            assert_eq!(buf[0], if lsn.is_some() { 2 } else { 1 });
            let back = decode(buf.freeze()).unwrap();
            assert_eq!(back, txn);
        }
    }

    /// A record as pgbridge wrote it before upserts kept their effect and statements their
    /// tag: an upsert (kind 1) and a statement (kind 5).
    const BEFORE_WRITE_COMPARISON: &str = "01030000000000000001090000000000000001000000000000\
        000000000002000000060000007075626c69630100000074010201000000010000006b1700000000010000\
        0031060000007075626c6963010000007405130000005550444154452074205345542076203d2024310100\
        00000000000000000000000100000078";

    #[test]
    fn records_written_before_the_write_comparison_still_decode() {
        let hex = BEFORE_WRITE_COMPARISON;
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let txn = decode(Bytes::from(bytes.clone())).unwrap();
        assert_eq!(
            txn.changes[0].op,
            ChangeOp::Upsert {
                row: Row::new().with("k", Value::text(23, "1")),
                in_filter: Some(true),
                effect: None,
            }
        );
        assert_eq!(
            txn.changes[1].op,
            ChangeOp::Statement {
                sql: "UPDATE t SET v = $1".into(),
                params: Row::new().with("", Value::text(0, "x")),
                tag: None,
            }
        );
        // Without the new information a change is still written in its original kind.
        let mut again = BytesMut::new();
        encode(&txn, &mut again);
        assert_eq!(&again[..], &bytes[..]);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut buf = BytesMut::new();
        encode(&sample(), &mut buf);
        let full = buf.freeze();
        for n in 0..full.len() {
            assert!(decode(full.slice(..n)).is_err(), "prefix of {n} bytes");
        }
    }

    #[test]
    fn the_encoding_is_the_one_journals_on_disk_were_written_with() {
        let mut buf = BytesMut::new();
        encode(&sample(), &mut buf);
        assert_eq!(hex(&buf), SAMPLE);
        assert_eq!(decode(unhex(SAMPLE)).unwrap(), sample());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            DecodeError::Truncated.to_string(),
            "undecodable journal record: truncated"
        );
        assert_eq!(DecodeError::UnknownEffect.reason(), "unknown upsert effect");
        let mut unknown = BytesMut::from(&unhex(SAMPLE)[..]);
        unknown[0] = 3;
        assert_eq!(decode(unknown.freeze()), Err(DecodeError::UnknownVersion));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn unhex(hex: &str) -> Bytes {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }
}
