//! A broker that lives in hostd's process: in memory for tests, or kept in a JSON file
//! (`--broker file:PATH`) so that hostd can run, and be killed and restarted, before it is
//! wired to a real broker. It enforces the rules the real one does for hostd's purposes: one
//! lease holder per token, a handover prepared by the holder and confirmed by the destination
//! (the lease frozen meanwhile), claims signed by the registered host key, credit only above
//! the highest index redeemed (the `token` crate's settlement).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use token::{BootToken, ClusterId, HostId, SignedClaim, SignedToken, TokenId};

use super::file_lock::FileLock;
use super::{
    BoxFuture, BrokerClient, BrokerError, BrokerKey, CapacityAdvert, Handover, HostRecord, Lease,
    Redeemed,
};

/// Everything the fake broker knows; also its file format.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FakeState {
    #[serde(default)]
    pub broker_keys: Vec<BrokerKey>,
    #[serde(default)]
    pub hosts: Vec<HostRecord>,
    /// Tokens it sold, so that claims can be settled against them.
    #[serde(default)]
    pub tokens: Vec<SignedToken>,
    /// Lease holder by token id (hex).
    #[serde(default)]
    pub leases: BTreeMap<TokenId, HostId>,
    /// Highest index redeemed by token id.
    #[serde(default)]
    pub redeemed: BTreeMap<TokenId, u64>,
    /// Credit earned by host id.
    #[serde(default)]
    pub credits: BTreeMap<HostId, u64>,
    #[serde(default)]
    pub adverts: BTreeMap<HostId, CapacityAdvert>,
    /// Redemption calls received, for tests.
    #[serde(default)]
    pub redemptions: u64,
    /// Prepared lease handovers by token, until confirmed or cancelled.
    #[serde(default)]
    pub handovers: BTreeMap<TokenId, Handover>,
}

#[derive(Debug, thiserror::Error)]
pub enum FakeBrokerError {
    #[error("cannot read the broker file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the broker file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Default)]
pub struct FakeBroker {
    state: Mutex<FakeState>,
    file: Option<PathBuf>,
}

impl FakeBroker {
    pub fn new(state: FakeState) -> Self {
        Self {
            state: Mutex::new(state),
            file: None,
        }
    }

    /// A broker kept in `path`; every change is written back atomically.
    pub fn open(path: PathBuf) -> Result<Self, FakeBrokerError> {
        let text = std::fs::read(&path).map_err(|source| FakeBrokerError::Read {
            path: path.clone(),
            source,
        })?;
        let state = serde_json::from_slice(&text).map_err(|source| FakeBrokerError::Parse {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            state: Mutex::new(state),
            file: Some(path),
        })
    }

    pub fn snapshot(&self) -> FakeState {
        self.read()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state: with a file, as the file says now (several hostd processes may
    /// share one file broker, e.g. two hosts in a test or a demo).
    fn read(&self) -> FakeState {
        let mut state = self.lock();
        if let Some(path) = &self.file {
            let current = FileLock::exclusive(path).ok().and_then(|_lock| {
                let bytes = std::fs::read(path).ok()?;
                serde_json::from_slice(&bytes).ok()
            });
            if let Some(current) = current {
                *state = current;
            }
        }
        state.clone()
    }

    /// Runs `change` under the lock (and, with a file, under an exclusive `flock` of
    /// `PATH.lock`, on the file's current contents) and persists the state if it succeeded.
    fn change<T>(
        &self,
        change: impl FnOnce(&mut FakeState) -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            BrokerError::Unavailable(format!("{what} the broker file: {e}"))
        };
        let mut state = self.lock();
        let _file_lock = match &self.file {
            Some(path) => {
                let lock = FileLock::exclusive(path).map_err(|e| unavailable("cannot lock", &e))?;
                let bytes = std::fs::read(path).map_err(|e| unavailable("cannot read", &e))?;
                *state =
                    serde_json::from_slice(&bytes).map_err(|e| unavailable("cannot parse", &e))?;
                Some(lock)
            }
            None => None,
        };
        let mut next = state.clone();
        let result = change(&mut next)?;
        if let Some(path) = &self.file {
            let bytes = serde_json::to_vec_pretty(&next)
                .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            crate::durable::write_atomic(path, &bytes)
                .map_err(|e| unavailable("cannot write", &e))?;
        }
        *state = next;
        Ok(result)
    }
}

fn token<'a>(state: &'a FakeState, id: &TokenId) -> Option<&'a BootToken> {
    state
        .tokens
        .iter()
        .map(SignedToken::token)
        .find(|t| t.token_id == *id)
}

