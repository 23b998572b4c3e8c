//! The exactly-once PostgreSQL sink.
//!
//! Each subtask writes the rows of one checkpoint interval into one transaction. At the barrier
//! it sends the buffered rows, then `PREPARE TRANSACTION '<id>'` (the rows are durable in the
//! database but invisible) and lists the id in operator state with the checkpoint's id. When the
//! checkpoint completes it runs `COMMIT PREPARED '<id>'`. On restore, the transactions the
//! snapshot lists are committed (the checkpoint completed, so they belong to the output; one that
//! is gone was committed already, by the notification before the crash or by an earlier restore
//! from the same snapshot), and prepared transactions of this sink that no snapshot lists are
//! rolled back (rows after the snapshot, which the restored job writes again).
//!
//! A prepared transaction keeps its row locks until `COMMIT PREPARED`, which the subtask runs when
//! it is told the checkpoint completed. A write of a key that a prepared transaction holds (an
//! upsert of the same key, an insert of a duplicate into a unique index) waits for that commit,
//! and a subtask waiting inside the server can never be told: the job would hang. So an upsert
//! sink never writes while its own prepared transactions wait for their commit, and an upsert
//! that still finds a key locked (by another subtask or client) gives up after
//! [`UPSERT_LOCK_TIMEOUT`]: the open transaction is rolled back, and the rows already sent into
//! it, which the sink keeps until the transaction is prepared, are written again later. Either
//! way the rows are *held*: kept in memory (the last row per key) and, at a barrier, in the
//! snapshot, then written once the locks are gone. The rows sent are kept as the last row per
//! key, for at most [`PostgresSink::max_rows_kept`] keys: a transaction that sent more and then
//! meets a lock is rolled back and fails the job, whose restart resumes from its last checkpoint
//! (memory stays bounded, nothing is lost). No savepoints: each would be a subtransaction, which
//! cost every write (8 % of the insert benchmark) and, past 64 in a transaction, every other
//! session's snapshots.
//! An insert that waits [`INSERT_LOCK_TIMEOUT`] fails the job (its restore retries), naming the
//! likely duplicate and the fix.

use crate::sql::{self, last_row_per_key, quote_literal, transaction_id, writer_of, WriteMode};
use crate::value::SqlValue;
use postgres::{Client, NoTls};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use weir::{
    put_list, BoxError, CheckpointId, Exclusive, OperatorStateSnapshot, Redistribution, SinkContext, SinkFunction,
};

const STATE: &str = "prepared-transactions";
/// Rows held back at a barrier: part of the checkpoint's output that no transaction holds yet.
const HELD: &str = "held-rows";
/// Rows sent per statement.
const BATCH: usize = 1000;
/// SQLSTATE `undefined_object`: `COMMIT PREPARED` of an id that is not prepared.
const UNDEFINED_OBJECT: &str = "42704";
/// SQLSTATE `lock_not_available`: a statement waited longer than `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// SQLSTATE `unique_violation`.
const UNIQUE_VIOLATION: &str = "23505";
/// How long an upsert waits for a locked key before the sink holds its rows back instead: long
/// enough for another client's short transaction, short enough that a subtask never stalls its
/// checkpoints on a lock that only a checkpoint's completion releases.
const UPSERT_LOCK_TIMEOUT: Duration = Duration::from_millis(200);
/// How long an insert waits for a lock before the job fails: past a schema change or another
/// client's transaction, and not forever on a duplicate of a row this sink has prepared.
const INSERT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Distinct keys an upsert sink keeps of its open transaction, by default (see
/// [`PostgresSink::max_rows_kept`]).
pub const DEFAULT_MAX_ROWS_KEPT: usize = 100_000;
/// Attempts at `COMMIT PREPARED` when the checkpoint completes, before the job fails (and its
/// restore commits it).
const COMMIT_ATTEMPTS: u32 = 5;

/// A transaction prepared at a checkpoint's barrier, waiting for the checkpoint to complete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Prepared {
    checkpoint_id: CheckpointId,
    gid: String,
    writer: u32,
}

/// A row held back in a snapshot (a struct, so that fields can be added).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HeldRow {
    values: Vec<SqlValue>,
}

type RowFn<T> = Arc<dyn Fn(&T) -> Vec<SqlValue> + Send + Sync>;

