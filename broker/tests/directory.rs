//! The host directory over HTTP, on SQLite and PostgreSQL: hosts post signed adverts, the
//! newest one per host is listed with its age; forged, stale and malformed adverts are refused.

mod common;

use common::{refused, Backend, TestBroker};
use laundromat_api::paths;
use laundromat_api::types::{Advert, HostEntry};

fn advert(memory: u64, price: u64, timestamp_ms: u64) -> Advert {
    Advert {
        free_memory_mib: memory,
        free_vcpus: 2,
        price_per_link: price,
        url: format!("http://10.0.0.1:{memory}"),
        timestamp_ms,
    }
}

async fn post(
    host: &common::TestHost,
    path: &str,
    body: &Advert,
) -> Result<HostEntry, broker::client::ClientError> {
    let bytes = serde_json::to_vec(body).unwrap();
    host.client
        .send_raw("POST", path, &bytes, None, true)
        .await?
        .decode()
}

async fn adverts_list_the_newest_per_host(backend: Backend) {
    let broker = TestBroker::start(backend).await;
    let (a, b, c) = (
        broker.host(1).await,
        broker.host(2).await,
        broker.host(3).await,
    );
    let now_ms = broker.clock.now() * 1000;
    let entry = post(&a, &paths::advert(&a.id), &advert(1024, 5, now_ms))
        .await
        .unwrap();
    assert_eq!(entry.advert_age_secs, Some(0));
    post(&a, &paths::advert(&a.id), &advert(512, 5, now_ms + 1))
        .await
        .unwrap();
    post(&b, &paths::advert(&b.id), &advert(2048, 3, now_ms))
        .await
        .unwrap();

    // Older than the stored advert (a replay), for another host, malformed, unsigned.
    assert_eq!(
        refused(post(&a, &paths::advert(&a.id), &advert(1, 1, now_ms)).await),
        (409, "conflict".into())
    );
    assert_eq!(
        refused(post(&a, &paths::advert(&b.id), &advert(1, 1, now_ms + 5)).await),
        (403, "forbidden".into())
    );
    let mut bad_url = advert(1, 1, now_ms + 5);
    bad_url.url = "gopher://x".into();
    assert_eq!(
        refused(post(&a, &paths::advert(&a.id), &bad_url).await),
        (422, "unprocessable".into())
    );
    let unsigned = a
        .client
        .send_raw("POST", &paths::advert(&a.id), b"{}", None, false)
        .await
        .unwrap();
    assert_eq!(unsigned.status, 401);

    let mut entries: Vec<HostEntry> = a.client.get(paths::HOSTS).await.unwrap();
    assert_eq!(entries.len(), 3);
    let listed = |id| {
        entries
            .iter()
            .find(|e| e.host.host_id == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(listed(a.id).advert, Some(advert(512, 5, now_ms + 1)));
    assert_eq!(listed(c.id).advert, None);
    broker::directory::sort_cheapest_first(&mut entries);
    let order: Vec<_> = entries.iter().map(|e| e.host.host_id).collect();
    assert_eq!(order, vec![b.id, a.id, c.id]);

    // Old adverts are flagged stale.
    broker
        .clock
        .advance(broker::directory::STALE_AFTER_SECS as i64 + 1);
    let one: HostEntry = a.client.get(&paths::host(&b.id)).await.unwrap();
    assert!(one.stale);
    assert_eq!(
        one.advert_age_secs,
        Some(broker::directory::STALE_AFTER_SECS + 1)
    );
    broker.shutdown().await;
}

both_backends!(adverts_list_the_newest_per_host);
