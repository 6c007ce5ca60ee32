-- The aggregator's store (DESIGN §3): one row per (topic, event_id), whatever the number of
-- deliveries, and the counters of /stats, updated in the same transaction as the inserts.

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

CREATE TABLE event_stats (
    id                SMALLINT PRIMARY KEY CHECK (id = 1),
    received_count    BIGINT NOT NULL DEFAULT 0,
    unique_processed  BIGINT NOT NULL DEFAULT 0,
    duplicate_dropped BIGINT NOT NULL DEFAULT 0,
    CHECK (received_count = unique_processed + duplicate_dropped)
);

INSERT INTO event_stats (id) VALUES (1);
