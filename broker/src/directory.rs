//! The host directory (after Ninja's service discovery): each registered host advertises its
//! free capacity, its price and where its hostd listens, signed with its own key; the broker
//! keeps the newest advert per host and lists them with their age, flagging stale ones.

use laundromat_api::signing::MAX_SKEW_SECS;
use laundromat_api::types::{Advert, Host, HostEntry};
use sqlx::{AnyConnection, Row};
use token::HostId;

use crate::db::{from_db, to_db};
use crate::error::ServiceError;
use crate::service::{Broker, SignedRequest};
use crate::store::{self, key_hex};

/// An advert older than this is flagged stale: hostd advertises every 30 s by default, so
/// three missed adverts mean the host is likely gone.
pub const STALE_AFTER_SECS: u64 = 90;
/// The longest URL a host may advertise.
pub const MAX_URL_LEN: usize = 512;

fn validate(advert: &Advert, now: u64) -> Result<(), ServiceError> {
    let url_ok = (advert.url.starts_with("http://") || advert.url.starts_with("https://"))
        && advert.url.len() <= MAX_URL_LEN
        && advert.url.bytes().all(|b| b.is_ascii_graphic());
    if !url_ok {
        return Err(ServiceError::Unprocessable(format!(
            "the advertised URL must be http:// or https://, visible ASCII, at most {MAX_URL_LEN} bytes"
        )));
    }
    for (name, value) in [
        ("free_memory_mib", advert.free_memory_mib),
        ("free_vcpus", advert.free_vcpus),
        ("price_per_link", advert.price_per_link),
        ("timestamp_ms", advert.timestamp_ms),
    ] {
        if to_db(value).is_none() {
            return Err(ServiceError::Unprocessable(format!(
                "{name} {value} does not fit the directory's 63-bit integers"
            )));
        }
    }
    let made = advert.timestamp_ms / 1000;
    if made.abs_diff(now) > MAX_SKEW_SECS {
        return Err(ServiceError::Unprocessable(format!(
            "the advert was made at {made}, more than {MAX_SKEW_SECS} s from now ({now})"
        )));
    }
    Ok(())
}

/// `POST /v1/hosts/{id}/advert`: stores the advert if the request is signed by host `id`'s
/// registered key and the advert is newer than the one stored.
pub async fn advertise(
    broker: &Broker,
    request: &SignedRequest,
    host_id: &HostId,
) -> Result<HostEntry, ServiceError> {
    let advert: Advert = serde_json::from_slice(&request.body)
        .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
    let now = broker.clock.now();
    validate(&advert, now)?;
    let mut conn = broker.db.pool().acquire().await?;
    let signer = &request.signature.key;
    let (registered_id, host_key, cluster_id) = store::host_by_key(&mut conn, signer)
        .await?
        .ok_or_else(|| ServiceError::UnknownSigner(key_hex(signer)))?;
    if registered_id != *host_id {
        return Err(ServiceError::Forbidden(format!(
            "host {registered_id} signed an advert for host {host_id}; a host advertises only for itself"
        )));
    }
    let int = |value: u64| to_db(value).unwrap_or(i64::MAX);
    let stored = sqlx::query(
        "INSERT INTO adverts (host_id, free_memory_mib, free_vcpus, price_per_link, url, timestamp_ms, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (host_id) DO UPDATE SET free_memory_mib = excluded.free_memory_mib, \
         free_vcpus = excluded.free_vcpus, price_per_link = excluded.price_per_link, url = excluded.url, \
         timestamp_ms = excluded.timestamp_ms, received_at = excluded.received_at \
         WHERE adverts.timestamp_ms < excluded.timestamp_ms",
    )
    .bind(host_id.to_string())
    .bind(int(advert.free_memory_mib))
    .bind(int(advert.free_vcpus))
    .bind(int(advert.price_per_link))
    .bind(&advert.url)
    .bind(int(advert.timestamp_ms))
    .bind(int(now))
    .execute(&mut *conn)
    .await?;
    if stored.rows_affected() == 0 {
        return Err(ServiceError::Conflict(format!(
            "host {host_id} already advertised at or after {} ms; an advert never replaces a newer one",
            advert.timestamp_ms
        )));
    }
    Ok(entry(
        Host {
            host_id: registered_id,
            host_key,
            cluster_id,
        },
        Some(advert),
        now,
    ))
}

