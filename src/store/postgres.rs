//! The PostgreSQL backend: one database shared by every replica, plus what replicas need to
//! agree on who decides — the leader [`Lease`] (an advisory lock on a dedicated session and a
//! fencing term), the change [`Listener`] (LISTEN/NOTIFY), forwarded operator commands, and the
//! leader's cursor over the append-only event table.
//!
//! Invariants:
//! - Event sequence numbers follow commit order: an ingest transaction takes a
//!   transaction-scoped advisory lock before it draws numbers, so when a reader sees event
//!   `n` it sees every event before it, and a cursor never skips a row that commits late.
//! - Every decision write (state + receipt + outbox, checkpoints, command results) runs in a
//!   transaction that first reads the fencing term `FOR SHARE` and aborts unless it is this
//!   replica's: a replica that lost the lock cannot commit after another took over, because
//!   taking over bumps the term and waits for those share locks.
//! - Ingestion needs no lease: any replica inserts events, deduplicated by `event_id` with a
//!   unique key, so an event posted to two replicas counts once.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use postgres::{Client, NoTls, Transaction};
use r2d2_postgres::PostgresConnectionManager;

use super::{
    BatchItem, Change, Health, Store, StoreError, StoredBody, StoredEvent, StoredStates,
    decode_event,
};
use crate::core::affected::TagRecord;
use crate::core::clock::Millis;
use crate::core::evidence::Checkpoint;
use crate::core::notice::Outbox;
use crate::core::receipt::{Decider, Receipt};

mod embedded_migrations {
    refinery::embed_migrations!("migrations");
}

/// The advisory lock whose holder decides (`'stgt' 'lead'` as two ASCII words).
const LEADER_LOCK: i64 = 0x7374_6774_6c65_6164;
/// Serialises event-number draws so they follow commit order.
const INGEST_LOCK: i64 = 0x7374_6774_696e_6773;
/// Serialises schema migrations of replicas starting together.
const MIGRATE_LOCK: i64 = 0x7374_6774_6d69_6772;
/// Where refinery records applied migrations.
const SCHEMA_TABLE: &str = "stagegate_schema_history";
/// The channel the leader notifies after every decision (payload: the state's key).
pub const CHANGES: &str = "stagegate_changes";
/// The channel a replica notifies after writing a command for the leader.
pub const COMMANDS: &str = "stagegate_commands";
/// How long a claimed notification stays invisible to other claims while it is delivered.
const DELIVERY_LEASE: Millis = 60_000;
/// The database's clock in Unix milliseconds.
const DB_NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";
/// Connections a replica keeps for requests, ingestion and decisions.
const POOL_SIZE: u32 = 8;

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// The shared store.
pub struct PostgresStore {
    pool: Pool,
    config: postgres::Config,
    location: String,
    replica: String,
    /// The fencing term this replica decides under; 0 while it does not lead.
    term: AtomicU64,
    health: Health,
    size: AtomicU64,
}

fn sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn num(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Whether an error means the database cannot be reached (as opposed to a bad statement).
fn is_connection(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            // 08: connection exception; 57P0x: the server is shutting down or starting.
            c.starts_with("08") || c.starts_with("57P")
        }
    }
}

/// A URL's host, port and database, without user or password.
fn describe(config: &postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("postgres://{host}:{port}/{db}")
}

