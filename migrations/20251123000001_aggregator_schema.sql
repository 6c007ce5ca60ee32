-- The aggregator's store (DESIGN §3): one row per (topic, event_id), whatever the number of
-- deliveries, and the counters of /stats, written in the same transaction as the events.

CREATE TABLE processed_events (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic        TEXT        NOT NULL CHECK (char_length(topic) BETWEEN 1 AND 255),
    event_id     TEXT        NOT NULL CHECK (char_length(event_id) BETWEEN 1 AND 255),
    source       TEXT        NOT NULL CHECK (char_length(source) BETWEEN 1 AND 255),
    timestamp    TIMESTAMPTZ NOT NULL,
    payload      JSONB       NOT NULL DEFAULT '{}'::jsonb,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT processed_events_topic_event_id_key UNIQUE (topic, event_id)
);

CREATE INDEX processed_events_topic_processed_at_idx ON processed_events (topic, processed_at DESC);
CREATE INDEX processed_events_processed_at_idx ON processed_events (processed_at DESC);

-- Every topic seen, so /stats need not scan processed_events.
CREATE TABLE topics (
    topic TEXT PRIMARY KEY
);

-- Counters, one row per writer shard so concurrent workers do not queue on one row; /stats sums
-- them. Each row keeps received = unique_processed + duplicate_dropped.
CREATE TABLE event_counters (
    shard             INTEGER PRIMARY KEY,
    received          BIGINT NOT NULL DEFAULT 0,
    unique_processed  BIGINT NOT NULL DEFAULT 0,
    duplicate_dropped BIGINT NOT NULL DEFAULT 0,
    CHECK (received = unique_processed + duplicate_dropped)
);

-- The seed's single-row view of the counters (`SELECT * FROM event_stats WHERE id = 1`).
CREATE VIEW event_stats AS
SELECT 1 AS id,
       coalesce(sum(received), 0)::bigint          AS received_count,
       coalesce(sum(unique_processed), 0)::bigint  AS unique_processed,
       coalesce(sum(duplicate_dropped), 0)::bigint AS duplicate_dropped
FROM event_counters;

-- Queue entries already written: a redelivered entry (worker crashed after COMMIT, before XACK)
-- is recognised here and neither stored nor counted again.
CREATE TABLE consumed_entries (
    entry_id    TEXT        PRIMARY KEY,
    consumed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX consumed_entries_consumed_at_idx ON consumed_entries (consumed_at);
