-- The broker's ledger. The same statements run on SQLite and PostgreSQL: integers are
-- BIGINT, byte strings hex TEXT, booleans 0/1.

-- Double entry: every balance is the sum of the transfers into the account minus the
-- transfers out. Only the operator's mint goes negative: it is where money enters.
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('mint', 'tenant', 'escrow', 'host')),
    balance BIGINT NOT NULL,
    CHECK ((kind = 'mint' AND balance <= 0) OR (kind <> 'mint' AND balance >= 0))
);

CREATE TABLE transfers (
    id TEXT PRIMARY KEY,
    from_account TEXT NOT NULL REFERENCES accounts (id),
    to_account TEXT NOT NULL REFERENCES accounts (id),
    amount BIGINT NOT NULL CHECK (amount > 0),
    kind TEXT NOT NULL,
    at BIGINT NOT NULL,
    CHECK (from_account <> to_account)
);
CREATE INDEX transfers_from ON transfers (from_account);
CREATE INDEX transfers_to ON transfers (to_account);

CREATE TABLE tenants (
    tenant_key TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE hosts (
    host_id TEXT PRIMARY KEY,
    host_key TEXT NOT NULL UNIQUE,
    cluster_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- A token and its lease. `lock_version` is bumped first by every transaction that changes
-- the token, which serializes them on PostgreSQL (the row lock) as SQLite's single writer
-- does.
CREATE TABLE tokens (
    token_id TEXT PRIMARY KEY,
    tenant_key TEXT NOT NULL REFERENCES tenants (tenant_key),
    signed_token TEXT NOT NULL,
    chain_root TEXT NOT NULL,
    chain_length BIGINT NOT NULL CHECK (chain_length > 0),
    price_per_link BIGINT NOT NULL CHECK (price_per_link >= 0),
    expiry BIGINT NOT NULL,
    refunded BIGINT NOT NULL CHECK (refunded IN (0, 1)),
    lease_holder TEXT REFERENCES hosts (host_id),
    handover_to TEXT REFERENCES hosts (host_id),
    handover_index BIGINT,
    handover_link TEXT,
    lock_version BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX tokens_expiry ON tokens (refunded, expiry);

-- The stretches of a token's chain each host may be paid for: links start+1 .. end.
CREATE TABLE lease_ranges (
    token_id TEXT NOT NULL REFERENCES tokens (token_id),
    seq BIGINT NOT NULL,
    host_id TEXT NOT NULL REFERENCES hosts (host_id),
    start_index BIGINT NOT NULL CHECK (start_index >= 0),
    end_index BIGINT,
    redeemed_index BIGINT NOT NULL,
    redeemed_link TEXT NOT NULL,
    PRIMARY KEY (token_id, seq),
    CHECK (redeemed_index >= start_index),
    CHECK (end_index IS NULL OR redeemed_index <= end_index)
);

-- Stripe-style idempotency: the first answer to (signer, key) is kept and replayed.
CREATE TABLE idempotency (
    signer TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    signature TEXT NOT NULL,
    status BIGINT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (signer, idem_key)
);

INSERT INTO accounts (id, kind, balance) VALUES ('mint', 'mint', 0);