impl PostgresStore {
    /// Connects, migrates the schema (refusing one newer than this build knows) and returns
    /// the store. `replica` names this process in receipts, locks and logs.
    pub fn open(url: &str, replica: &str) -> Result<PostgresStore, StoreError> {
        let mut config = postgres::Config::from_str(url).map_err(|e| {
            StoreError::Schema(format!(
                "the database URL does not parse ({e}); expected postgres://user[:password]@host:port/database"
            ))
        })?;
        config.connect_timeout(Duration::from_secs(3));
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(5));
        let location = describe(&config);
        let unreachable = |detail: String| StoreError::DatabaseUnavailable {
            location: location.clone(),
            detail,
        };
        let mut pooled = config.clone();
        pooled.application_name(&format!("stagegate:{replica}"));
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(3))
            .test_on_check_out(true)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build(PostgresConnectionManager::new(pooled, NoTls))
            .map_err(|e| unreachable(e.to_string()))?;
        let store = PostgresStore {
            pool,
            config,
            location,
            replica: replica.to_string(),
            term: AtomicU64::new(0),
            health: Health::default(),
            size: AtomicU64::new(0),
        };
        store.migrate()?;
        store.refresh_size();
        Ok(store)
    }

    /// Applies pending migrations under an advisory lock; refuses a schema newer than ours.
    fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client()?;
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])?;
        let result = (|| {
            let known = embedded_migrations::migrations::runner()
                .get_migrations()
                .iter()
                .map(|m| i64::from(m.version()))
                .max()
                .unwrap_or(0);
            let exists: bool = client
                .query_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[&format!("public.{SCHEMA_TABLE}")],
                )?
                .get(0);
            if exists {
                let applied: Option<i32> = client
                    .query_one(&format!("SELECT max(version) FROM {SCHEMA_TABLE}"), &[])?
                    .get(0);
                if let Some(applied) = applied.filter(|v| i64::from(*v) > known) {
                    return Err(StoreError::Schema(format!(
                        "{}: the database schema is at version {applied}, newer than this stagegate's {known}: \
                         a newer release migrated it. Run that release (downgrading the schema is refused, \
                         so nothing was changed)",
                        self.location
                    )));
                }
            }
            let mut runner = embedded_migrations::migrations::runner();
            runner.set_migration_table_name(SCHEMA_TABLE);
            runner.run(&mut *client).map_err(|e| {
                StoreError::Schema(format!("{}: schema migration failed: {e}", self.location))
            })?;
            Ok(())
        })();
        let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK]);
        result
    }

    /// The replica name stamped on receipts this process decides.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The term this replica decides under (0: it does not lead).
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::SeqCst)
    }

    /// Sets the term decision writes must match; 0 fences every decision write at once.
    pub fn set_term(&self, term: u64) {
        self.term.store(term, Ordering::SeqCst);
    }

    /// A session of its own (for the lease and the listener), named `purpose:replica`.
    fn dedicated(&self, purpose: &str) -> Result<Client, StoreError> {
        let mut config = self.config.clone();
        config.application_name(&format!("stagegate-{purpose}:{}", self.replica));
        config
            .connect(NoTls)
            .map_err(|e| self.unreachable(e.to_string()))
    }

    fn unreachable(&self, detail: String) -> StoreError {
        StoreError::DatabaseUnavailable {
            location: self.location.clone(),
            detail,
        }
    }

    fn client(
        &self,
    ) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>, StoreError> {
        self.pool.get().map_err(|e| self.unreachable(e.to_string()))
    }

    /// Runs `f` on a pooled connection; a connection failure marks the store unhealthy.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = self.client().and_then(|mut c| f(&mut c));
        match result {
            Err(StoreError::Postgres(e)) if is_connection(&e) => {
                Err(self.mark_unhealthy(e.to_string()))
            }
            Err(e @ StoreError::DatabaseUnavailable { .. }) => {
                let detail = match &e {
                    StoreError::DatabaseUnavailable { detail, .. } => detail.clone(),
                    _ => String::new(),
                };
                self.mark_unhealthy(detail);
                Err(e)
            }
            other => other,
        }
    }

    fn mark_unhealthy(&self, detail: String) -> StoreError {
        if self.health.fail(&detail) {
            tracing::error!(store = %self.location, error = %detail, "the database cannot be reached; serving assignments from the last snapshot, not ready until it answers again");
        }
        self.unreachable(detail)
    }

    /// Runs `f` in a transaction that commits only while this replica's term is current.
    fn fenced<T>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>, u64) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let term = self.term();
        self.with(|c| {
            let mut tx = c.transaction()?;
            let current: i64 = tx
                .query_one(
                    "SELECT term FROM stagegate_leader WHERE id = 1 FOR SHARE",
                    &[],
                )?
                .get(0);
            if term == 0 || num(current) != term {
                return Err(StoreError::Fenced {
                    term,
                    current: num(current),
                });
            }
            let out = f(&mut tx, term)?;
            tx.commit()?;
            Ok(out)
        })
    }

    fn refresh_size(&self) {
        let size = self.with(|c| {
            let row = c.query_one(
                "SELECT coalesce(sum(pg_total_relation_size(oid)), 0)::bigint FROM pg_class \
                 WHERE relname LIKE 'stagegate\\_%' AND relkind = 'r'",
                &[],
            )?;
            Ok(num(row.get(0)))
        });
        if let Ok(size) = size {
            self.size.store(size, Ordering::Relaxed);
        }
    }

    /// Up to `limit` events committed after sequence number `after`, in order, with their
    /// numbers: the leader's cursor over every replica's ingestion.
    pub fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, StoredEvent)>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT seq, scope, epoch, body FROM stagegate_events WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&sql(after), &sql(limit as u64)],
            )?;
            rows.iter()
                .map(|row| {
                    let event = decode_event(row.get(3))?;
                    Ok((
                        num(row.get(0)),
                        StoredEvent {
                            scope: row.get(1),
                            epoch: num(row.get(2)),
                            event,
                        },
                    ))
                })
                .collect()
        })
    }

    /// Each stored checkpoint's digest (the md5 of its body, computed by the database): a
    /// follower reads again only the checkpoints whose digest moved since it read them.
    pub fn checkpoint_digests(&self) -> Result<HashMap<String, String>, StoreError> {
        self.with(|c| {
            Ok(
                c.query("SELECT scope, md5(body) FROM stagegate_checkpoints", &[])?
                    .iter()
                    .map(|row| (row.get(0), row.get(1)))
                    .collect(),
            )
        })
    }

    /// Writes an operator command for the leader and wakes it; returns the command's id. It
    /// is stamped with the database's clock, so its age reads the same on every replica.
    pub fn submit_command(&self, body: &str) -> Result<u64, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let id: i64 = tx
                .query_one(
                    &format!("INSERT INTO stagegate_commands (at, body) VALUES ({DB_NOW_MS}, $1) RETURNING id"),
                    &[&body],
                )?
                .get(0);
            tx.execute("SELECT pg_notify($1, $2)", &[&COMMANDS, &id.to_string()])?;
            tx.commit()?;
            Ok(num(id))
        })
    }

    /// The result the leader wrote for a command, once it has.
    pub fn command_result(&self, id: u64) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT result FROM stagegate_commands WHERE id = $1",
                &[&sql(id)],
            )?
            .and_then(|row| row.get(0)))
        })
    }

    /// Commands no leader has answered yet, oldest first: `(id, age in ms, body)`.
    pub fn pending_commands(&self, limit: usize) -> Result<Vec<(u64, Millis, String)>, StoreError> {
        self.with(|c| {
            Ok(c.query(
                &format!("SELECT id, {DB_NOW_MS} - at, body FROM stagegate_commands WHERE result IS NULL ORDER BY id LIMIT $1"),
                &[&sql(limit as u64)],
            )?
            .iter()
            .map(|row| (num(row.get(0)), num(row.get(1)), row.get(2)))
            .collect())
        })
    }

    /// Records a command's result (fenced: only the leader answers).
    pub fn finish_command(&self, id: u64, result: &str) -> Result<(), StoreError> {
        self.fenced(|tx, _| {
            tx.execute(
                "UPDATE stagegate_commands SET result = $2 WHERE id = $1 AND result IS NULL",
                &[&sql(id), &result],
            )?;
            Ok(())
        })
    }

    /// A lease handle on a session of its own.
    pub fn lease(&self) -> Lease<'_> {
        Lease {
            store: self,
            session: None,
        }
    }

    /// A change listener on a session of its own.
    pub fn listener(&self) -> Listener<'_> {
        Listener {
            store: self,
            session: None,
        }
    }
}