/// Writes rows to a PostgreSQL table, exactly once, with two-phase commit. The server needs
/// `max_prepared_transactions` above the sink's parallelism (it is 0 by default, which disables
/// `PREPARE TRANSACTION`).
pub struct PostgresSink<T> {
    config: Config<T>,
    // Per subtask (a client is not `Sync`).
    /// Writes rows and prepares (it has the open transaction).
    client: Exclusive<Option<Client>>,
    /// Commits and rolls back prepared transactions: `COMMIT PREPARED` cannot run on a
    /// connection with an open transaction, which the writer has whenever rows came after the
    /// barrier.
    committer: Exclusive<Option<Client>>,
    subtask: u32,
    run: String,
    /// Rows not sent yet: buffered up to a statement's worth, or held back (upsert only).
    rows: Vec<Vec<SqlValue>>,
    /// The rows an upsert sink sent into the open transaction, written again if a lock makes it
    /// roll the transaction back.
    written: SentRows,
    /// How many rows `invoke` gathers before it tries to send them: one statement's worth, more
    /// while rows are held back (so that holding does not dedupe the held rows at every record).
    send_at: usize,
    /// Whether the job's log says yet that rows were held back for a lock of someone else's.
    warned_locked: bool,
    in_transaction: bool,
    pending: Vec<Prepared>,
}

/// What the job configured: the same in every subtask.
#[derive(Clone)]
struct Config<T> {
    url: String,
    table: String,
    columns: Vec<String>,
    mode: WriteMode,
    row: RowFn<T>,
    prefix: String,
    max_rows_kept: usize,
}

impl<T: Clone> Clone for PostgresSink<T> {
    /// The configuration, with no connection or subtask state (one copy per subtask).
    fn clone(&self) -> Self {
        Self::configured(self.config.clone())
    }
}

/// The rows an upsert sink sent into its open transaction: the last row per key, while they are
/// not found to hold more than `limit` keys. Deduplicated when they pass the limit or have
/// doubled since the last time, so keeping costs amortized constant time per row and at most
/// about twice the limit in rows (more keys than the limit are found at the next deduplication).
#[derive(Default)]
struct SentRows {
    rows: Vec<Vec<SqlValue>>,
    /// Deduplicate when this many rows are kept (0: past the limit).
    dedupe_at: usize,
    /// More keys were sent than the limit: the rows are no longer kept.
    overflowed: bool,
}

impl SentRows {
    fn keep(&mut self, rows: Vec<Vec<SqlValue>>, key_positions: &[usize], limit: usize) {
        if self.overflowed {
            return;
        }
        self.rows.extend(rows);
        let past_limit = limit.saturating_add(1);
        if self.rows.len() < if self.dedupe_at == 0 { past_limit } else { self.dedupe_at } {
            return;
        }
        self.rows = last_row_per_key(std::mem::take(&mut self.rows), key_positions);
        if self.rows.len() > limit {
            *self = SentRows { overflowed: true, ..SentRows::default() };
            return;
        }
        self.dedupe_at = (2 * self.rows.len()).max(past_limit);
    }

    /// The rows to write again, in the order they were sent (a key's may repeat), or `None` when
    /// they were too many to keep.
    fn take(&mut self) -> Option<Vec<Vec<SqlValue>>> {
        let overflowed = self.overflowed;
        let rows = std::mem::take(self).rows;
        (!overflowed).then_some(rows)
    }
}

impl<T> PostgresSink<T> {
    /// Inserts a row per record into `table` (`schema.table` works), `row` giving the values of
    /// `columns` in order.
    pub fn insert(
        url: impl Into<String>,
        table: impl Into<String>,
        columns: &[&str],
        row: impl Fn(&T) -> Vec<SqlValue> + Send + Sync + 'static,
    ) -> Self {
        let table = table.into();
        Self::configured(Config {
            url: url.into(),
            prefix: format!("weir-{table}"),
            table,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            mode: WriteMode::Insert,
            row: Arc::new(row),
            max_rows_kept: DEFAULT_MAX_ROWS_KEPT,
        })
    }

    fn configured(config: Config<T>) -> Self {
        PostgresSink {
            config,
            client: Exclusive::new(None),
            committer: Exclusive::new(None),
            subtask: 0,
            run: String::new(),
            rows: Vec::new(),
            written: SentRows::default(),
            send_at: BATCH,
            warned_locked: false,
            in_transaction: false,
            pending: Vec::new(),
        }
    }