/// Checks a claim against the registry and the token, and returns what settling it would do.
fn check_claim(state: &FakeState, signed: &SignedClaim) -> Result<token::Settlement, BrokerError> {
    let host_id = signed.claim.host_id;
    let host = state
        .hosts
        .iter()
        .find(|h| h.host_id == host_id)
        .ok_or(BrokerError::UnknownHost(host_id))?;
    let verified = signed
        .verify(host_id, &host.key)
        .map_err(|e| BrokerError::ClaimRefused(e.to_string()))?;
    let token_id = signed.claim.token_id;
    let token = token(state, &token_id)
        .ok_or_else(|| BrokerError::ClaimRefused(format!("token {token_id} was never sold")))?;
    let highest = state.redeemed.get(&token_id).copied().unwrap_or(0);
    token::settle(token, highest, &verified).map_err(|e| BrokerError::ClaimRefused(e.to_string()))
}

fn redeem(state: &mut FakeState, signed: &SignedClaim) -> Result<Redeemed, BrokerError> {
    let (host_id, token_id) = (signed.claim.host_id, signed.claim.token_id);
    let settlement = check_claim(state, signed)?;
    state.redemptions += 1;
    state.redeemed.insert(token_id, settlement.highest_redeemed);
    *state.credits.entry(host_id).or_default() += settlement.credit;
    Ok(Redeemed {
        credit: settlement.credit,
        highest_redeemed: settlement.highest_redeemed,
    })
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

impl BrokerClient for FakeBroker {
    fn broker_keys(&self) -> BoxFuture<'_, Result<Vec<BrokerKey>, BrokerError>> {
        ready(Ok(self.read().broker_keys))
    }

    fn host(&self, host_id: HostId) -> BoxFuture<'_, Result<Option<HostRecord>, BrokerError>> {
        let state = self.read();
        let found = state.hosts.iter().find(|h| h.host_id == host_id).map(|h| {
            let mut record = h.clone();
            // Where it listens: registered, or else as it last advertised.
            if record.url.is_none() {
                record.url = state.adverts.get(&host_id).map(|a| a.url.clone());
            }
            record
        });
        ready(Ok(found))
    }

    fn acquire_lease(
        &self,
        token_id: TokenId,
        host_id: HostId,
    ) -> BoxFuture<'_, Result<Lease, BrokerError>> {
        ready(self.change(|state| {
            if !state.hosts.iter().any(|h| h.host_id == host_id) {
                return Err(BrokerError::UnknownHost(host_id));
            }
            match state.leases.get(&token_id) {
                Some(holder) if *holder != host_id => Err(BrokerError::LeaseHeld {
                    token_id,
                    holder: *holder,
                }),
                _ => {
                    state.leases.insert(token_id, host_id);
                    Ok(Lease {
                        token_id,
                        holder: host_id,
                    })
                }
            }
        }))
    }

    fn hand_over_lease(&self, handover: Handover) -> BoxFuture<'_, Result<Lease, BrokerError>> {
        ready(self.change(|state| {
            let Handover {
                token_id,
                from,
                to,
                final_claim,
            } = &handover;
            let token_id = *token_id;
            if state.leases.get(&token_id) != Some(from) {
                return Err(BrokerError::NotLeaseHolder { token_id });
            }
            if !state.hosts.iter().any(|h| h.host_id == *to) || to == from {
                return Err(BrokerError::UnknownHost(*to));
            }
            if final_claim.claim.host_id != *from || final_claim.claim.token_id != token_id {
                return Err(BrokerError::ClaimRefused(
                    "the final claim is not the source's claim for this token".into(),
                ));
            }
            // Checked now, paid at confirmation.
            redeem(&mut state.clone(), final_claim)?;
            state.handovers.insert(token_id, handover.clone());
            Ok(Lease {
                token_id,
                holder: *from,
            })
        }))
    }

    fn confirm_handover(
        &self,
        token_id: TokenId,
        host_id: HostId,
    ) -> BoxFuture<'_, Result<Lease, BrokerError>> {
        ready(self.change(|state| {
            let lease = Lease {
                token_id,
                holder: host_id,
            };
            let Some(handover) = state.handovers.get(&token_id).cloned() else {
                return match state.leases.get(&token_id) {
                    Some(holder) if *holder == host_id => Ok(lease),
                    _ => Err(BrokerError::NoHandover { token_id }),
                };
            };
            if handover.to != host_id {
                return Err(BrokerError::NoHandover { token_id });
            }
            redeem(state, &handover.final_claim)?;
            state.handovers.remove(&token_id);
            state.leases.insert(token_id, host_id);
            Ok(lease)
        }))
    }

    fn cancel_handover(
        &self,
        token_id: TokenId,
        host_id: HostId,
    ) -> BoxFuture<'_, Result<Lease, BrokerError>> {
        ready(self.change(|state| match state.handovers.get(&token_id) {
            Some(h) if h.to == host_id || h.from == host_id => {
                let from = h.from;
                state.handovers.remove(&token_id);
                Ok(Lease {
                    token_id,
                    holder: from,
                })
            }
            _ => Err(BrokerError::NoHandover { token_id }),
        }))
    }

    fn release_lease(
        &self,
        token_id: TokenId,
        host_id: HostId,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        ready(self.change(|state| {
            if state.leases.get(&token_id) != Some(&host_id) {
                return Err(BrokerError::NotLeaseHolder { token_id });
            }
            // A lease being handed over is frozen until confirmed or cancelled.
            if state.handovers.contains_key(&token_id) {
                return Err(BrokerError::HandoverPending { token_id });
            }
            state.leases.remove(&token_id);
            Ok(())
        }))
    }

    fn redeem(&self, claim: SignedClaim) -> BoxFuture<'_, Result<Redeemed, BrokerError>> {
        ready(self.change(|state| redeem(state, &claim)))
    }

    /// All claims in one change of the state (one write of the file), each settled as
    /// [`FakeBroker::redeem`] would, in order.
    fn redeem_many(
        &self,
        claims: Vec<SignedClaim>,
    ) -> BoxFuture<'_, Result<Vec<Result<Redeemed, BrokerError>>, BrokerError>> {
        ready(self.change(|state| Ok(claims.iter().map(|c| redeem(state, c)).collect())))
    }

    fn advertise(&self, advert: CapacityAdvert) -> BoxFuture<'_, Result<(), BrokerError>> {
        ready(self.change(|state| {
            state.adverts.insert(advert.host_id, advert);
            Ok(())
        }))
    }

    fn directory(
        &self,
        cluster_id: ClusterId,
    ) -> BoxFuture<'_, Result<Vec<CapacityAdvert>, BrokerError>> {
        let state = self.read();
        let registered = |id: &HostId| state.hosts.iter().any(|h| h.host_id == *id);
        ready(Ok(state
            .adverts
            .values()
            .filter(|a| a.cluster_id == cluster_id && registered(&a.host_id))
            .cloned()
            .collect()))
    }
}

#[cfg(test)]
#[path = "fake_tests.rs"]
mod tests;
