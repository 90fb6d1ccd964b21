//! Copying the SQLite WAL back into the database file off the writer's
//! commits.
//!
//! SQLite's default (`wal_autocheckpoint=1000`) runs a checkpoint inside the
//! commit that takes the WAL past 1,000 pages: the writer copies the pages and
//! fsyncs the database file while every append of the next batch waits. Here
//! the writer connection's WAL hook (which replaces SQLite's automatic
//! checkpoint) notes the WAL's size at each commit, and past
//! [`WriterConfig::checkpoint_from_pages`](super::WriterConfig) the writer
//! wakes a thread of its own, with a connection of its own, that runs a
//! passive checkpoint (`PRAGMA wal_checkpoint(PASSIVE)`: it never waits for a
//! lock and never blocks the writer). The thread sleeps while nothing wakes
//! it.
//!
//! The writer keeps a limit: should the thread fall behind (or be turned
//! off), a commit that leaves the WAL at
//! [`WriterConfig::wal_limit_pages`](super::WriterConfig) or more runs the
//! checkpoint itself, as SQLite's default does at 1,000, so the WAL stays
//! bounded either way. (A reader that keeps one snapshot for a long time
//! keeps any checkpoint from finishing, with or without this thread.)

use std::cell::Cell;
use std::os::raw::c_int;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::hooks::Wal;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::watch;

use super::Error;
use super::sqlite_writer::lite;

/// How long the thread waits before trying again when a checkpoint could
/// not copy the whole WAL (a reader still needs its older pages).
const PINNED_RETRY: Duration = Duration::from_millis(100);

thread_local! {
    /// The WAL's size in pages after this thread's last commit on the writer
    /// connection (-1: no commit since it was read).
    static WAL_PAGES: Cell<c_int> = const { Cell::new(-1) };
}

/// The writer connection's WAL hook. SQLite calls it on the committing
/// thread, which for the writer connection is the writer's thread.
fn note_wal_pages(_: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(pages));
    Ok(())
}

/// What the writer's thread does about the WAL after each commit.
pub(crate) struct WalPolicy {
    checkpointer: Option<Checkpointer>,
    /// WAL pages from which the writer checkpoints itself.
    limit: u32,
}

impl WalPolicy {
    /// The policy of a store whose database file is `path` (`None`: in
    /// memory, no WAL): starts the checkpoint thread unless `wake_from` is
    /// `None`.
    pub(crate) fn start(
        path: Option<PathBuf>,
        wake_from: Option<u32>,
        limit: u32,
    ) -> Result<Self, Error> {
        let checkpointer = match (path, wake_from) {
            (Some(path), Some(wake_from)) => Some(Checkpointer::start(path, wake_from)?),
            _ => None,
        };
        Ok(Self {
            checkpointer,
            limit,
        })
    }

    /// How many checkpoints the thread has finished, as they finish (`None`
    /// without the thread).
    pub(crate) fn checkpoints(&self) -> Option<watch::Receiver<u64>> {
        self.checkpointer.as_ref().map(|c| c.done.clone())
    }

    /// Installs the WAL hook on the writer connection (its lock held).
    pub(crate) fn install(&self, direct: &Connection) {
        direct.wal_hook(Some(note_wal_pages));
    }

    /// After a commit on this thread, with the connection's lock held.
    pub(crate) fn after_commit(&self, direct: &Connection) {
        let pages = WAL_PAGES.with(|p| p.replace(-1));
        let Ok(pages) = u32::try_from(pages) else {
            return;
        };
        if pages >= self.limit {
            if let Err(e) = checkpoint(direct) {
                tracing::warn!(error = %e, pages, "the writer's WAL checkpoint failed");
            }
        } else if let Some(c) = &self.checkpointer
            && pages >= c.wake_from
        {
            c.wake();
        }
    }
}

/// The checkpoint thread's handle; the thread stops when it is dropped.
struct Checkpointer {
    /// WAL pages from which a commit wakes the thread.
    wake_from: u32,
    wake: mpsc::SyncSender<()>,
    done: watch::Receiver<u64>,
}

impl Checkpointer {
    /// Starts the thread on its own connection to the database file at
    /// `path` (already in WAL mode).
    fn start(path: PathBuf, wake_from: u32) -> Result<Self, Error> {
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(lite("open the checkpoint connection"))?;
        // One pending wake-up is enough: a checkpoint copies everything
        // committed before it starts.
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let (finished, done) = watch::channel(0u64);
        std::thread::Builder::new()
            .name("mandate-sqlite-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    match checkpoint(&conn) {
                        Ok((log, copied)) => {
                            finished.send_modify(|n| *n += 1);
                            if copied < log {
                                std::thread::sleep(PINNED_RETRY);
                            }
                        }
                        // The writer's own limit still bounds the WAL.
                        Err(e) => {
                            tracing::warn!(error = %e, "a passive WAL checkpoint failed");
                            std::thread::sleep(PINNED_RETRY);
                        }
                    }
                }
            })
            .map_err(|e| {
                Error::Corrupt(format!("cannot start the SQLite checkpoint thread: {e}"))
            })?;
        Ok(Self {
            wake_from,
            wake,
            done,
        })
    }

    /// Never blocks.
    fn wake(&self) {
        let _ = self.wake.try_send(());
    }
}

/// One passive checkpoint: `(frames in the WAL, frames copied so far)`.
fn checkpoint(conn: &Connection) -> Result<(i64, i64), Error> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    })
    .map_err(lite("checkpoint the WAL"))
}