fn entry(host: Host, advert: Option<Advert>, now: u64) -> HostEntry {
    let age = advert
        .as_ref()
        .map(|advert| now.saturating_sub(advert.timestamp_ms / 1000));
    HostEntry {
        host,
        stale: age.is_some_and(|age| age > STALE_AFTER_SECS),
        advert_age_secs: age,
        advert,
    }
}

const SELECT: &str = "SELECT h.host_id, h.host_key, h.cluster_id, a.free_memory_mib, a.free_vcpus, \
     a.price_per_link, a.url, a.timestamp_ms FROM hosts h LEFT JOIN adverts a ON a.host_id = h.host_id";

fn parse_entry(row: &sqlx::any::AnyRow, now: u64) -> Result<HostEntry, ServiceError> {
    let host = Host {
        host_id: row
            .try_get::<String, _>(0)?
            .parse()
            .map_err(|_| ServiceError::Corrupt("host id"))?,
        host_key: store::parse_key(&row.try_get::<String, _>(1)?)?,
        cluster_id: row
            .try_get::<String, _>(2)?
            .parse()
            .map_err(|_| ServiceError::Corrupt("cluster id"))?,
    };
    let advert = match row.try_get::<Option<String>, _>(6)? {
        Some(url) => Some(Advert {
            free_memory_mib: from_db(row.try_get::<Option<i64>, _>(3)?.unwrap_or(0)),
            free_vcpus: from_db(row.try_get::<Option<i64>, _>(4)?.unwrap_or(0)),
            price_per_link: from_db(row.try_get::<Option<i64>, _>(5)?.unwrap_or(0)),
            url,
            timestamp_ms: from_db(row.try_get::<Option<i64>, _>(7)?.unwrap_or(0)),
        }),
        None => None,
    };
    Ok(entry(host, advert, now))
}

/// Every registered host with its newest advert, by host id.
pub async fn entries(conn: &mut AnyConnection, now: u64) -> Result<Vec<HostEntry>, ServiceError> {
    let rows = sqlx::query(&format!("{SELECT} ORDER BY h.host_id"))
        .fetch_all(conn)
        .await?;
    rows.iter().map(|row| parse_entry(row, now)).collect()
}

/// One host with its newest advert.
pub async fn entry_of(
    conn: &mut AnyConnection,
    id: &HostId,
    now: u64,
) -> Result<HostEntry, ServiceError> {
    let row = sqlx::query(&format!("{SELECT} WHERE h.host_id = $1"))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("host {id}")))?;
    parse_entry(&row, now)
}

/// Sorts the directory for tenants: hosts with a fresh advert first, cheapest first and then
/// the most free memory; then stale adverts; then hosts that never advertised.
pub fn sort_cheapest_first(entries: &mut [HostEntry]) {
    entries.sort_by_key(|entry| {
        let advert = entry.advert.as_ref();
        (
            advert.is_none(),
            entry.stale,
            advert.map_or(u64::MAX, |a| a.price_per_link),
            std::cmp::Reverse(advert.map_or(0, |a| a.free_memory_mib)),
            entry.host.host_id.to_string(),
        )
    });
}

/// The hosts a token's VM may run on, cheapest first: fresh adverts only, of the token's
/// cluster, with room for `memory_mib` and `vcpus`, asking no more than the token pays per
/// link. Each comes with its advertised URL.
pub fn hosts_that_fit(
    entries: &[HostEntry],
    token: &token::BootToken,
    memory_mib: u64,
    vcpus: u64,
) -> Vec<HostEntry> {
    let mut fit: Vec<HostEntry> = entries
        .iter()
        .filter(|entry| !entry.stale && entry.host.cluster_id == token.cluster_id)
        .filter(|entry| {
            entry.advert.as_ref().is_some_and(|a| {
                a.free_memory_mib >= memory_mib
                    && a.free_vcpus >= vcpus
                    && a.price_per_link <= token.price_per_link
            })
        })
        .cloned()
        .collect();
    sort_cheapest_first(&mut fit);
    fit
}

