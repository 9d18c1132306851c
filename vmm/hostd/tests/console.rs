//! A followed console (`GET /v1/vms/{id}/console?follow=true`): the tenant gets a bench
//! guest's output as it comes, in order; a follower that asks for bytes the bounded ring no
//! longer holds is told how many it missed; followers beyond the host's limit get 503; another
//! tenant is refused; and the stream ends when the VM stops.

mod common;

use std::time::Duration;

use common::*;
use hostd::client::ConsoleFollow;
use laundromat_api::hostd::{ConsoleEnd, ConsoleEvent};

/// The next event, failing the test if none comes within a generous time.
async fn next(stream: &mut ConsoleFollow) -> Option<ConsoleEvent> {
    tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("no console event within 60 s")
        .expect("the console stream failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_console_streams_until_the_vm_stops() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let mut bought = TokenSpec::new(&kernel, IDLE).buy();
    // A 1 KiB ring: the guest's reports (every 100 ms) overrun it within seconds.
    let hostd = Hostd::start(
        &["--console-kib", "1", "--max-console-followers", "2"],
        &[&bought],
        &[],
    );
    let vm = hostd.admit(&bought, &kernel, IDLE).await.unwrap();
    let id = vm.vm_id.clone();
    hostd
        .client
        .pay(&id, &bought.payer.pay(2).unwrap())
        .await
        .unwrap();

    let refused = hostd
        .client
        .console_follow(&id, 0, &tenant(2))
        .await
        .err()
        .expect("another tenant followed the console");
    assert_eq!(
        (refused.code(), refused.status()),
        (Some("not_the_tenant"), Some(403))
    );

    // The tenant's follower gets the output in order, without gaps, as the guest writes it.
    let mut live = hostd
        .client
        .console_follow(&id, 0, &bought.tenant)
        .await
        .unwrap();
    let (mut text, mut at) = (String::new(), 0);
    while text.matches("t=").count() < 3 {
        match next(&mut live).await {
            Some(ConsoleEvent::Output {
                start,
                next,
                output,
            }) => {
                assert_eq!(start, at, "output out of order");
                at = next;
                text.push_str(&output);
            }
            Some(ConsoleEvent::Missed { from, to, .. }) if from == at => at = to,
            other => panic!("unexpected {other:?} after {text:?}"),
        }
    }

    // Once the ring has wrapped, a follower from offset 0 is told what it missed, then goes on
    // from the oldest byte kept.
    assert!(
        eventually(Duration::from_secs(60), || {
            futures_block(hostd.client.vm(&id)).unwrap().console_bytes > 2048
        })
        .await
    );
    let mut late = hostd
        .client
        .console_follow(&id, 0, &bought.tenant)
        .await
        .unwrap();
    let Some(ConsoleEvent::Missed { from, to, bytes }) = next(&mut late).await else {
        panic!("a late follower was not told what it missed");
    };
    assert_eq!((from, bytes), (0, to));
    assert!(to > 1024, "missed only {to} bytes of a 1 KiB ring");
    match next(&mut late).await {
        Some(ConsoleEvent::Output { start, .. }) => assert_eq!(start, to),
        other => panic!("expected output after the gap, got {other:?}"),
    }

    // Two followers is the limit here: a third is shed, as any flood is.
    let shed = hostd
        .client
        .console_follow(&id, 0, &bought.tenant)
        .await
        .err()
        .expect("a follower beyond the limit was accepted");
    assert_eq!(
        (shed.code(), shed.status()),
        (Some("overloaded"), Some(503))
    );
    // A follower that goes away gives its place back.
    drop(late);
    let mut again = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            again = futures_block(hostd.client.console_follow(&id, 0, &bought.tenant)).ok();
            again.is_some()
        })
        .await,
        "a follower's place was not given back"
    );
    drop(again);

    // The tenant stops the VM: the stream sends what is left, then ends.
    hostd.client.stop(&id, &bought.tenant).await.unwrap();
    let end = loop {
        match next(&mut live).await {
            Some(ConsoleEvent::End { next, reason, .. }) => break (next, reason),
            Some(_) => {}
            None => panic!("the stream closed without an end"),
        }
    };
    assert_eq!(end.1, ConsoleEnd::Stopped);
    assert!(end.0 > at);
    assert_eq!(next(&mut live).await, None, "nothing after the end");
}
