//! Payments: links are accepted in order and persisted; replayed, out-of-order, forged and
//! other-chain links are refused and change nothing.

mod common;

use common::*;
use hostd::record::VmRecord;
use token::{Link, Payment};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_links_are_refused_and_change_nothing() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let spec = TokenSpec::new(&kernel, IDLE);
    let mut bought = spec.buy();
    let mut other = spec.buy();
    let hostd = Hostd::start(&["--max-skip", "8"], &[&bought, &other], &[]);
    let vm = hostd.admit(&bought, &kernel, IDLE).await.unwrap();
    let period = bought.token().link_period_ms;

    let first = bought.payer.pay(1).unwrap();
    let receipt = hostd.client.pay(&vm.vm_id, &first).await.unwrap();
    assert_eq!((receipt.index, receipt.links_paid), (1, 1));
    assert_eq!(receipt.paid_until_ms, vm.admitted_at_ms + period);
    let third = bought.payer.pay(2).unwrap();
    assert_eq!(hostd.client.pay(&vm.vm_id, &third).await.unwrap().index, 3);

    let other_link = other.payer.pay(4).unwrap();
    let cases = [
        (third, "replayed", 409),
        (first, "replayed", 409),
        (
            Payment {
                index: 4,
                link: Link([0x42; 32]),
                ..third
            },
            "forged",
            403,
        ),
        // Link 4 of another token's chain, sent for this token.
        (
            Payment {
                token_id: third.token_id,
                ..other_link
            },
            "forged",
            403,
        ),
        // Another token's payment as it is.
        (other_link, "wrong_chain", 403),
        (Payment { index: 12, ..third }, "skip_too_large", 400),
        (
            Payment {
                index: 101,
                ..third
            },
            "beyond_chain_end",
            400,
        ),
    ];
    for (payment, code, status) in cases {
        let refused = hostd.client.pay(&vm.vm_id, &payment).await.unwrap_err();
        assert_eq!(
            (refused.code(), refused.status()),
            (Some(code), Some(status)),
            "{refused}"
        );
    }
    let view = hostd.client.vm(&vm.vm_id).await.unwrap();
    assert_eq!(view.paid_index, 3);
    assert_eq!(view.paid_until_ms, vm.admitted_at_ms + 3 * period);
    // The accepted link is on disk.
    let record = VmRecord::load(&hostd.data_dir().join("vms").join(&vm.vm_id)).unwrap();
    assert_eq!((record.payment.index, record.payment.link), (3, third.link));

    // The next link in order is still accepted.
    let fourth = bought.payer.pay(1).unwrap();
    assert_eq!(hostd.client.pay(&vm.vm_id, &fourth).await.unwrap().index, 4);
    let unknown = hostd
        .client
        .pay(&"00".repeat(16), &fourth)
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Some("vm_not_found"));
    let metrics = hostd.client.metrics().await.unwrap();
    assert!(
        metrics.contains("hostd_payments_total{outcome=\"accepted\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hostd_payments_total{outcome=\"replayed\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hostd_payments_total{outcome=\"forged\"} 2\n"),
        "{metrics}"
    );
}