/// The leader lock, held by a session of its own: closing the session (process death, a
/// killed backend, a lost network) releases it.
pub struct Lease<'a> {
    store: &'a PostgresStore,
    session: Option<Client>,
}

impl Lease<'_> {
    /// Tries to take the lock. On success bumps the fencing term and returns it: from then on
    /// no decision written under an older term commits.
    pub fn try_acquire(&mut self, now: Millis) -> Result<Option<u64>, StoreError> {
        if self.session.as_ref().is_none_or(Client::is_closed) {
            self.session = Some(self.store.dedicated("lease")?);
        }
        let Some(session) = self.session.as_mut() else {
            return Ok(None);
        };
        let attempt = (|| {
            let got: bool = session
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])?
                .get(0);
            if !got {
                return Ok(None);
            }
            let term: i64 = session
                .query_one(
                    "UPDATE stagegate_leader SET term = term + 1, holder = $1, since = $2 WHERE id = 1 RETURNING term",
                    &[&self.store.replica, &sql(now)],
                )?
                .get(0);
            Ok(Some(num(term)))
        })();
        if attempt.is_err() {
            self.session = None;
        }
        attempt.map_err(|e: postgres::Error| self.store.unreachable(e.to_string()))
    }

    /// Whether the lock's session is still alive (so the lock is still held).
    pub fn holds(&mut self) -> bool {
        let alive = self
            .session
            .as_mut()
            .is_some_and(|s| s.simple_query("SELECT 1").is_ok());
        if !alive {
            self.session = None;
        }
        alive
    }

    /// Gives the lock up by closing its session.
    pub fn release(&mut self) {
        self.session = None;
    }
}

