//! Where a VM runs now, for `pay --follow`, after its host stopped taking its payments.
//!
//! A host the VM migrated away from says so: a `vm_moved` refusal names the destination and,
//! when the source knew it, the destination's URL. Without a URL, or when the host no longer
//! knows the VM at all (it restarted since, say), the broker knows: whichever host holds the
//! token's lease runs the VM, and the host directory holds that host's advertised URL.
//!
//! Following never touches the payer's state: the token file stays the one record of what was
//! revealed, and the new host's paid index is where paying resumes, so the switch neither
//! re-spends nor skips a link.

use std::time::Duration;

use broker::client::Client;
use laundromat_api::hostd_client::ClientError;
use laundromat_api::paths;
use laundromat_api::types::{HostEntry, TokenState};
use token::{HostId, TokenId};

use crate::CliError;

/// How long `pay --follow` keeps trying while no host takes the VM's payments (its host is
/// unreachable, or the VM is between hosts) before it gives up.
pub const PATIENCE: Duration = Duration::from_secs(60);
/// The first pause between tries; it doubles up to [`MAX_PAUSE`].
pub const FIRST_PAUSE: Duration = Duration::from_millis(250);
pub const MAX_PAUSE: Duration = Duration::from_secs(2);

/// What to do after a payment failed while following.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Ask the same host again after a pause: it is unreachable or shedding load, or the VM
    /// is starting, stopping or between hosts there.
    Wait,
    /// The VM runs on `host_id` at `url` now.
    MoveTo { host_id: String, url: String },
}

/// Decides how to follow the VM after `error`; gives `error` back if it is not about where
/// the VM runs (a forged or refused link, a spent chain, ...). `here` is the host id of the
/// host that refused.
pub async fn after(
    broker: &str,
    error: CliError,
    token_id: &str,
    here: &str,
) -> Result<Next, CliError> {
    let CliError::Hostd(hostd) = &error else {
        return Err(error);
    };
    if let Some(moved) = hostd.moved() {
        let url = match moved.url {
            Some(url) => url,
            None => url_of(broker, &moved.host_id).await?,
        };
        return Ok(Next::MoveTo {
            host_id: moved.host_id,
            url,
        });
    }
    match (hostd, hostd.code()) {
        (ClientError::Http(_), _) => Ok(Next::Wait),
        (_, Some("vm_not_running")) => Ok(Next::Wait),
        (_, Some("vm_not_found")) => holder(broker, token_id, here, error).await,
        _ if hostd.status() == Some(503) => Ok(Next::Wait),
        _ => Err(error),
    }
}

/// The host that holds the token's lease, when `here` no longer knows the VM: it runs the VM.
async fn holder(
    broker: &str,
    token_id: &str,
    here: &str,
    not_found: CliError,
) -> Result<Next, CliError> {
    let id: TokenId = token_id
        .parse()
        .map_err(|_| CliError::TokenId(token_id.to_owned()))?;
    let state: TokenState = match reader(broker).get(&paths::token(&id)).await {
        Ok(state) => state,
        // Without the broker's word the VM may still be on its way here: ask again (within
        // the payer's patience).
        Err(error) => {
            eprintln!("laundromat: cannot ask the broker where the VM went: {error}");
            return Ok(Next::Wait);
        }
    };
    match state.holder.map(|h| h.to_string()) {
        // The lease has not moved yet (a handover waits for the destination's word), or the
        // host is releasing it: ask again.
        Some(holder) if holder == here => Ok(Next::Wait),
        _ if state.handover_to.is_some() => Ok(Next::Wait),
        Some(holder) => {
            let url = url_of(broker, &holder).await?;
            Ok(Next::MoveTo {
                host_id: holder,
                url,
            })
        }
        None => Err(not_found),
    }
}

/// A host's hostd URL, from its advert in the broker's directory.
async fn url_of(broker: &str, host_id: &str) -> Result<String, CliError> {
    let id: HostId = host_id
        .parse()
        .map_err(|_| CliError::NoHostUrl(host_id.to_owned()))?;
    let entry: HostEntry = reader(broker).get(&paths::host(&id)).await?;
    entry
        .advert
        .map(|advert| advert.url)
        .ok_or_else(|| CliError::NoHostUrl(host_id.to_owned()))
}

/// A client for the broker's public reads, which are not signed.
fn reader(broker: &str) -> Client {
    Client::new(broker, token::SigningKey::from_bytes(&[0; 32]))
}

#[cfg(test)]
mod tests {
    use laundromat_api::hostd::{moved_message, ErrorBody};

    use super::*;

    fn refusal(status: u16, code: &str, message: String) -> CliError {
        CliError::Hostd(ClientError::Refused {
            status,
            body: ErrorBody {
                error: code.into(),
                message,
            },
        })
    }

    // The broker's address is never dialled in these cases.
    const NO_BROKER: &str = "http://127.0.0.1:9";

    #[tokio::test]
    async fn a_moved_refusal_with_a_url_is_followed_there() {
        let to = "cd".repeat(16);
        let error = refusal(409, "vm_moved", moved_message("v", &to, "http://b:8480"));
        let next = after(NO_BROKER, error, "t", "here").await.unwrap();
        assert_eq!(
            next,
            Next::MoveTo {
                host_id: to,
                url: "http://b:8480".into()
            }
        );
    }

    #[tokio::test]
    async fn a_host_between_states_is_asked_again_and_a_refused_link_is_not_followed() {
        let busy = refusal(409, "vm_not_running", "VM v is starting".into());
        assert_eq!(after(NO_BROKER, busy, "t", "h").await.unwrap(), Next::Wait);
        let shedding = refusal(503, "overloaded", "busy".into());
        assert_eq!(
            after(NO_BROKER, shedding, "t", "h").await.unwrap(),
            Next::Wait
        );
        for code in ["forged", "replayed", "wrong_chain", "token_expired"] {
            let error = refusal(403, code, "no".into());
            assert!(
                matches!(after(NO_BROKER, error, "t", "h").await, Err(CliError::Hostd(e)) if e.code() == Some(code))
            );
        }
        assert!(matches!(
            after(NO_BROKER, CliError::ChainSpent, "t", "h").await,
            Err(CliError::ChainSpent)
        ));
    }

    #[tokio::test]
    async fn a_vm_not_found_with_no_broker_to_ask_is_asked_again() {
        let gone = refusal(404, "vm_not_found", "there is no VM v".into());
        let token = "ab".repeat(16);
        assert_eq!(
            after(NO_BROKER, gone, &token, "h").await.unwrap(),
            Next::Wait
        );
        let bad_token = refusal(404, "vm_not_found", "there is no VM v".into());
        assert!(matches!(
            after(NO_BROKER, bad_token, "not hex", "h").await,
            Err(CliError::TokenId(_))
        ));
    }
}
