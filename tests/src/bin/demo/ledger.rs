//! The money at the end: what the tenant put in escrow, what each host earned, what came back,
//! read from the broker through the tenant's own commands, and whether it adds up.
use super::*;

/// What the tenant was credited before buying.
pub(super) const TOPUP: u64 = 100_000;

#[derive(Serialize, Debug)]
pub(super) struct Ledger {
    /// What the purchase put into escrow: links × price.
    pub(super) escrow: u64,
    pub(super) host_a: u64,
    pub(super) host_b: u64,
    /// What the broker returned to the tenant after expiry.
    pub(super) refund: u64,
    /// What the broker paid out to hosts for the token, by its own count.
    pub(super) paid_out: u64,
    pub(super) tenant_balance: u64,
}

impl Ledger {
    /// Reads the token's lease ranges and the tenant's statement.
    pub(super) fn read(story: &Story, token: &Value) -> Result<Self> {
        let price = number(token, "price_per_link")?;
        let chain = number(token, "chain_length")?;
        let ranges = token
            .get("ranges")
            .and_then(Value::as_array)
            .context("the token state has no lease ranges")?;
        let earned = |host: &Hostd| -> Result<u64> {
            let mut total = 0;
            for range in ranges
                .iter()
                .filter(|r| r.get("host_id").and_then(Value::as_str) == Some(&host.id))
            {
                let links = number(range, "redeemed")?.saturating_sub(number(range, "start")?);
                total += links * price;
            }
            Ok(total)
        };
        let statement = story.laundromat(&["account", "show"])?;
        let transfers = statement
            .get("transfers")
            .and_then(Value::as_array)
            .context("the statement has no transfers")?;
        let refund = transfers
            .iter()
            .filter(|t| t.get("kind").and_then(Value::as_str) == Some("refund"))
            .map(|t| number(t, "amount"))
            .sum::<Result<u64>>()?;
        Ok(Ledger {
            escrow: chain * price,
            host_a: earned(&story.hosts[0])?,
            host_b: earned(&story.hosts[1])?,
            refund,
            paid_out: number(token, "redeemed_links")? * price,
            tenant_balance: number(&statement, "balance")?,
        })
    }

    pub(super) fn print(&self, out: Out) {
        out.line(format_args!(
            "
Ledger (from the broker)
  tenant put in escrow    {escrow:>8}
  host-a earned           {a:>8}
  host-b earned           {b:>8}
  refunded to the tenant  {refund:>8}
  tenant balance now      {balance:>8}   (topped up {TOPUP})",
            escrow = self.escrow,
            a = self.host_a,
            b = self.host_b,
            refund = self.refund,
            balance = self.tenant_balance,
        ));
    }

    /// Whatever does not add up.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let paid_out = self.host_a + self.host_b;
        if paid_out + self.refund != self.escrow {
            problems.push(format!(
                "escrow {} is not host-a {} + host-b {} + refund {}",
                self.escrow, self.host_a, self.host_b, self.refund
            ));
        }
        if paid_out != self.paid_out {
            problems.push(format!(
                "the hosts' ranges add up to {paid_out}, the broker paid out {}",
                self.paid_out
            ));
        }
        if TOPUP - self.escrow + self.refund != self.tenant_balance {
            problems.push(format!(
                "the tenant's balance {} is not top-up {TOPUP} - escrow {} + refund {}",
                self.tenant_balance, self.escrow, self.refund
            ));
        }
        if self.host_a == 0 || self.host_b == 0 {
            problems.push("each host should have earned something".to_owned());
        }
        problems
    }
}

/// Everything that went wrong; empty if the demo passed.
pub(super) fn verdict(outcome: &Outcome, ledger: &Ledger, payments: &Payments) -> Vec<String> {
    let mut problems = ledger.problems();
    problems.extend(payments.problems.iter().cloned());
    if outcome.migration.get("status").and_then(Value::as_str) != Some("completed") {
        problems.push(format!(
            "the migration did not complete: {}",
            outcome.migration
        ));
    }
    match outcome.guest_errors {
        Some(0) => {}
        Some(errors) => problems.push(format!("the guest found {errors} errors in its memory")),
        None => problems.push("the guest's own check is unknown".to_owned()),
    }
    if !outcome.reclaimed {
        problems.push("host-b did not reclaim the unpaid VM".to_owned());
    }
    let violations = outcome
        .broker_check
        .get("violations")
        .and_then(Value::as_array);
    if violations.is_none_or(|v| !v.is_empty()) {
        problems.push(format!("broker check: {}", outcome.broker_check));
    }
    problems
}

pub(super) fn print_verdict(outcome: &Outcome, out: Out) {
    match outcome.problems.is_empty() {
        true => out.line(
            "\nPASS: paid, migrated with its memory intact, reclaimed, settled; the ledger adds up",
        ),
        false => {
            out.line("\nFAIL:");
            for problem in &outcome.problems {
                out.line(format_args!("  - {problem}"));
            }
        }
    }
}
