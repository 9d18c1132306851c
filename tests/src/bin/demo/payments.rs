//! The payments as the payer saw them, against what each host counted: every link accepted
//! once, by one host, in order, across the migration.
use super::*;

use tenant::Receipt;

/// What the payer's receipts say each host was paid.
#[derive(Serialize, Debug, Default)]
pub(super) struct Payments {
    /// Links host-a accepted, by the payer's receipts.
    pub(super) host_a_links: u64,
    pub(super) host_b_links: u64,
    /// The last link the payer paid.
    pub(super) last_link: u64,
    /// Payments each host counted as accepted on its `/metrics`.
    pub(super) host_a_accepted: u64,
    pub(super) host_b_accepted: u64,
    /// Whatever does not hold.
    #[serde(skip)]
    pub(super) problems: Vec<String>,
}

/// hostd's count of payments it accepted.
const ACCEPTED: &str = "hostd_payments_total{outcome=\"accepted\"}";

impl Payments {
    /// Tallies `receipts` per host and compares them with the hosts' own counts.
    pub(super) fn tally(story: &Story, receipts: &[Receipt]) -> Result<Self> {
        let mut payments = Payments::default();
        let mut counts = [0u64; 2];
        for receipt in receipts {
            // Each receipt continues exactly where the last one ended: no link twice, none
            // skipped, whichever host took it.
            if receipt.index != payments.last_link + receipt.links_paid {
                payments.problems.push(format!(
                    "link {} paid {} links after link {}",
                    receipt.index, receipt.links_paid, payments.last_link
                ));
            }
            payments.last_link = receipt.index;
            match story.hosts.iter().position(|h| h.url() == receipt.host) {
                Some(0) => {
                    payments.host_a_links += receipt.links_paid;
                    counts[0] += 1;
                }
                Some(_) => {
                    payments.host_b_links += receipt.links_paid;
                    counts[1] += 1;
                }
                None => payments
                    .problems
                    .push(format!("link {} went to {}", receipt.index, receipt.host)),
            }
        }
        let accepted = |host: &Hostd| host.metric(ACCEPTED).map(|v| v as u64);
        payments.host_a_accepted = accepted(&story.hosts[0])?;
        payments.host_b_accepted = accepted(&story.hosts[1])?;
        for (name, receipts, accepted) in [
            (HOST_A, counts[0], payments.host_a_accepted),
            (HOST_B, counts[1], payments.host_b_accepted),
        ] {
            if receipts != accepted {
                payments.problems.push(format!(
                    "{name} accepted {accepted} payments, the payer has {receipts} receipts from it"
                ));
            }
        }
        if payments.host_a_links == 0 || payments.host_b_links == 0 {
            payments
                .problems
                .push("the payer should have paid both hosts".to_owned());
        }
        // After the move, every link went to host-b.
        if let Some(first_b) = receipts.iter().position(|r| r.host == story.hosts[1].url()) {
            if receipts[first_b..]
                .iter()
                .any(|r| r.host != story.hosts[1].url())
            {
                payments
                    .problems
                    .push("the payer went back to host-a after paying host-b".to_owned());
            }
        }
        Ok(payments)
    }

    /// Whether what each host earned at the broker is what the payer paid it.
    pub(super) fn check_earnings(&mut self, ledger: &Ledger, price: u64) {
        for (name, links, earned) in [
            (HOST_A, self.host_a_links, ledger.host_a),
            (HOST_B, self.host_b_links, ledger.host_b),
        ] {
            if links * price != earned {
                self.problems.push(format!(
                    "{name} earned {earned}, but was paid {links} links of {price}"
                ));
            }
        }
    }

    pub(super) fn print(&self, out: Out) {
        out.line(format_args!(
            "
Payments (the payer's receipts; the hosts' own counts)
  links 1..={} paid in order, none twice
  host-a accepted {:>4} links   ({} payments by its /metrics)
  host-b accepted {:>4} links   ({} payments by its /metrics)",
            self.last_link,
            self.host_a_links,
            self.host_a_accepted,
            self.host_b_links,
            self.host_b_accepted,
        ));
    }
}
