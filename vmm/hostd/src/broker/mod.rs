//! hostd's view of the broker: everything hostd asks of it goes through [`BrokerClient`].
//!
//! Two implementations: [`fake::FakeBroker`], in memory or kept in a JSON file, which enforces
//! the lease rules (at most one holder per token) and settles claims with the `token` crate's
//! rules, for tests and for running hostd before a broker is deployed; and, at merge, the HTTP
//! client of the real broker, built from [`types`].

pub mod fake;
pub mod types;

use std::future::Future;
use std::pin::Pin;

use token::{ClusterId, HostId, SignedClaim, TokenId};

pub use types::{BrokerError, BrokerKey, CapacityAdvert, Handover, HostRecord, Lease, Redeemed};

/// A boxed future, so that the trait can be used as `dyn BrokerClient`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What hostd needs from the broker.
pub trait BrokerClient: Send + Sync + 'static {
    /// The broker's token-signing keys (several while it rotates keys).
    fn broker_keys(&self) -> BoxFuture<'_, Result<Vec<BrokerKey>, BrokerError>>;

    /// A host's registry entry, or `None` if it is not registered.
    fn host(&self, host_id: HostId) -> BoxFuture<'_, Result<Option<HostRecord>, BrokerError>>;

    /// Takes the lease of `token_id` for `host_id`. Fails with `LeaseHeld` if another host
    /// holds it; succeeds again for the holder (admission retried after a crash).
    fn acquire_lease(
        &self,
        token_id: TokenId,
        host_id: HostId,
    ) -> BoxFuture<'_, Result<Lease, BrokerError>>;

    /// Prepares moving a lease to the migration destination, with the source's final claim
    /// (checked now, paid at confirmation). The lease stays with the source, frozen, until
    /// the destination confirms or either side cancels. Called by the source before `Commit`.
    fn hand_over_lease(&self, handover: Handover) -> BoxFuture<'_, Result<Lease, BrokerError>>;

    /// The destination confirms a prepared handover once the VM runs there: in one broker
    /// transaction the source is paid up to its final claim and the lease moves. Confirming
    /// again once `host_id` holds the lease succeeds, so a retry after a lost answer is
    /// harmless.
    fn confirm_handover(
        &self,
        token_id: TokenId,
        host_id: HostId,
    ) -> BoxFuture<'_, Result<Lease, BrokerError>>;

    /// Calls a prepared handover off (the source or the destination): the lease stays with
    /// the source. Cancelling when nothing is prepared succeeds.
    fn cancel_handover(
        &self,
        token_id: TokenId,
        host_id: HostId,
    ) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Gives the lease up when the VM ends here. Releasing a lease one does not hold fails
    /// with `NotLeaseHolder`.
    fn release_lease(
        &self,
        token_id: TokenId,
        host_id: HostId,
    ) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Redeems a signed claim: the broker credits the links above what it already redeemed.
    fn redeem(&self, claim: SignedClaim) -> BoxFuture<'_, Result<Redeemed, BrokerError>>;

    /// Publishes this host's free capacity and price in the host directory.
    fn advertise(&self, advert: CapacityAdvert) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// The host directory of `cluster_id`: every registered host's latest advertisement
    /// (drain picks destinations from it).
    fn directory(
        &self,
        cluster_id: ClusterId,
    ) -> BoxFuture<'_, Result<Vec<CapacityAdvert>, BrokerError>>;
}
