//! `laundromat hosts`: the broker's host directory, cheapest first.

use broker::client::ClientError;
use broker::directory;
use laundromat_api::types::HostEntry;

/// One line per host: price, free capacity, advert age and URL.
fn table(entries: &[HostEntry]) -> String {
    let mut text = format!(
        "{:<32}  {:>10}  {:>9}  {:>5}  {:>7}  URL",
        "HOST", "PRICE/LINK", "FREE MiB", "vCPUs", "AGE"
    );
    for entry in entries {
        let id = entry.host.host_id.to_string();
        match &entry.advert {
            Some(advert) => {
                let age = entry
                    .advert_age_secs
                    .map_or_else(|| "?".into(), |age| format!("{age}s"));
                let stale = if entry.stale { " (stale)" } else { "" };
                text.push_str(&format!(
                    "\n{id:<32}  {:>10}  {:>9}  {:>5}  {age:>7}  {}{stale}",
                    advert.price_per_link, advert.free_memory_mib, advert.free_vcpus, advert.url
                ));
            }
            None => text.push_str(&format!(
                "\n{id:<32}  {:>10}  {:>9}  {:>5}  {:>7}  (never advertised)",
                "-", "-", "-", "-"
            )),
        }
    }
    text
}

pub async fn run(broker_url: &str, json: bool) -> Result<(), ClientError> {
    let mut entries = directory::fetch(broker_url).await?;
    directory::sort_cheapest_first(&mut entries);
    super::print(json, &entries, |entries| table(entries));
    Ok(())
}