/// The broker's directory as `GET /v1/hosts` returns it (an unsigned read).
pub async fn fetch(broker_url: &str) -> Result<Vec<HostEntry>, crate::client::ClientError> {
    // Reads are not signed: any key will do for the client.
    let client = crate::client::Client::new(broker_url, token::SigningKey::from_bytes(&[0; 32]));
    client.get(laundromat_api::paths::HOSTS).await
}

#[cfg(test)]
mod tests {
    use token::{ClusterId, SigningKey};

    use super::*;

    fn host_entry(n: u8, advert: Option<(u64, u64)>, age: u64) -> HostEntry {
        let host = Host {
            host_id: HostId([n; 16]),
            host_key: SigningKey::from_bytes(&[n; 32]).verifying_key(),
            cluster_id: ClusterId([1; 16]),
        };
        let now = 10_000;
        let advert = advert.map(|(price, memory)| Advert {
            free_memory_mib: memory,
            free_vcpus: 2,
            price_per_link: price,
            url: format!("http://10.0.0.{n}:8480"),
            timestamp_ms: (now - age) * 1000,
        });
        entry(host, advert, now)
    }

    #[test]
    fn a_token_fits_fresh_hosts_of_its_cluster_with_room_at_its_price() {
        let token = token::BootToken {
            version: token::TOKEN_VERSION,
            broker_key_id: token::KeyId(1),
            token_id: token::TokenId([9; 16]),
            tenant_key: SigningKey::from_bytes(&[9; 32]).verifying_key(),
            cluster_id: ClusterId([1; 16]),
            image_digest: token::ImageDigest([0; 32]),
            vcpus: 1,
            memory_mib: 512,
            price_per_link: 3,
            link_period_ms: 1000,
            chain_root: token::Link([0; 32]),
            chain_length: 10,
            not_before: 0,
            expiry: 1,
        };
        let mut other_cluster = host_entry(6, Some((1, 4096)), 1);
        other_cluster.host.cluster_id = ClusterId([2; 16]);
        let entries = vec![
            host_entry(1, None, 0),                               // never advertised
            host_entry(2, Some((1, 4096)), STALE_AFTER_SECS + 1), // stale
            host_entry(3, Some((4, 4096)), 1),                    // too dear
            host_entry(4, Some((2, 256)), 1),                     // too small
            host_entry(5, Some((3, 1024)), 1),
            host_entry(7, Some((2, 512)), 1),
            other_cluster,
        ];
        let fit = hosts_that_fit(&entries, &token, 512, 1);
        let order: Vec<u8> = fit.iter().map(|e| e.host.host_id.0[0]).collect();
        assert_eq!(order, vec![7, 5]);
        assert!(
            hosts_that_fit(&entries, &token, 512, 3).is_empty(),
            "no host has 3 vCPUs"
        );
    }

    #[test]
    fn the_directory_lists_fresh_cheap_hosts_first() {
        let mut entries = vec![
            host_entry(1, None, 0),
            host_entry(2, Some((1, 512)), STALE_AFTER_SECS + 1),
            host_entry(3, Some((5, 4096)), 3),
            host_entry(4, Some((2, 256)), 1),
            host_entry(5, Some((2, 1024)), 1),
        ];
        assert!(entries[1].stale && !entries[2].stale);
        assert_eq!(entries[2].advert_age_secs, Some(3));
        sort_cheapest_first(&mut entries);
        let order: Vec<u8> = entries.iter().map(|e| e.host.host_id.0[0]).collect();
        assert_eq!(order, vec![5, 4, 3, 2, 1]);
    }

    #[test]
    fn bad_adverts_are_refused() {
        let good = Advert {
            free_memory_mib: 1,
            free_vcpus: 1,
            price_per_link: 1,
            url: "http://h:1".into(),
            timestamp_ms: 1_000_000,
        };
        assert!(validate(&good, 1000).is_ok());
        for bad in [
            Advert {
                url: "ftp://h".into(),
                ..good.clone()
            },
            Advert {
                url: "http://a b".into(),
                ..good.clone()
            },
            Advert {
                free_memory_mib: u64::MAX,
                ..good.clone()
            },
            Advert {
                timestamp_ms: (1000 + MAX_SKEW_SECS + 1) * 1000,
                ..good.clone()
            },
        ] {
            assert!(matches!(
                validate(&bad, 1000),
                Err(ServiceError::Unprocessable(_))
            ));
        }
    }
}
