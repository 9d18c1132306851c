-- The host directory: each registered host's newest advert of its free capacity and price.
-- `timestamp_ms` is the host's own (signed) time of the advert: an older one never replaces
-- a newer one, so a replayed or delayed advert cannot roll the directory back.
CREATE TABLE adverts (
    host_id TEXT PRIMARY KEY REFERENCES hosts (host_id),
    free_memory_mib BIGINT NOT NULL CHECK (free_memory_mib >= 0),
    free_vcpus BIGINT NOT NULL CHECK (free_vcpus >= 0),
    price_per_link BIGINT NOT NULL CHECK (price_per_link >= 0),
    url TEXT NOT NULL,
    timestamp_ms BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);
