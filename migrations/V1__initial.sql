-- stagegate's PostgreSQL schema, version 1. Bodies are stagegate's own JSON, kept as text so
-- psql shows them as written; the columns beside them are what queries filter on.

-- The fencing term: bumped by every replica that takes the leader lock. Every decision write
-- checks it in its own transaction, so a replica that lost the lock cannot commit.
CREATE TABLE stagegate_leader (
    id     integer PRIMARY KEY CHECK (id = 1),
    term   bigint  NOT NULL,
    holder text    NOT NULL,
    since  bigint  NOT NULL
);
INSERT INTO stagegate_leader (id, term, holder, since) VALUES (1, 0, '', 0);

-- Rollout (`rollout:NAME`) and guard (`guard:WORKFLOW`) states.
CREATE TABLE stagegate_states (
    key             text   PRIMARY KEY,
    scope           text   NOT NULL,
    epoch           bigint NOT NULL,
    -- The epoch whose raw events an open containment keeps for its affected list.
    protected_epoch bigint,
    body            text   NOT NULL
);

CREATE SEQUENCE stagegate_receipt_seq;
CREATE TABLE stagegate_receipts (
    seq      bigint PRIMARY KEY,
    id       text   NOT NULL UNIQUE,
    rollout  text   NOT NULL,
    workflow text   NOT NULL,
    at       bigint NOT NULL,
    term     bigint NOT NULL,
    idem_key text,
    body     text   NOT NULL
);
CREATE INDEX stagegate_receipts_rollout ON stagegate_receipts (rollout, seq);
CREATE UNIQUE INDEX stagegate_receipts_idem ON stagegate_receipts (rollout, idem_key)
    WHERE idem_key IS NOT NULL;

-- Every accepted event id, for dedupe across replicas; pruned after `server.dedupe_window`.
CREATE TABLE stagegate_dedupe (
    event_id text   PRIMARY KEY,
    at       bigint NOT NULL
);
CREATE INDEX stagegate_dedupe_at ON stagegate_dedupe (at);

-- Accepted events some scope watches, append-only. `seq` follows commit order (ingest takes a
-- transaction-scoped advisory lock before it draws numbers), so the leader's cursor never
-- skips a row that commits late.
CREATE SEQUENCE stagegate_event_seq;
CREATE TABLE stagegate_events (
    seq   bigint PRIMARY KEY,
    scope text   NOT NULL,
    epoch bigint NOT NULL,
    at    bigint NOT NULL,
    body  text   NOT NULL
);
CREATE INDEX stagegate_events_scope ON stagegate_events (scope, epoch, seq);

-- Evidence aggregates per scope, as of event `seq`.
CREATE TABLE stagegate_checkpoints (
    scope text   PRIMARY KEY,
    epoch bigint NOT NULL,
    seq   bigint NOT NULL,
    body  text   NOT NULL
);

CREATE TABLE stagegate_outbox (
    id   bigserial PRIMARY KEY,
    due  bigint    NOT NULL,
    body text      NOT NULL
);
CREATE INDEX stagegate_outbox_due ON stagegate_outbox (due);

CREATE TABLE stagegate_affected (
    rollout  text NOT NULL,
    receipt  text NOT NULL,
    event_id text NOT NULL,
    body     text NOT NULL,
    PRIMARY KEY (rollout, receipt, event_id)
);

-- Operator actions sent to a replica that does not lead: the leader applies them in order
-- and writes each one's result.
CREATE TABLE stagegate_commands (
    id     bigserial PRIMARY KEY,
    at     bigint    NOT NULL,
    body   text      NOT NULL,
    result text
);
CREATE INDEX stagegate_commands_pending ON stagegate_commands (id) WHERE result IS NULL;