    /// Upserts instead: a row replaces the table's row with the same `key` columns (which need a
    /// unique index). The rows of one key should reach one subtask (`key_by` the key before the
    /// sink), as in Flink: rows of one key from two subtasks land in no defined order, and lock
    /// each other's keys until checkpoints complete.
    pub fn upsert(mut self, key: &[&str]) -> Self {
        self.config.mode = WriteMode::Upsert { key: key.iter().map(|c| c.to_string()).collect() };
        self
    }

    /// How many keys' rows an upsert sink keeps of its open transaction (default
    /// [`DEFAULT_MAX_ROWS_KEPT`]), to write them again if a lock makes it roll the transaction
    /// back. A transaction that has written more keys and then meets a lock fails the job
    /// instead (it restarts from its last checkpoint, so nothing is lost), naming this setting:
    /// raise it, at the cost of memory, for intervals that write that many keys.
    pub fn max_rows_kept(mut self, rows: usize) -> Self {
        self.config.max_rows_kept = rows;
        self
    }

    /// The prefix of the ids of the transactions this sink prepares (default `weir-<table>`).
    /// Two sinks (or jobs) writing the same database need different prefixes: on restore a sink
    /// rolls back the prepared transactions of its prefix that its snapshot does not list.
    pub fn transaction_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.prefix = prefix.into();
        self
    }

    /// Creates the table unless it exists: `CREATE TABLE IF NOT EXISTS <table> (<definition>)`,
    /// for a job to call before it starts.
    pub fn create_table(&self, definition: &str) -> Result<(), BoxError> {
        let mut client = Client::connect(&self.config.url, NoTls)
            .map_err(|e| self.context(&format!("cannot connect to {}", redact(&self.config.url)), e))?;
        let ddl = format!("CREATE TABLE IF NOT EXISTS {} ({definition})", sql::quote_identifier(&self.config.table));
        client.batch_execute(&ddl).map_err(|e| self.context("cannot create the table", e))
    }

    fn context(&self, doing: &str, e: postgres::Error) -> BoxError {
        format!("PostgreSQL sink (table {}): {doing}: {}", self.config.table, describe(&e)).into()
    }

    fn connect(&self) -> Result<Client, BoxError> {
        Client::connect(&self.config.url, NoTls)
            .map_err(|e| self.context(&format!("cannot connect to {}", redact(&self.config.url)), e))
    }

    /// The writer's connection (which waits at most [`Self::lock_timeout`] for a lock).
    fn client(&mut self) -> Result<&mut Client, BoxError> {
        if self.client.get_mut().is_none() {
            let mut client = self.connect()?;
            let set = format!("SET lock_timeout = {}", self.lock_timeout().as_millis());
            client.batch_execute(&set).map_err(|e| self.context("cannot set lock_timeout", e))?;
            *self.client.get_mut() = Some(client);
        }
        Ok(self.client.get_mut().as_mut().expect("connected above"))
    }

    fn lock_timeout(&self) -> Duration {
        match self.config.mode {
            WriteMode::Upsert { .. } => UPSERT_LOCK_TIMEOUT,
            WriteMode::Insert => INSERT_LOCK_TIMEOUT,
        }
    }

    /// The positions of the upsert key's columns (`None`: plain inserts).
    fn upsert_key(&self) -> Option<Vec<usize>> {
        match &self.config.mode {
            WriteMode::Upsert { key } => {
                Some(key.iter().filter_map(|k| self.config.columns.iter().position(|c| c == k)).collect())
            }
            WriteMode::Insert => None,
        }
    }

    /// The committer's connection, made again when it broke.
    fn committer(&mut self) -> Result<&mut Client, BoxError> {
        if self.committer.get_mut().as_ref().is_none_or(|c| c.is_closed()) {
            let client = self.connect()?;
            *self.committer.get_mut() = Some(client);
        }
        Ok(self.committer.get_mut().as_mut().expect("connected above"))
    }

    /// Sends the buffered rows into the open transaction (beginning it if needed). The sink holds
    /// them back instead while a key may be locked, unless `may_hold` is false (the stream's end,
    /// when this subtask's own prepared transactions are committed already); see the module's doc.
    fn flush(&mut self, may_hold: bool) -> Result<(), BoxError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut rows = std::mem::take(&mut self.rows);
        let upsert_key = self.upsert_key();
        if let Some(positions) = &upsert_key {
            rows = last_row_per_key(rows, positions);
            if may_hold && !self.pending.is_empty() {
                self.hold(rows);
                return Ok(());
            }
        }
        let (table, columns, mode) = (self.config.table.clone(), self.config.columns.clone(), self.config.mode.clone());
        let begin = !self.in_transaction;
        let client = self.client()?;
        let result = (|| -> Result<(), postgres::Error> {
            if begin {
                client.batch_execute("BEGIN")?;
            }
            if upsert_key.is_some() && !may_hold {
                client.batch_execute("SET LOCAL lock_timeout = 0")?;
            }
            for chunk in rows.chunks(BATCH) {
                let statement = sql::write_statement(&table, &columns, &mode, chunk.len());
                let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    chunk.iter().flatten().map(|v| v as &(dyn postgres::types::ToSql + Sync)).collect();
                client.execute(statement.as_str(), &params)?;
            }
            Ok(())
        })();
        self.in_transaction = true;
        match (result, &upsert_key) {
            (Ok(()), _) => {
                self.send_at = BATCH;
                if let Some(positions) = &upsert_key {
                    self.written.keep(rows, positions, self.config.max_rows_kept);
                }
                Ok(())
            }
            (Err(e), Some(positions)) if may_hold && has_code(&e, LOCK_NOT_AVAILABLE) => {
                // Someone else's transaction holds a key: the open transaction is lost (a failed
                // statement aborts it); its rows and these are written again later.
                let client = self.client()?;
                client.batch_execute("ROLLBACK").map_err(|e| self.context("cannot roll back", e))?;
                self.in_transaction = false;
                let Some(mut again) = self.written.take() else {
                    let fix = format!(
                        "a key stayed locked for {} ms by another transaction, and the rolled-back transaction had written more keys than the sink keeps to write again ({}), so the job fails instead (nothing of that transaction was committed): key_by the upsert key before the sink, or raise PostgresSink::max_rows_kept",
                        UPSERT_LOCK_TIMEOUT.as_millis(),
                        self.config.max_rows_kept
                    );
                    return Err(self.context(&fix, e));
                };
                again.extend(rows);
                if !std::mem::replace(&mut self.warned_locked, true) {
                    tracing::warn!(
                        "PostgreSQL sink (table {table}) subtask {}: a key stayed locked for {} ms by another transaction; rows are held back until it is released (another subtask writing the same keys? key_by the upsert key before the sink)",
                        self.subtask,
                        UPSERT_LOCK_TIMEOUT.as_millis()
                    );
                }
                self.hold(last_row_per_key(again, positions));
                Ok(())
            }
            (Err(e), None) if has_code(&e, UNIQUE_VIOLATION) => Err(self.context(
                "cannot insert rows (write rows that share a key with PostgresSink::upsert, or give the table no unique index on it)",
                e,
            )),
            (Err(e), None) if has_code(&e, LOCK_NOT_AVAILABLE) => {
                let waited = format!(
                    "cannot insert rows: waited {} s for a lock (most likely a duplicate of a unique key in a transaction of this sink that waits for its checkpoint to complete: write rows that share a key with PostgresSink::upsert, or give the table no unique index on it; else another client's lock)",
                    INSERT_LOCK_TIMEOUT.as_secs()
                );
                Err(self.context(&waited, e))
            }
            // A failed statement aborts the transaction: the job restarts from its last checkpoint.
            (Err(e), _) => Err(self.context("cannot write rows", e)),
        }
    }

    /// Keeps deduplicated rows for a later flush; `invoke` tries again once as many new rows came.
    fn hold(&mut self, rows: Vec<Vec<SqlValue>>) {
        self.send_at = BATCH.max(2 * rows.len());
        self.rows = rows;
    }

    /// Commits a prepared transaction; one that is not prepared any more was committed already.
    fn commit_prepared(&mut self, gid: &str) -> Result<bool, BoxError> {
        let client = self.committer()?;
        match client.batch_execute(&format!("COMMIT PREPARED {}", quote_literal(gid))) {
            Ok(()) => Ok(true),
            Err(e) if has_code(&e, UNDEFINED_OBJECT) => Ok(false),
            Err(e) => Err(self.context(&format!("cannot commit prepared transaction '{gid}'"), e)),
        }
    }

    fn commit_up_to(&mut self, checkpoint_id: CheckpointId) -> Result<(), BoxError> {
        let due: Vec<Prepared> = self.pending.iter().filter(|p| p.checkpoint_id <= checkpoint_id).cloned().collect();
        for p in due {
            let mut attempt = 1;
            loop {
                match self.commit_prepared(&p.gid) {
                    Ok(_) => break,
                    Err(e) if attempt < COMMIT_ATTEMPTS => {
                        tracing::warn!("{e}; retrying ({attempt}/{COMMIT_ATTEMPTS})");
                        // A broken connection is made again at the next attempt.
                        std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
                        attempt += 1;
                    }
                    // The transaction stays prepared: the restore from this checkpoint commits it.
                    Err(e) => return Err(e),
                }
            }
            self.pending.retain(|q| q.gid != p.gid);
        }
        Ok(())
    }

    /// Restore: commits what the snapshot lists for this subtask, rolls back this sink's other
    /// prepared transactions (of the writers this subtask now stands for).
    fn recover(&mut self, restored: Vec<Prepared>, parallelism: u32, was_restored: bool) -> Result<(), BoxError> {
        let subtask = self.subtask;
        let mine: Vec<Prepared> = restored.iter().filter(|p| p.writer % parallelism == subtask).cloned().collect();
        let (mut committed, mut already) = (0, 0);
        for p in &mine {
            if self.commit_prepared(&p.gid)? {
                committed += 1;
            } else {
                already += 1;
            }
        }
        let listed: Vec<&str> = restored.iter().map(|p| p.gid.as_str()).collect();
        let (prefix, table) = (self.config.prefix.clone(), self.config.table.clone());
        let client = self.committer()?;
        let prepared =
            client.query("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()", &[]).map_err(
                |e| format!("PostgreSQL sink (table {table}): cannot list prepared transactions: {}", describe(&e)),
            )?;
        let mut rolled_back = Vec::new();
        for row in prepared {
            let gid: String = row.get(0);
            let ours = writer_of(&prefix, &gid).is_some_and(|w| w % parallelism == subtask);
            if ours && !listed.contains(&gid.as_str()) {
                client.batch_execute(&format!("ROLLBACK PREPARED {}", quote_literal(&gid))).map_err(|e| {
                    format!(
                        "PostgreSQL sink (table {table}): cannot roll back prepared transaction '{gid}': {}",
                        describe(&e)
                    )
                })?;
                rolled_back.push(gid);
            }
        }
        if !was_restored && rolled_back.is_empty() {
            return Ok(());
        }
        tracing::info!(
            "PostgreSQL sink (table {}) subtask {subtask}: committed {committed} transaction(s) of the restored snapshot ({already} committed before), rolled back {} not in it{}",
            self.config.table,
            rolled_back.len(),
            if rolled_back.is_empty() { String::new() } else { format!(": {}", rolled_back.join(", ")) }
        );
        Ok(())
    }
}

