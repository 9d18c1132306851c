-- Credits to a host's earnings, split over one row per broker writer: every redemption of
-- every token a host runs credits that host, and on PostgreSQL one balance row would be
-- locked from each writer's credit to its commit, so concurrent commits would queue on it
-- one fsync at a time. With a row per writer they commit together. An account's balance is
-- its `accounts.balance` plus its shards; `broker check` counts both. Only accounts that
-- are never debited (hosts) are credited here, so a debit's balance check on
-- `accounts.balance` alone stays exact.
CREATE TABLE account_shards (
    account_id TEXT NOT NULL REFERENCES accounts (id),
    shard BIGINT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (account_id, shard)
);
