//! `broker check`: proves the ledger's invariants from the stored rows alone.
//!
//! - Conservation: the balances of all accounts (each its row plus its credit shards) sum to
//!   zero.
//! - No account below zero (the mint never above).
//! - Double entry: every balance equals the transfers into it minus the transfers out.
//! - Each token's escrow equals its unredeemed links × price (0 once refunded), and its
//!   lease ranges are consecutive, closed except the last, within the chain, and agree with
//!   the recorded lease holder.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{AnyPool, Row};

use crate::error::ServiceError;

/// What the check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub accounts: u64,
    pub transfers: u64,
    pub tokens: u64,
    /// Money issued by the operator: minus the mint's balance.
    pub issued: i64,
    pub violations: Vec<String>,
}

#[derive(Default)]
struct TokenFacts {
    chain_length: i64,
    price: i64,
    refunded: bool,
    holder: Option<String>,
    escrow: Option<i64>,
    ranges: Vec<(String, i64, Option<i64>, i64)>,
}

pub async fn check(pool: &AnyPool) -> Result<Report, ServiceError> {
    let mut report = Report::default();
    let violations = &mut report.violations;

    let accounts = sqlx::query(
        "SELECT a.id, a.kind, a.balance, \
         CAST(COALESCE((SELECT SUM(t.amount) FROM transfers t WHERE t.to_account = a.id), 0) AS BIGINT), \
         CAST(COALESCE((SELECT SUM(t.amount) FROM transfers t WHERE t.from_account = a.id), 0) AS BIGINT), \
         CAST(COALESCE((SELECT SUM(s.amount) FROM account_shards s WHERE s.account_id = a.id), 0) AS BIGINT) \
         FROM accounts a ORDER BY a.id",
    )
    .fetch_all(pool)
    .await?;
    let mut sum: i128 = 0;
    let mut escrows = BTreeMap::new();
    for row in &accounts {
        let (id, kind, stored, sharded): (String, String, i64, i64) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(5)?,
        );
        let (incoming, outgoing): (i64, i64) = (row.try_get(3)?, row.try_get(4)?);
        // The shards' CHECK keeps each of them non-negative; the sum is the balance.
        let balance = stored.saturating_add(sharded);
        sum += i128::from(balance);
        if kind == "mint" {
            report.issued = -balance;
            if balance > 0 {
                violations.push(format!(
                    "negative balance: the mint {id} holds {balance}, more than zero"
                ));
            }
        } else if balance < 0 {
            violations.push(format!("negative balance: account {id} holds {balance}"));
        }
        if i128::from(balance) != i128::from(incoming) - i128::from(outgoing) {
            violations.push(format!(
                "double entry: account {id} holds {balance}, but its transfers add up to {}",
                i128::from(incoming) - i128::from(outgoing)
            ));
        }
        if let Some(token) = id.strip_prefix("escrow:") {
            escrows.insert(token.to_owned(), balance);
        }
    }
    report.accounts = accounts.len() as u64;
    if sum != 0 {
        violations.push(format!(
            "conservation: the balances of all accounts sum to {sum}, not 0"
        ));
    }
    report.transfers = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM transfers")
        .fetch_one(pool)
        .await?
        .try_into()
        .unwrap_or(0);

    let mut tokens: BTreeMap<String, TokenFacts> = BTreeMap::new();
    for row in sqlx::query(
        "SELECT token_id, chain_length, price_per_link, refunded, lease_holder FROM tokens",
    )
    .fetch_all(pool)
    .await?
    {
        let id: String = row.try_get(0)?;
        let escrow = escrows.remove(&id);
        tokens.insert(
            id,
            TokenFacts {
                chain_length: row.try_get(1)?,
                price: row.try_get(2)?,
                refunded: row.try_get::<i64, _>(3)? != 0,
                holder: row.try_get(4)?,
                escrow,
                ranges: Vec::new(),
            },
        );
    }
    for id in escrows.keys() {
        violations.push(format!("escrow: account escrow:{id} belongs to no token"));
    }
    for row in sqlx::query(
        "SELECT token_id, host_id, start_index, end_index, redeemed_index FROM lease_ranges ORDER BY token_id, seq",
    )
    .fetch_all(pool)
    .await?
    {
        let id: String = row.try_get(0)?;
        let range = (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
        match tokens.get_mut(&id) {
            Some(facts) => facts.ranges.push(range),
            None => violations.push(format!("lease: a range of unknown token {id}")),
        }
    }
    report.tokens = tokens.len() as u64;
    for (id, facts) in &tokens {
        check_token(id, facts, violations);
    }
    Ok(report)
}

fn check_token(id: &str, facts: &TokenFacts, violations: &mut Vec<String>) {
    let mut expected_start = 0;
    let mut redeemed: i128 = 0;
    for (i, (host, start, end, upto)) in facts.ranges.iter().enumerate() {
        let last = i + 1 == facts.ranges.len();
        if *start != expected_start {
            violations.push(format!("lease: token {id}'s range {i} starts at {start}, not where the previous one ended ({expected_start})"));
        }
        if *upto < *start || *upto > facts.chain_length {
            violations.push(format!(
                "lease: token {id}'s range {i} redeemed up to {upto}, outside {start}..={}",
                facts.chain_length
            ));
        }
        match end {
            Some(end) if end != upto => violations.push(format!(
                "lease: token {id}'s closed range {i} ends at {end} but redeemed up to {upto}"
            )),
            None if !last => violations.push(format!(
                "lease: token {id}'s range {i} is open but is not the last"
            )),
            None if facts.holder.as_deref() != Some(host.as_str()) => violations.push(format!(
                "lease: token {id}'s open range is host {host}'s, but the recorded holder is {:?}",
                facts.holder
            )),
            _ => {}
        }
        redeemed += i128::from(upto - start);
        expected_start = *upto;
    }
    let open = facts.ranges.last().is_some_and(|r| r.2.is_none());
    if facts.holder.is_some() && !open {
        violations.push(format!(
            "lease: token {id} records holder {:?} without an open range",
            facts.holder
        ));
    }
    let unredeemed = i128::from(facts.chain_length) - redeemed;
    let expected = if facts.refunded {
        0
    } else {
        unredeemed * i128::from(facts.price)
    };
    let escrow = facts.escrow.map(i128::from);
    if (facts.price > 0 || escrow.is_some()) && escrow.unwrap_or(0) != expected {
        violations.push(format!(
            "escrow: token {id} holds {} in escrow, but its {unredeemed} unredeemed links at {} make {expected}{}",
            escrow.unwrap_or(0),
            facts.price,
            if facts.refunded { " (refunded: 0)" } else { "" }
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_token_violation() {
        let facts = TokenFacts {
            chain_length: 10,
            price: 2,
            refunded: false,
            holder: None,
            escrow: Some(20),
            ranges: vec![("h1".into(), 0, Some(3), 3), ("h2".into(), 2, None, 4)],
        };
        let mut violations = Vec::new();
        check_token("t", &facts, &mut violations);
        assert!(
            violations.iter().any(|v| v.contains("starts at 2")),
            "{violations:?}"
        );
        assert!(
            violations.iter().any(|v| v.contains("recorded holder")),
            "{violations:?}"
        );
        assert!(
            violations
                .iter()
                .any(|v| v.starts_with("escrow: token t holds 20")),
            "{violations:?}"
        );
    }
}
