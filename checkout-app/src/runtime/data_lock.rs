//! One process per data folder.
//!
//! The embedded stack keeps its SQLite files in `DATA_DIR`. A second process
//! on the same folder would run a second engine and second participants on
//! the same files, each service on its own connection, where the services
//! count on SQLite's one writer per file: it would fail in confusing ways
//! (busy databases, ports in use) instead of saying what is wrong. So the
//! stack holds an exclusive lock on `DATA_DIR/checkout-app.lock` while it
//! runs, and a second one is refused at start with the reason (and the
//! holder's process id, where the platform lets it be read). The operating
//! system releases the lock when the holder exits, even on `kill -9`, so a
//! crash leaves nothing to clean up. On a file system without locks the
//! stack starts unguarded, with a warning.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// The lock file's name in the data folder.
pub const LOCK_FILE: &str = "checkout-app.lock";

/// The held lock on a data folder; released on drop.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes the lock on `folder` (which must exist) and writes this process's
/// id into it for the message another process would get. Where the file
/// system cannot lock files, warns and goes on without the lock.
///
/// # Errors
/// [`Error::Config`] when another process holds the lock (with its id, when
/// it wrote one) or the lock file cannot be opened or locked.
pub fn lock_data_dir(folder: &Path) -> Result<DataDirLock> {
    let path = folder.join(LOCK_FILE);
    let cannot = |e: std::io::Error| {
        Error::Config(format!(
            "cannot lock the data folder {} ({}): {e}",
            folder.display(),
            path.display()
        ))
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(cannot)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // The id is only for the message: an unreadable one is left out.
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            return Err(Error::Config(format!(
                "the data folder {} is in use by another checkout-app process{holder}: \
                 stop that one first, or give this one a DATA_DIR of its own",
                folder.display()
            )));
        }
        // Some file systems (certain network, FUSE or container mounts) have
        // no locks: a folder that worked before keeps working, unguarded.
        Err(TryLockError::Error(e)) if cannot_lock_here(&e) => {
            tracing::warn!(folder = %folder.display(), error = %e, "the data folder's file system cannot lock files: a second process on it would not be refused");
            return Ok(DataDirLock { _file: file });
        }
        Err(TryLockError::Error(e)) => return Err(cannot(e)),
    }
    file.set_len(0).map_err(cannot)?;
    file.rewind().map_err(cannot)?;
    writeln!(file, "{}", std::process::id()).map_err(cannot)?;
    Ok(DataDirLock { _file: file })
}

/// Whether `e` says the file system has no locks: unsupported, or (Linux)
/// `ENOLCK`, which NFS without its lock daemon answers.
fn cannot_lock_here(e: &std::io::Error) -> bool {
    const ENOLCK_LINUX: i32 = 37;
    e.kind() == std::io::ErrorKind::Unsupported
        || (cfg!(target_os = "linux") && e.raw_os_error() == Some(ENOLCK_LINUX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_folder_and_the_holder_until_the_first_is_dropped() {
        let folder = tempfile::tempdir().expect("folder");
        let first = lock_data_dir(folder.path()).expect("first");
        let refused = lock_data_dir(folder.path()).expect_err("second");
        let message = refused.to_string();
        assert!(
            message.contains(&folder.path().display().to_string()),
            "{message}"
        );
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        lock_data_dir(folder.path()).expect("free again");
    }
}