impl<T: Send + 'static> SinkFunction<T> for PostgresSink<T> {
    fn open(&mut self, ctx: &SinkContext<'_>) -> Result<(), BoxError> {
        self.subtask = ctx.subtask;
        self.run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        self.client()?;
        self.committer()?;
        let restored: Vec<Prepared> = ctx.state.list(STATE)?;
        self.recover(restored, ctx.parallelism, ctx.state.is_restored())?;
        // Rows the snapshot held back go first into the first transaction.
        let held: Vec<HeldRow> = ctx.state.list(HELD)?;
        if !held.is_empty() {
            tracing::info!(
                "PostgreSQL sink (table {}) subtask {}: {} row(s) the restored snapshot held back go into the first transaction",
                self.config.table,
                self.subtask,
                held.len()
            );
        }
        self.rows = held.into_iter().map(|r| r.values).collect();
        Ok(())
    }

    fn invoke(&mut self, value: T) -> Result<(), BoxError> {
        let row = (self.config.row)(&value);
        if row.len() != self.config.columns.len() {
            return Err(format!(
                "PostgreSQL sink (table {}): a row has {} values for {} columns ({})",
                self.config.table,
                row.len(),
                self.config.columns.len(),
                self.config.columns.join(", ")
            )
            .into());
        }
        self.rows.push(row);
        if self.rows.len() >= self.send_at {
            self.flush(true)?;
        }
        Ok(())
    }

    fn snapshot_state(
        &mut self,
        checkpoint_id: CheckpointId,
        state: &mut OperatorStateSnapshot,
    ) -> Result<(), BoxError> {
        self.flush(true)?;
        if self.in_transaction {
            let gid = transaction_id(&self.config.prefix, self.subtask, checkpoint_id, &self.run);
            let client = self.client()?;
            if let Err(e) = client.batch_execute(&format!("PREPARE TRANSACTION {}", quote_literal(&gid))) {
                let hint = if describe(&e).contains("max_prepared_transactions") {
                    " (the server has max_prepared_transactions = 0: set it above the sink's parallelism and restart PostgreSQL)"
                } else {
                    ""
                };
                return Err(self.context(&format!("cannot prepare transaction '{gid}'{hint}"), e));
            }
            self.in_transaction = false;
            self.written = SentRows::default();
            self.pending.push(Prepared { checkpoint_id, gid, writer: self.subtask });
        }
        put_list(state, STATE, Redistribution::Union, &self.pending)?;
        let held: Vec<HeldRow> = self.rows.iter().map(|values| HeldRow { values: values.clone() }).collect();
        put_list(state, HELD, Redistribution::Split, &held)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: CheckpointId) -> Result<(), BoxError> {
        self.commit_up_to(checkpoint_id)
    }

    fn end_of_input(&mut self) -> Result<(), BoxError> {
        self.flush(true)
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        // The prepared transactions first: they hold older rows, and locks the rest may need.
        self.commit_up_to(CheckpointId::MAX)?;
        self.flush(false)?;
        if std::mem::take(&mut self.in_transaction) {
            let client = self.client()?;
            client.batch_execute("COMMIT").map_err(|e| {
                format!("PostgreSQL sink (table {}): cannot commit: {}", self.config.table, describe(&e))
            })?;
            self.written = SentRows::default();
        }
        Ok(())
    }

    fn is_stateful(&self) -> bool {
        true
    }
}

