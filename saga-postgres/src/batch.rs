//! Group commit for saves: the `save` calls that arrive while the database is
//! busy go to it together, as one statement and one commit.
//!
//! Every transition of every saga is a version-checked save. One statement per
//! save means one round trip, one plan start-up and one WAL flush each; under
//! load those, not the rows, are most of the database's work (see the
//! profile in docs/benchmarks/history.md). The batcher is a task in front of
//! the pool: a save hands its row to the task and waits for its own answer.
//! The task sends at once what is waiting, up to [`StoreConfig::save_batch`]
//! rows in one statement, with at most
//! [`StoreConfig::save_batches_in_flight`] statements running, so a lone save
//! goes out immediately and saves pile into the next statement only while
//! earlier ones are running.
//!
//! Guarantees are those of a single save: each row is updated only if its
//! version is the expected one, and its log entries are written in the same
//! statement (so the same transaction) as its row. A batch never holds two
//! saves of one saga, and no saga is in two running batches: a later save of
//! a saga waits for the earlier one. If a batch fails as a whole (a database
//! error), every save in it is tried again on its own, so one bad row cannot
//! fail the others. The batch may have committed before its answer was lost
//! (the connection dropped while committing): a row its retry finds at
//! another version is answered with an error of unknown outcome, not as a
//! conflict, so that the engine reads the saga back and acts on its own
//! transition if that is what is stored.
//!
//! [`StoreConfig::save_batch`]: crate::StoreConfig::save_batch
//! [`StoreConfig::save_batches_in_flight`]: crate::StoreConfig::save_batches_in_flight

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use uuid::Uuid;

use crate::error::Error;

/// Saves a batch through `saga_save_batch` (see the migration
/// `m20261211_000001_create_saga_save_batch`): every row whose version is the
/// expected one is updated and its log entries appended, in one statement;
/// returns the ids of the rows updated.
const SAVE_BATCH_SQL: &str = "SELECT saga_save_batch($1::jsonb) AS id";

/// One save waiting for its batch.
struct Request {
    id: Uuid,
    /// The row as [`crate::convert::save_row`] encodes it, as JSON text.
    row: String,
    /// Whether the row was updated (`false`: wrong version or no such saga).
    reply: oneshot::Sender<Result<bool, Error>>,
}

/// The handle `save` uses; the task stops when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct SaveBatcher {
    requests: mpsc::UnboundedSender<Request>,
}

impl SaveBatcher {
    /// Starts the batching task on `db`.
    pub(crate) fn start(db: DatabaseConnection, max_batch: usize, in_flight: usize) -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        let batcher = Batcher {
            db,
            max_batch: max_batch.max(1),
            permits: Arc::new(Semaphore::new(in_flight.max(1))),
            busy: Arc::new(Mutex::new(HashSet::new())),
            finished: Arc::new(Notify::new()),
        };
        tokio::spawn(batcher.run(rx));
        Self { requests }
    }

    /// Saves `row` (saga `id`) in the next batch; `true` if it was updated.
    pub(crate) async fn save(&self, id: Uuid, row: String) -> Result<bool, Error> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { id, row, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

struct Batcher {
    db: DatabaseConnection,
    max_batch: usize,
    /// One permit per statement allowed to run at once.
    permits: Arc<Semaphore>,
    /// Sagas in running batches.
    busy: Arc<Mutex<HashSet<Uuid>>>,
    /// Signalled whenever a batch finishes.
    finished: Arc<Notify>,
}

impl Batcher {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut waiting: VecDeque<Request> = VecDeque::new();
        loop {
            if waiting.is_empty() {
                match rx.recv().await {
                    Some(request) => waiting.push_back(request),
                    None => return,
                }
            }
            let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
                return;
            };
            // Whatever arrived while we waited for a free statement joins in.
            while let Ok(request) = rx.try_recv() {
                waiting.push_back(request);
            }
            let batch = self.take_batch(&mut waiting);
            if batch.is_empty() {
                // Every waiting save is of a saga whose earlier save is running.
                drop(permit);
                self.finished.notified().await;
                continue;
            }
            let db = self.db.clone();
            let busy = Arc::clone(&self.busy);
            let finished = Arc::clone(&self.finished);
            tokio::spawn(execute(db, batch, permit, busy, finished));
        }
    }

    /// Up to `max_batch` waiting saves, in arrival order, of distinct sagas
    /// none of which is in a running batch; marks those sagas busy.
    fn take_batch(&self, waiting: &mut VecDeque<Request>) -> Vec<Request> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = Vec::new();
        let mut later = VecDeque::new();
        while let Some(request) = waiting.pop_front() {
            if batch.len() < self.max_batch && busy.insert(request.id) {
                batch.push(request);
            } else {
                later.push_back(request);
            }
        }
        *waiting = later;
        batch
    }
}

