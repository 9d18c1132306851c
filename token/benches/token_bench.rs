//! `cargo bench -p token`: the costs that matter to a host and a tenant, as a table.
//!
//! - Token verification: what a host spends admitting a VM (decode, `verify_strict`, checks).
//! - Link verification: what a host spends per payment, next to plain SHA-256 of the same
//!   104-byte input and of a one-block input, to show the precomputed first block at work.
//! - The payer's time per link (mean and worst) and memory for a 2^20-link chain.
//!
//! Figures are medians over repeated runs, so one descheduled run does not move them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use token::{
    image_digest, BootToken, BrokerKeys, ClusterId, KeyId, Link, Payer, SignedToken, SigningKey,
    TokenId, Verifier, TOKEN_VERSION,
};

const RUNS: usize = 31;

fn main() {
    println!("token benchmarks ({RUNS} runs each, medians)\n");
    let rows = [token_verification(), link_verification(), payer(1 << 20)];
    println!("{:<44} {:>14}  {:<24}", "measure", "value", "target");
    println!("{}", "-".repeat(86));
    for row in rows.iter().flatten() {
        println!("{:<44} {:>14}  {:<24}", row.0, row.1, row.2);
    }
}

type Row = (String, String, String);

fn row(measure: &str, value: String, target: &str) -> Row {
    (measure.to_string(), value, target.to_string())
}

/// Median of `RUNS` runs of `batch`, each timing `per_run` operations; per operation.
fn median_per_op(per_run: u32, batch: impl FnMut()) -> Duration {
    interleaved_medians(per_run, &mut [Box::new(batch)])[0]
}

