-- The cluster's identity, reported to clients as Kafka's cluster id. One row, made once.
CREATE TABLE cluster (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    id TEXT NOT NULL
);
