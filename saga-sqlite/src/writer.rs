//! The one writer: every write of the store goes through one task, which
//! commits what is waiting together.
//!
//! SQLite has one writer per file, and with `synchronous=FULL` each commit
//! costs a flush of the write-ahead log to the disk. So the store does not
//! let its callers race for the write lock: a write hands its operation to
//! the writer task and waits for its own answer. The task takes everything
//! that is waiting (up to [`MAX_BATCH`] operations), runs each inside its own
//! savepoint of one transaction, commits once, and only then answers: one
//! flush for the whole group, and no answer before its data is on disk.
//!
//! The group's transaction takes the write lock when it begins (`BEGIN
//! IMMEDIATE`), so a group waits at most once for another writer of the file
//! (up to the busy timeout) and then fails as a whole, at once: begun
//! deferred, it would take the lock at its first write and each operation
//! that met the lock taken would wait the busy timeout again.
//!
//! Each operation keeps the guarantees it has alone: a failing operation
//! rolls back to its savepoint, so it leaves nothing behind and fails
//! nothing else; a version-checked save that finds another version writes
//! nothing. If the commit itself fails, every operation of the group gets
//! the error (none of them happened).

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::ops::{Answer, Op};

/// Most operations committed together.
pub(crate) const MAX_BATCH: usize = 128;

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Answer, Error>>,
}

/// The handle writes use; the task stops when the last handle is dropped.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    requests: mpsc::UnboundedSender<Request>,
}

impl Writer {
    /// Starts the writer task on `db`; `committed` sees every committed answer.
    pub(crate) fn start(
        db: DatabaseConnection,
        committed: impl Fn(&Answer) + Send + 'static,
    ) -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(db, rx, committed));
        Self { requests }
    }

    /// Runs `op` in the next group and returns its answer once committed.
    pub(crate) async fn write(&self, op: Op) -> Result<Answer, Error> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { op, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(
    db: DatabaseConnection,
    mut rx: mpsc::UnboundedReceiver<Request>,
    committed: impl Fn(&Answer),
) {
    let mut group = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut group, MAX_BATCH).await > 0 {
        let size = group.len();
        match write_group(&db, &group).await {
            Ok(answers) => {
                tracing::trace!(size, "write group committed");
                for (request, answer) in group.drain(..).zip(answers) {
                    if let Ok(answer) = &answer {
                        committed(answer);
                    }
                    let _ = request.reply.send(answer);
                }
            }
            Err(e) => {
                tracing::warn!(size, error = %e, "write group failed; nothing of it was committed");
                let message = e.to_string();
                let kind = e.kind();
                for request in group.drain(..) {
                    let _ = request.reply.send(Err(group_failed(kind, &message)));
                }
            }
        }
    }
}

/// Runs the group in one transaction, each operation in its own savepoint.
/// `Err` only when the transaction could not begin or commit.
async fn write_group(
    db: &DatabaseConnection,
    group: &[Request],
) -> Result<Vec<Result<Answer, Error>>, Error> {
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        })
        .await?;
    let mut answers = Vec::with_capacity(group.len());
    for request in group {
        answers.push(in_savepoint(&txn, &request.op).await?);
    }
    txn.commit().await?;
    Ok(answers)
}

/// `op`'s answer, rolled back to before it when it fails. The outer `Err`:
/// the savepoint itself failed (the transaction is broken).
async fn in_savepoint(txn: &DatabaseTransaction, op: &Op) -> Result<Result<Answer, Error>, Error> {
    txn.execute_unprepared("SAVEPOINT op").await?;
    let answer = op.apply(txn).await;
    if answer.is_err() {
        txn.execute_unprepared("ROLLBACK TO op").await?;
    }
    txn.execute_unprepared("RELEASE op").await?;
    Ok(answer)
}

/// The error each operation of a failed group gets.
fn group_failed(kind: saga_core::ErrorKind, message: &str) -> Error {
    let source = sea_orm::DbErr::Custom(message.to_owned());
    match kind {
        saga_core::ErrorKind::Unavailable => Error::Unavailable {
            context: " (the commit of a write group failed)".to_owned(),
            source,
        },
        kind => Error::Database { kind, source },
    }
}

/// The writer task is gone (the runtime is shutting down).
fn stopped() -> Error {
    Error::Unavailable {
        context: " (the store's writer has stopped)".to_owned(),
        source: sea_orm::DbErr::Custom("writer stopped".to_owned()),
    }
}