async fn execute(
    db: DatabaseConnection,
    batch: Vec<Request>,
    _permit: OwnedSemaphorePermit,
    busy: Arc<Mutex<HashSet<Uuid>>>,
    finished: Arc<Notify>,
) {
    let ids: Vec<Uuid> = batch.iter().map(|r| r.id).collect();
    let size = batch.len();
    match save_rows(&db, batch.iter().map(|r| r.row.as_str())).await {
        Ok(updated) => {
            tracing::trace!(size, "save batch committed");
            for request in batch {
                let _ = request.reply.send(Ok(updated.contains(&request.id)));
            }
        }
        Err(e) if size > 1 => {
            tracing::debug!(size, error = %e, "save batch failed; saving its rows one by one");
            for request in batch {
                let retried = save_rows(&db, std::iter::once(request.row.as_str())).await;
                let _ = request
                    .reply
                    .send(after_failed_batch(request.id, retried, &e));
            }
        }
        Err(e) => {
            if let Some(request) = batch.into_iter().next() {
                let _ = request.reply.send(Err(e));
            }
        }
    }
    let mut busy = busy.lock().unwrap_or_else(PoisonError::into_inner);
    for id in &ids {
        busy.remove(id);
    }
    drop(busy);
    finished.notify_one();
}

/// The answer to a save of saga `id` tried again on its own after its batch
/// failed with `batch_error`: updated, or an error. Not updated is not a
/// conflict here: the batch may have committed this very row before its
/// answer was lost, so the outcome is unknown (the engine reads it back).
fn after_failed_batch(
    id: Uuid,
    retried: Result<HashSet<Uuid>, Error>,
    batch_error: &Error,
) -> Result<bool, Error> {
    match retried {
        Ok(updated) if updated.contains(&id) => Ok(true),
        Ok(_) => Err(Error::Unavailable {
            context: " (a batch of saves failed, and may have committed this one)".to_owned(),
            source: sea_orm::DbErr::Custom(batch_error.to_string()),
        }),
        Err(e) => Err(e),
    }
}

/// The batcher's task is gone (the runtime is shutting down).
fn stopped() -> Error {
    Error::Unavailable {
        context: " (the store's save batcher has stopped)".to_owned(),
        source: sea_orm::DbErr::Custom("save batcher stopped".to_owned()),
    }
}

/// Runs one batch statement; the ids of the rows it updated.
async fn save_rows<'a>(
    db: &DatabaseConnection,
    rows: impl Iterator<Item = &'a str>,
) -> Result<HashSet<Uuid>, Error> {
    let mut array = String::from("[");
    for (i, row) in rows.enumerate() {
        if i > 0 {
            array.push(',');
        }
        array.push_str(row);
    }
    array.push(']');
    let updated = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            SAVE_BATCH_SQL,
            [array.into()],
        ))
        .await?;
    updated
        .iter()
        .map(|row| row.try_get::<Uuid>("", "id").map_err(Error::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_error() -> Error {
        Error::Unavailable {
            context: String::new(),
            source: sea_orm::DbErr::Custom("connection reset while committing".to_owned()),
        }
    }

    #[test]
    fn a_row_not_updated_after_a_failed_batch_is_of_unknown_outcome_not_a_conflict() {
        let id = Uuid::new_v4();
        let answer = after_failed_batch(id, Ok(HashSet::new()), &batch_error());
        let e = answer.expect_err("not Ok(false), which the store reports as a conflict");
        assert_eq!(
            saga_core::Error::from(e).kind(),
            saga_core::ErrorKind::Unavailable
        );
        assert!(matches!(
            after_failed_batch(id, Ok(HashSet::from([id])), &batch_error()),
            Ok(true)
        ));
        assert!(after_failed_batch(id, Err(batch_error()), &batch_error()).is_err());
    }
}
