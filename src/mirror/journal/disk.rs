//! The journal directory on disk: its lock, its identity (`journal.id`), its segment files, and
//! reading them back on open, where each segment is scanned ([`format::scan`]) and a torn or
//! corrupt tail is cut (an intent is only acknowledged after its fsync, so what is cut was never
//! acknowledged).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use tracing::{error, warn};

use super::format::{self, Tail, MAGIC};
use super::state::State;
use super::writer::prealloc_chunk;
use super::{io_err, JournalCounters, JournalError, JournalOptions};

/// Where the writer goes on after open: the newest segment and its end.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tip {
    pub base: u64,
    /// The end of its records.
    pub len: u64,
    /// The file's length (zeroed space included).
    pub allocated: u64,
}

pub(super) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

/// Reads every segment of the directory into `state` (cutting torn tails), or starts the first
/// one when there is none.
pub(super) fn recover(
    opts: &JournalOptions,
    state: &mut State,
    counters: &JournalCounters,
) -> Result<Tip, JournalError> {
    let dir = &opts.dir;
    let bases = segment_bases(dir)?;
    let mut allocated = 0;
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        let last = i + 1 == bases.len();
        let (bytes, file_len) = load_segment(&path, base, state, counters, last)?;
        state.add_segment(base, path, bytes);
        state.last_id = state.last_id.max(base.saturating_sub(1));
        allocated = file_len;
    }
    match state.segments.iter().next_back() {
        Some((&base, seg)) => Ok(Tip {
            base,
            len: seg.bytes,
            allocated: allocated.max(seg.bytes),
        }),
        None => first_segment(opts, state),
    }
}

/// The base ids of the segment files, in order.
fn segment_bases(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let mut bases: Vec<u64> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse::<u64>().ok()
        })
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

/// A new journal's segment, right after the last id (none yet: 1).
fn first_segment(opts: &JournalOptions, state: &mut State) -> Result<Tip, JournalError> {
    let base = state.last_id + 1;
    let path = segment_path(&opts.dir, base);
    let chunk = prealloc_chunk(opts);
    create_segment(&path, chunk)?;
    sync_dir(&opts.dir)?;
    let len = MAGIC.len() as u64;
    state.add_segment(base, path, len);
    Ok(Tip {
        base,
        len,
        allocated: chunk.max(len),
    })
}

/// Reads one segment into `state`; cuts a torn or corrupt tail. Returns the length of its
/// records and the file's length (zeroed space included).
fn load_segment(
    path: &Path,
    base: u64,
    state: &mut State,
    counters: &JournalCounters,
    last: bool,
) -> Result<(u64, u64), JournalError> {
    let data = fs::read(path).map_err(io_err(path))?;
    let scan = format::scan(&data);
    state.add_records(base, &scan.records);
    match scan.tail {
        Tail::Clean | Tail::Zeros => Ok((scan.end as u64, data.len() as u64)),
        Tail::Torn | Tail::NoMagic => {
            counters.cut_tails.fetch_add(1, Ordering::Relaxed);
            let cut_bytes = data.len() - scan.end.max(MAGIC.len()).min(data.len());
            if last {
                warn!(segment = %path.display(), offset = scan.end, cut_bytes, "torn or corrupt journal tail cut");
            } else {
                error!(segment = %path.display(), offset = scan.end, cut_bytes,
                    "corrupt record inside an older journal segment: the rest of that segment is cut");
            }
            let end = cut_tail(path, scan.end)?;
            Ok((end, end))
        }
    }
}

/// Cuts a segment at `end`, where its good records end (0: not even the magic line, which is
/// written again), synced. Returns the new end.
fn cut_tail(path: &Path, end: usize) -> Result<u64, JournalError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let end = if end == 0 {
        f.set_len(0).map_err(io_err(path))?;
        f.write_all_at(MAGIC, 0).map_err(io_err(path))?;
        MAGIC.len() as u64
    } else {
        f.set_len(end as u64).map_err(io_err(path))?;
        end as u64
    };
    f.sync_all().map_err(io_err(path))?;
    Ok(end)
}

/// A new segment: the magic line, then zeros up to `len` bytes, synced.
pub(super) fn create_segment(path: &Path, len: u64) -> Result<File, JournalError> {
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let mut head = MAGIC.to_vec();
    head.resize((len as usize).max(MAGIC.len()), 0);
    f.write_all(&head).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    Ok(f)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Takes the directory's lock (`flock` on `lock`): one pgbridge process per journal.
pub(super) fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(JournalError::Locked(dir.to_path_buf()));
    }
    Ok(f)
}

/// The journal's identity, created once and kept in `journal.id`.
pub(super) fn journal_uuid(dir: &Path) -> Result<String, JournalError> {
    let path = dir.join("journal.id");
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    let id: u128 = rand::random();
    let text = format!("{id:032x}");
    let tmp = dir.join("journal.id.tmp");
    fs::write(&tmp, &text)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(io_err(&path))?;
    sync_dir(dir)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    fn load(path: &Path, state: &mut State, counters: &JournalCounters) -> (u64, u64) {
        load_segment(path, 1, state, counters, true).unwrap()
    }

    #[test]
    fn a_torn_tail_is_cut_on_disk_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        let mut data = BytesMut::from(&MAGIC[..]);
        format::intent(&mut data, 1, b"payload");
        let good = data.len() as u64;
        data.extend_from_slice(b"torn");
        fs::write(&path, &data).unwrap();
        let (mut state, counters) = (State::default(), JournalCounters::default());
        assert_eq!(load(&path, &mut state, &counters), (good, good));
        assert_eq!(fs::metadata(&path).unwrap().len(), good);
        assert_eq!(counters.cut_tails.load(Ordering::Relaxed), 1);
        assert_eq!(state.last_id, 1);
    }

    #[test]
    fn zeroed_space_is_kept_and_a_file_without_its_magic_line_is_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        create_segment(&path, 4096).unwrap();
        let (mut state, counters) = (State::default(), JournalCounters::default());
        assert_eq!(load(&path, &mut state, &counters), (8, 4096));
        fs::write(&path, b"garbage").unwrap();
        assert_eq!(load(&path, &mut state, &counters), (8, 8));
        assert_eq!(fs::read(&path).unwrap(), MAGIC);
        assert_eq!(counters.cut_tails.load(Ordering::Relaxed), 1);
    }
}
