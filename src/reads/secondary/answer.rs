//! What the secondary answered one batch, collected frame by frame up to its last
//! ReadyForQuery: the settings script's answer first when the batch carries the script (its
//! error fails the read; nothing else of it is kept), then the read's RowDescription (to hold
//! against the primary's), DataRows, CommandComplete or EmptyQueryResponse, and its first
//! error. Pure: the connection reads the frames.

use bytes::{Bytes, BytesMut};

use super::conn::ConnError;
use super::Failure;
use crate::protocol::messages::{error_code, error_text};

/// The SQLSTATE reported when the session's settings could not be applied (invalid_parameter_value).
const SETTINGS_FAILED: &str = "22023";

/// A read the secondary answered.
#[derive(Debug)]
pub struct Rows {
    /// Its DataRows and CommandComplete, as the client gets them.
    pub rows: BytesMut,
    /// Its RowDescription (`None` for a portal not described, or a statement without rows).
    pub description: Option<Bytes>,
}

/// One batch's answer, as far as it came.
#[derive(Debug)]
pub(super) struct Answer {
    /// ReadyForQuery frames still to come: one per simple Query or Sync in the batch.
    readies: u8,
    /// The batch began with the settings script.
    with_settings: bool,
    rows: BytesMut,
    /// The read's RowDescription, as the secondary gave it.
    description: Option<Bytes>,
    /// The read's first ErrorResponse.
    error: Option<Failure>,
    /// The settings script's error, as `SQLSTATE: message`.
    settings_failed: Option<String>,
    /// A ParseComplete came.
    parsed: bool,
}

impl Answer {
    /// The answer to a batch of one request, after the settings script when `with_settings`.
    pub(super) fn new(with_settings: bool) -> Answer {
        Answer {
            readies: if with_settings { 2 } else { 1 },
            with_settings,
            rows: BytesMut::new(),
            description: None,
            error: None,
            settings_failed: None,
            parsed: false,
        }
    }

    /// Takes the next frame; true once the last ReadyForQuery came. Fails when the rows grow
    /// past [`crate::reads::MAX_COMPARED_BYTES`].
    pub(super) fn take(&mut self, frame: &Bytes) -> Result<bool, ConnError> {
        let in_settings = self.with_settings && self.readies == 2;
        match frame.first() {
            Some(b'D' | b'C' | b'I') if !in_settings => {
                if self.rows.len() + frame.len() > crate::reads::MAX_COMPARED_BYTES {
                    return Err(ConnError::TooLarge);
                }
                self.rows.extend_from_slice(frame)
            }
            Some(b'T') if !in_settings => self.description = Some(frame.clone()),
            Some(b'E') if in_settings => self.settings_failed = Some(error_text(frame)),
            Some(b'E') => {
                self.error.get_or_insert_with(|| Failure::Error {
                    sqlstate: error_code(frame),
                    message: error_text(frame),
                    frame: frame.clone(),
                });
            }
            Some(b'1') if !in_settings => self.parsed = true,
            Some(b'Z') => self.readies -= 1,
            _ => {}
        }
        Ok(self.readies == 0)
    }

    /// Whether the settings script ran without an error (false when there was none to run).
    pub(super) fn settings_applied(&self) -> bool {
        self.with_settings && self.settings_failed.is_none()
    }

    /// Whether the batch's Parse completed (false too when it had none).
    pub(super) fn parsed(&self) -> bool {
        self.parsed
    }

    /// The read's DataRows and CommandComplete (and its RowDescription), or why it failed.
    pub(super) fn into_result(self) -> Result<Rows, Failure> {
        if let Some(e) = self.settings_failed {
            return Err(Failure::Error {
                sqlstate: SETTINGS_FAILED.into(),
                message: format!(
                    "the session's settings could not be applied on the secondary: {e}"
                ),
                frame: Bytes::new(),
            });
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(Rows {
                rows: self.rows,
                description: self.description,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::{error_response, Severity};
    use crate::protocol::wire::{framed, ready};

    fn row(value: &[u8]) -> Bytes {
        let mut body = vec![0, 1];
        body.extend_from_slice(&(value.len() as u32).to_be_bytes());
        body.extend_from_slice(value);
        framed(b'D', &body)
    }

    fn complete(tag: &str) -> Bytes {
        framed(b'C', format!("{tag}\0").as_bytes())
    }

    /// Feeds `frames` until the answer is complete; returns how many it took.
    fn feed(answer: &mut Answer, frames: &[Bytes]) -> usize {
        for (i, f) in frames.iter().enumerate() {
            if answer.take(f).unwrap() {
                return i + 1;
            }
        }
        panic!("the answer did not end");
    }

    #[test]
    fn the_rows_and_the_tag_are_kept_and_the_rest_is_not() {
        let mut answer = Answer::new(false);
        let frames = [
            framed(b'1', b""),
            framed(b'2', b""),
            row(b"7"),
            complete("SELECT 1"),
            ready(b'I'),
        ];
        assert_eq!(feed(&mut answer, &frames), 5);
        assert!(!answer.settings_applied() && answer.parsed());
        let rows = answer.into_result().unwrap().rows;
        assert_eq!(
            &rows[..],
            &[&row(b"7")[..], &complete("SELECT 1")[..]].concat()
        );
    }

    #[test]
    fn the_settings_scripts_answer_is_skipped_and_its_error_fails_the_read() {
        let mut answer = Answer::new(true);
        let settings = [complete("RESET"), complete("SET"), ready(b'I')];
        let read = [row(b"1"), complete("SELECT 1"), ready(b'I')];
        assert_eq!(feed(&mut answer, &[&settings[..], &read[..]].concat()), 6);
        assert!(answer.settings_applied());
        assert_eq!(
            answer.into_result().unwrap().rows.len(),
            read[0].len() + read[1].len()
        );

        let mut answer = Answer::new(true);
        let bad = error_response(Severity::Error, "22023", "invalid value for DateStyle");
        feed(
            &mut answer,
            &[bad, ready(b'I'), complete("SELECT 0"), ready(b'I')],
        );
        assert!(!answer.settings_applied());
        let Err(Failure::Error {
            sqlstate,
            message,
            frame,
        }) = answer.into_result()
        else {
            panic!("the read did not fail");
        };
        assert_eq!(sqlstate, "22023");
        assert!(
            message.ends_with("secondary: 22023: invalid value for DateStyle"),
            "{message}"
        );
        assert!(frame.is_empty());
    }

    #[test]
    fn the_reads_first_error_is_its_answer() {
        let mut answer = Answer::new(false);
        let first = error_response(Severity::Error, "42P01", "no such table");
        let second = error_response(Severity::Error, "25P02", "aborted");
        feed(&mut answer, &[first.clone(), second, ready(b'I')]);
        assert!(!answer.parsed(), "the error came before any ParseComplete");
        let Err(Failure::Error {
            sqlstate,
            message,
            frame,
        }) = answer.into_result()
        else {
            panic!("the read did not fail");
        };
        assert_eq!(
            (sqlstate.as_str(), message.as_str()),
            ("42P01", "42P01: no such table")
        );
        assert_eq!(frame, first);
    }

    #[test]
    fn rows_larger_than_kept_fail_the_batch() {
        let mut answer = Answer::new(false);
        let big = row(&vec![b'x'; crate::reads::MAX_COMPARED_BYTES / 2]);
        assert!(!answer.take(&big).unwrap());
        assert!(matches!(answer.take(&big), Err(ConnError::TooLarge)));
    }
}