/// A LISTEN session for decisions (followers refresh) and commands (the leader applies them).
pub struct Listener<'a> {
    store: &'a PostgresStore,
    session: Option<Client>,
}

impl Listener<'_> {
    /// Waits up to `timeout` for notifications and returns their channels. A fresh session
    /// (the first call, or after a failure) returns `[CHANGES]` at once: anything may have
    /// been missed while there was none.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<String>, StoreError> {
        if self.session.as_ref().is_none_or(Client::is_closed) {
            let mut session = self.store.dedicated("listen")?;
            session
                .batch_execute(&format!("LISTEN {CHANGES}; LISTEN {COMMANDS};"))
                .map_err(|e| self.store.unreachable(e.to_string()))?;
            self.session = Some(session);
            return Ok(vec![CHANGES.to_string()]);
        }
        let Some(session) = self.session.as_mut() else {
            return Ok(Vec::new());
        };
        let mut channels = Vec::new();
        let mut collect = || -> Result<(), postgres::Error> {
            use postgres::fallible_iterator::FallibleIterator;
            let mut notes = session.notifications();
            if let Some(n) = notes.timeout_iter(timeout).next()? {
                channels.push(n.channel().to_string());
            }
            let mut ready = notes.iter();
            while let Some(n) = ready.next()? {
                channels.push(n.channel().to_string());
            }
            Ok(())
        };
        match collect() {
            Ok(()) => {
                if session.is_closed() {
                    self.session = None;
                }
                Ok(channels)
            }
            Err(e) => {
                self.session = None;
                Err(self.store.unreachable(e.to_string()))
            }
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    row: Option<postgres::Row>,
) -> Result<Option<T>, StoreError> {
    row.map(|r| serde_json::from_str(r.get::<_, &str>(0)))
        .transpose()
        .map_err(StoreError::from)
}