/// Like [`median_per_op`] for several batches whose times are compared: their runs
/// alternate, so that load from other processes falls on all of them alike.
fn interleaved_medians(per_run: u32, batches: &mut [Box<dyn FnMut() + '_>]) -> Vec<Duration> {
    let mut runs = vec![Vec::with_capacity(RUNS); batches.len()];
    for _ in 0..RUNS {
        for (batch, times) in batches.iter_mut().zip(&mut runs) {
            let start = Instant::now();
            batch();
            times.push(start.elapsed() / per_run);
        }
    }
    runs.into_iter()
        .map(|mut times| {
            times.sort();
            times[RUNS / 2]
        })
        .collect()
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn sample_token(length: u64, root: Link) -> BootToken {
    BootToken {
        version: TOKEN_VERSION,
        broker_key_id: KeyId(1),
        token_id: TokenId([7; 16]),
        tenant_key: SigningKey::from_bytes(&[2; 32]).verifying_key(),
        cluster_id: ClusterId([3; 16]),
        image_digest: image_digest(b"kernel", None, "console=ttyS0"),
        vcpus: 2,
        memory_mib: 512,
        price_per_link: 10,
        link_period_ms: 1_000,
        chain_root: root,
        chain_length: length,
        not_before: 1_700_000_000,
        expiry: 1_800_000_000,
    }
}

fn token_verification() -> Vec<Row> {
    let broker = SigningKey::from_bytes(&[1; 32]);
    let keys: BrokerKeys = [(KeyId(1), broker.verifying_key())].into_iter().collect();
    let token = sample_token(1024, Link([9; 32]));
    let (cluster, image) = (token.cluster_id, token.image_digest);
    let bytes = SignedToken::sign(token, &broker)
        .expect("the sample token is valid")
        .to_bytes();
    const BATCH: u32 = 200;
    let per_token = median_per_op(BATCH, || {
        for _ in 0..BATCH {
            let verified = SignedToken::decode_and_verify(
                black_box(&bytes),
                &keys,
                black_box(1_750_000_000),
                &cluster,
                &image,
            );
            assert!(black_box(verified).is_ok());
        }
    });
    vec![row(
        "token verification (decode + verify_strict)",
        format!("{:.1} µs", micros(per_token)),
        &format!(
            "≤ 60 µs: {}",
            verdict(per_token <= Duration::from_micros(60))
        ),
    )]
}

fn link_verification() -> Vec<Row> {
    const LINKS: u64 = 1 << 16;
    let seed = Link([4; 32]);
    let mut payer = Payer::new(TokenId([7; 16]), &seed, LINKS).expect("a valid length");
    let token = sample_token(LINKS, payer.root());
    let links: Vec<Link> = (0..LINKS)
        .map(|_| payer.next_link().expect("links remain").1)
        .collect();
    let fresh = Verifier::new(&token, 1).expect("a valid verifier");
    let same_size = [0x5a_u8; 104];
    let one_block = [0x5a_u8; 40];
    // One pass over the chain per run; the raw hashes run the same count.
    let count = LINKS as u32;
    let medians = interleaved_medians(
        count,
        &mut [
            Box::new(|| {
                let mut verifier = fresh.clone();
                for (index, link) in (1..).zip(&links) {
                    assert!(verifier.accept(index, black_box(link)).is_ok());
                }
                black_box(verifier);
            }),
            Box::new(|| {
                for _ in 0..count {
                    black_box(Sha256::digest(black_box(&same_size)));
                }
            }),
            Box::new(|| {
                for _ in 0..count {
                    black_box(Sha256::digest(black_box(&one_block)));
                }
            }),
        ],
    );
    let (link, raw_104, raw_40) = (medians[0], medians[1], medians[2]);
    let ratio_block = nanos(link) / nanos(raw_40);
    vec![
        row(
            "link verification (one step)",
            format!("{:.0} ns", nanos(link)),
            "",
        ),
        row(
            "raw SHA-256, 104 bytes (two blocks)",
            format!("{:.0} ns", nanos(raw_104)),
            "",
        ),
        row(
            "raw SHA-256, 40 bytes (one block)",
            format!("{:.0} ns", nanos(raw_40)),
            "",
        ),
        row(
            "link / raw 104 bytes",
            format!("{:.2}×", nanos(link) / nanos(raw_104)),
            "",
        ),
        row(
            "link / raw one block",
            format!("{ratio_block:.2}×"),
            &format!("≤ 1.5×: {}", verdict(ratio_block <= 1.5)),
        ),
    ]
}

/// Runs over the whole chain for the payer's figures. The worst case per link is the worst,
/// over link indices, of the best time over the passes: one pass alone would report the
/// longest time the process was descheduled, not the algorithm's worst case.
const PAYER_PASSES: usize = 5;

fn payer(length: u64) -> Vec<Row> {
    let seed = Link([4; 32]);
    let mut setups = Vec::with_capacity(PAYER_PASSES);
    let mut means = Vec::with_capacity(PAYER_PASSES);
    let mut best = vec![Duration::MAX; length as usize];
    let mut memory = 0;
    for _ in 0..PAYER_PASSES {
        let start = Instant::now();
        let mut payer = Payer::new(TokenId([7; 16]), &seed, length).expect("a valid length");
        setups.push(start.elapsed());
        memory = payer.memory_bytes();
        let pass = Instant::now();
        for best in &mut best {
            let start = Instant::now();
            let revealed = payer.next_link();
            *best = (*best).min(start.elapsed());
            assert!(black_box(revealed).is_ok());
        }
        means.push(pass.elapsed() / length as u32);
        assert!(payer.next_link().is_err());
    }
    setups.sort();
    means.sort();
    let mut sorted = best.clone();
    sorted.sort();
    let p99 = sorted[sorted.len() * 99 / 100];
    let worst = sorted[sorted.len() - 1];
    let label = |what: &str| format!("payer, n = 2^{}: {what}", length.trailing_zeros());
    vec![
        row(
            &label("setup (n hashes, once)"),
            format!("{:.1} ms", millis(setups[PAYER_PASSES / 2])),
            "",
        ),
        row(
            &label("per link, mean"),
            format!("{:.0} ns", nanos(means[PAYER_PASSES / 2])),
            "",
        ),
        row(&label("per link, p99"), format!("{:.0} ns", nanos(p99)), ""),
        row(
            &label("per link, worst"),
            format!("{:.0} ns", nanos(worst)),
            "",
        ),
        row(
            &label("memory"),
            format!("{memory} B"),
            &format!("≤ 64 KiB: {}", verdict(memory <= 64 * 1024)),
        ),
    ]
}

fn nanos(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e9
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}