/// Whether the server answered with SQLSTATE `code`.
fn has_code(e: &postgres::Error, code: &str) -> bool {
    e.code().is_some_and(|c| c.code() == code)
}

/// A PostgreSQL error in the server's own words: the error's `Display` says only "db error" for
/// what the server reported.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let detail = db.detail().map(|d| format!(" ({d})")).unwrap_or_default();
            format!("{} {}: {}{detail}", db.severity(), db.code().code(), db.message())
        }
        None => e.to_string(),
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(super::redact("postgres://u:secret@h:5/db"), "postgres://u:***@h:5/db");
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("host=h user=u"), "host=h user=u");
    }

    fn rows(keys: impl IntoIterator<Item = i64>, value: i64) -> Vec<Vec<super::SqlValue>> {
        keys.into_iter().map(|k| vec![k.into(), value.into()]).collect()
    }

    #[test]
    fn sent_rows_keep_the_last_row_per_key_within_about_twice_the_limit() {
        let mut sent = super::SentRows::default();
        for round in 0..50 {
            sent.keep(rows(0..30, round), &[0], 100);
            assert!(sent.rows.len() <= 200, "{} rows kept", sent.rows.len());
        }
        let mut again = super::last_row_per_key(sent.take().expect("30 keys are within the limit"), &[0]);
        let mut want = rows(0..30, 49);
        again.sort_by_key(|r| r[0].key_text());
        want.sort_by_key(|r| r[0].key_text());
        assert_eq!(again, want, "the last row of each key");
        assert!(sent.rows.is_empty() && !sent.overflowed, "taken");
    }

    #[test]
    fn sent_rows_past_the_limit_are_dropped_and_say_so() {
        let mut sent = super::SentRows::default();
        sent.keep(rows(0..100, 1), &[0], 100);
        sent.keep(rows(0..100, 2), &[0], 100); // duplicates only: still 100 keys
        assert_eq!(sent.rows.len(), 100);
        // Found past the limit at the next deduplication, when the rows have doubled.
        sent.keep(rows(100..150, 1), &[0], 100);
        assert!(!sent.overflowed && sent.rows.len() == 150, "not deduplicated yet");
        sent.keep(rows(150..200, 1), &[0], 100);
        assert!(sent.overflowed && sent.rows.is_empty(), "200 keys");
        sent.keep(rows(0..10, 3), &[0], 100);
        assert!(sent.rows.is_empty(), "nothing is kept after overflowing");
        assert_eq!(sent.take(), None);
        sent.keep(rows(0..10, 4), &[0], 100);
        assert_eq!(sent.take().map(|r| r.len()), Some(10), "a new transaction keeps again");
    }
}