impl Store for PostgresStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }

    fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    fn recover(&self, _now: Millis) -> bool {
        let ok = self.with(|c| Ok(c.simple_query("SELECT 1")?)).is_ok();
        if ok && self.health.recovered() {
            tracing::info!(store = %self.location, "the database answers again; ready");
        }
        if ok {
            self.refresh_size();
        }
        ok
    }

    fn states(&self) -> Result<StoredStates, StoreError> {
        self.with(|c| {
            let mut rollouts = HashMap::new();
            let mut guards = HashMap::new();
            for row in c.query("SELECT key, body FROM stagegate_states", &[])? {
                let key: &str = row.get(0);
                let body: &str = row.get(1);
                if let Some(name) = key.strip_prefix("rollout:") {
                    rollouts.insert(name.to_string(), serde_json::from_str(body)?);
                } else if let Some(name) = key.strip_prefix("guard:") {
                    guards.insert(name.to_string(), serde_json::from_str(body)?);
                }
            }
            Ok((rollouts, guards))
        })
    }

    fn checkpoint(&self, scope: &str) -> Result<Option<Checkpoint>, StoreError> {
        self.with(|c| {
            decode(c.query_opt(
                "SELECT body FROM stagegate_checkpoints WHERE scope = $1",
                &[&scope],
            )?)
        })
    }

    fn replay(
        &self,
        scope: &str,
        epoch: u64,
        after: u64,
        through: u64,
        f: &mut dyn FnMut(StoredEvent),
    ) -> Result<usize, StoreError> {
        const PAGE: i64 = 10_000;
        self.with(|c| {
            let mut n = 0;
            let mut cursor = sql(after);
            loop {
                let rows = c.query(
                    "SELECT seq, body FROM stagegate_events WHERE scope = $1 AND epoch = $2 \
                     AND seq > $3 AND seq <= $4 ORDER BY seq LIMIT $5",
                    &[&scope, &sql(epoch), &cursor, &sql(through), &PAGE],
                )?;
                for row in &rows {
                    cursor = row.get(0);
                    let event = decode_event(row.get(1))?;
                    f(StoredEvent {
                        scope: scope.to_string(),
                        epoch,
                        event,
                    });
                    n += 1;
                }
                if (rows.len() as i64) < PAGE {
                    return Ok(n);
                }
            }
        })
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        // The highest visible number: by the commit-order invariant, every lower one is
        // visible too.
        self.with(|c| {
            let row = c.query_one("SELECT coalesce(max(seq), 0) FROM stagegate_events", &[])?;
            Ok(num(row.get(0)))
        })
    }

    fn clock_high_water(&self) -> Result<Millis, StoreError> {
        self.with(|c| {
            let row = c.query_one(
                "SELECT greatest(\
                   (SELECT max(at) FROM stagegate_receipts), \
                   (SELECT at FROM stagegate_events ORDER BY seq DESC LIMIT 1), \
                   (SELECT max(since) FROM stagegate_leader), 0)",
                &[],
            )?;
            Ok(num(row.get(0)))
        })
    }

    fn put_checkpoints(
        &self,
        checkpoints: &[(String, Checkpoint)],
        _covers: Option<u64>,
    ) -> Result<(), StoreError> {
        if checkpoints.is_empty() {
            return Ok(());
        }
        self.fenced(|tx, _| {
            let statement = tx.prepare(
                "INSERT INTO stagegate_checkpoints (scope, epoch, seq, body) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (scope) DO UPDATE SET epoch = $2, seq = $3, body = $4",
            )?;
            for (scope, cp) in checkpoints {
                tx.execute(
                    &statement,
                    &[scope, &sql(cp.epoch), &sql(cp.seq), &serde_json::to_string(cp)?],
                )?;
            }
            // Followers show the leader's statistics as of this checkpoint.
            tx.execute("SELECT pg_notify($1, 'evidence')", &[&CHANGES])?;
            Ok(())
        })
    }

    fn prune_events(&self, cutoff: Millis) -> Result<usize, StoreError> {
        self.fenced(|tx, _| {
            let n = tx.execute(
                "DELETE FROM stagegate_events e USING stagegate_checkpoints c \
                 WHERE e.scope = c.scope AND e.at < $1 \
                   AND (e.epoch < c.epoch OR (e.epoch = c.epoch AND e.seq <= c.seq)) \
                   AND NOT EXISTS (SELECT 1 FROM stagegate_states s \
                                   WHERE s.scope = e.scope AND s.protected_epoch = e.epoch)",
                &[&sql(cutoff)],
            )?;
            Ok(n as usize)
        })
    }

    fn size_bytes(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn ingest(&self, items: &[BatchItem], now: Millis) -> Result<Vec<bool>, StoreError> {
        let (mut out, _) = self.ingest_groups(&[items], now)?;
        Ok(out.pop().unwrap_or_default())
    }

    fn ingest_groups(
        &self,
        groups: &[&[BatchItem]],
        now: Millis,
    ) -> Result<(Vec<Vec<bool>>, u64), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&INGEST_LOCK])?;
            let ids: Vec<&str> = groups
                .iter()
                .flat_map(|g| g.iter().map(|i| i.event_id()))
                .collect();
            let fresh_ids: std::collections::HashSet<String> = tx
                .query(
                    "INSERT INTO stagegate_dedupe (event_id, at) SELECT id, $2 FROM unnest($1::text[]) AS id \
                     ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                    &[&ids, &sql(now)],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut claimed = std::collections::HashSet::with_capacity(fresh_ids.len());
            let mut results = Vec::with_capacity(groups.len());
            let mut stored: Vec<&StoredBody> = Vec::new();
            for items in groups {
                let mut fresh = Vec::with_capacity(items.len());
                for item in *items {
                    // A repeat inside the commit: only its first occurrence is new.
                    let new = fresh_ids.contains(item.event_id()) && claimed.insert(item.event_id());
                    if new {
                        stored.extend(item.stored.as_ref());
                    }
                    fresh.push(new);
                }
                results.push(fresh);
            }
            let mut last = 0;
            if !stored.is_empty() {
                let n = sql(stored.len() as u64);
                let end: i64 = tx
                    .query_one(
                        "SELECT setval('stagegate_event_seq', nextval('stagegate_event_seq') + $1 - 1)",
                        &[&n],
                    )?
                    .get(0);
                let first = end - n + 1;
                let seqs: Vec<i64> = (first..=end).collect();
                let scopes: Vec<&str> = stored.iter().map(|s| &*s.scope).collect();
                let epochs: Vec<i64> = stored.iter().map(|s| sql(s.epoch)).collect();
                let bodies = stored
                    .iter()
                    .map(|s| std::str::from_utf8(&s.body))
                    .collect::<Result<Vec<&str>, _>>()
                    .map_err(|e| StoreError::Schema(format!("an event body is not UTF-8: {e}")))?;
                tx.execute(
                    "INSERT INTO stagegate_events (seq, scope, epoch, at, body) \
                     SELECT s, sc, ep, $5, b FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[]) AS t(s, sc, ep, b)",
                    &[&seqs, &scopes, &epochs, &bodies, &sql(now)],
                )?;
                last = num(end);
            }
            tx.commit()?;
            Ok((results, last))
        })
    }

    fn commit(
        &self,
        change: &Change<'_>,
        receipt: &mut Receipt,
        outbox: &dyn Fn(&Receipt) -> Vec<Outbox>,
    ) -> Result<(), StoreError> {
        let (key, scope, epoch) = change.key_and_scope();
        self.fenced(|tx, term| {
            let seq: i64 = tx
                .query_one("SELECT nextval('stagegate_receipt_seq')", &[])?
                .get(0);
            receipt.id = Receipt::id_for(num(seq));
            receipt.decider = Some(Decider {
                replica: self.replica.clone(),
                term,
            });
            tx.execute(
                "INSERT INTO stagegate_receipts (seq, id, rollout, workflow, at, term, idem_key, body) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &seq,
                    &receipt.id,
                    &receipt.rollout,
                    &receipt.workflow,
                    &sql(receipt.at_ms),
                    &sql(term),
                    &receipt.idempotency_key,
                    &serde_json::to_string(receipt)?,
                ],
            )?;
            for item in outbox(receipt) {
                tx.execute(
                    "INSERT INTO stagegate_outbox (due, body) VALUES ($1, $2)",
                    &[&sql(item.next_at), &serde_json::to_string(&item)?],
                )?;
            }
            let protected = change.protected_epoch().map(sql);
            tx.execute(
                "INSERT INTO stagegate_states (key, scope, epoch, protected_epoch, body) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (key) DO UPDATE SET scope = $2, epoch = $3, protected_epoch = $4, body = $5",
                &[
                    &key,
                    &scope,
                    &sql(epoch),
                    &protected,
                    &String::from_utf8_lossy(&change.bytes()?).into_owned(),
                ],
            )?;
            // Older epochs go, but the one an open containment lists as affected.
            tx.execute(
                "DELETE FROM stagegate_events WHERE scope = $1 AND epoch < $2 AND epoch IS DISTINCT FROM $3",
                &[&scope, &sql(epoch), &protected],
            )?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES, &key])?;
            Ok(())
        })
    }

    fn receipts(
        &self,
        scope: Option<&str>,
        since: Option<Millis>,
        limit: usize,
    ) -> Result<Vec<Receipt>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT body FROM stagegate_receipts \
                 WHERE ($1::text IS NULL OR rollout = $1 OR (rollout = '' AND workflow = $1)) \
                   AND ($2::bigint IS NULL OR at >= $2) \
                 ORDER BY seq DESC LIMIT $3",
                &[&scope, &since.map(sql), &sql(limit as u64)],
            )?
            .iter()
            .map(|row| Ok(serde_json::from_str(row.get(0))?))
            .collect()
        })
    }

    fn receipt(&self, id: &str) -> Result<Option<Receipt>, StoreError> {
        self.with(|c| {
            decode(c.query_opt("SELECT body FROM stagegate_receipts WHERE id = $1", &[&id])?)
        })
    }

    fn receipt_by_key(&self, rollout: &str, key: &str) -> Result<Option<Receipt>, StoreError> {
        self.with(|c| {
            decode(c.query_opt(
                "SELECT body FROM stagegate_receipts WHERE rollout = $1 AND idem_key = $2",
                &[&rollout, &key],
            )?)
        })
    }

    fn affected_tags(
        &self,
        rollout: &str,
        receipt: &str,
    ) -> Result<HashMap<String, TagRecord>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT event_id, body FROM stagegate_affected WHERE rollout = $1 AND receipt = $2",
                &[&rollout, &receipt],
            )?
            .iter()
            .map(|row| Ok((row.get(0), serde_json::from_str(row.get(1))?)))
            .collect()
        })
    }

    fn put_affected_tag(
        &self,
        rollout: &str,
        receipt: &str,
        event_id: &str,
        tag: &TagRecord,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(tag)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO stagegate_affected (rollout, receipt, event_id, body) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (rollout, receipt, event_id) DO UPDATE SET body = $4",
                &[&rollout, &receipt, &event_id, &body],
            )?;
            Ok(())
        })
    }

    fn due_notifications(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(u64, Outbox)>, StoreError> {
        // Claim with a lease: a replica that takes over while one is being delivered sends it
        // again only after the lease (delivery is at least once, keyed by the receipt id).
        self.fenced(|tx, _| {
            tx.query(
                "UPDATE stagegate_outbox SET due = $2 WHERE id IN (\
                   SELECT id FROM stagegate_outbox WHERE due <= $1 ORDER BY due, id LIMIT $3 \
                   FOR UPDATE SKIP LOCKED) RETURNING id, body",
                &[
                    &sql(now),
                    &sql(now.saturating_add(DELIVERY_LEASE)),
                    &sql(limit as u64),
                ],
            )?
            .iter()
            .map(|row| Ok((num(row.get(0)), serde_json::from_str(row.get(1))?)))
            .collect()
        })
    }

    fn notification_done(&self, key: u64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM stagegate_outbox WHERE id = $1", &[&sql(key)])?;
            Ok(())
        })
    }

    fn notification_retry(&self, key: u64, item: &Outbox) -> Result<(), StoreError> {
        let body = serde_json::to_string(item)?;
        self.with(|c| {
            c.execute(
                "UPDATE stagegate_outbox SET due = $2, body = $3 WHERE id = $1",
                &[&sql(key), &sql(item.next_at), &body],
            )?;
            Ok(())
        })
    }

    fn prune_dedupe(&self, cutoff: Millis) -> Result<usize, StoreError> {
        self.with(|c| {
            let keys = c.execute(
                "DELETE FROM stagegate_dedupe WHERE at < $1",
                &[&sql(cutoff)],
            )?;
            // Commands an hour old were answered (or refused as expired) long ago.
            c.execute(
                &format!("DELETE FROM stagegate_commands WHERE at < {DB_NOW_MS} - 3600000"),
                &[],
            )?;
            Ok(keys as usize)
        })
    }
}
