//! hostd's view of the broker: everything hostd asks of it goes through [`BrokerClient`].
//!
//! Two implementations: [`http::HttpBroker`], the real broker's API signed with the host's
//! key (`--broker http://…`); and [`fake::FakeBroker`], in memory or kept in a JSON file
//! (`--broker file:PATH`), which enforces the lease rules (at most one holder per token, the
//! two-phase handover) and settles claims with the `token` crate's rules, for tests.

pub mod fake;
pub mod file_lock;
pub mod http;
mod refusal;
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

    /// Prepares the lease's move to the migration destination, with the source's final
    /// claim; sent by the source (`handover.from`), which keeps the lease until the
    /// destination confirms. Preparing again replaces a preparation. Returns the lease as it
    /// stands (still held by `from`).
    fn hand_over_lease(&self, handover: Handover) -> BoxFuture<'_, Result<Lease, BrokerError>>;

    /// The destination `host_id` confirms a prepared handover: in one broker transaction the
    /// source is paid up to its final claim and the lease becomes the destination's. Fails
    /// with `NoHandover` when none to `host_id` is prepared.
    fn confirm_handover(
        &self,
        token_id: TokenId,
        host_id: HostId,
    ) -> BoxFuture<'_, Result<Lease, BrokerError>>;

    /// The source or the destination `host_id` cancels a prepared handover: the lease stays
    /// with the source. Fails with `NoHandover` when none is prepared.
    fn cancel_handover(
        &self,
        token_id: TokenId,
        host_id: HostId,
    ) -> BoxFuture<'_, Result<Lease, BrokerError>>;

    /// Gives the lease up when the VM ends here. Releasing a lease one does not hold fails
    /// with `NotLeaseHolder`.
    fn release_lease(
        &self,
        token_id: TokenId,
        host_id: HostId,
    ) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Redeems a signed claim: the broker credits the links above what it already redeemed.
    fn redeem(&self, claim: SignedClaim) -> BoxFuture<'_, Result<Redeemed, BrokerError>>;

    /// Redeems many claims of this host at once (a settlement tick of all its VMs): one
    /// result per claim, in order, each what [`BrokerClient::redeem`] would have answered
    /// for it. The outer error is a failure of the whole: nothing was redeemed, or the
    /// outcome is unknown (then every claim may be sent again; only links the broker has
    /// not redeemed yet can earn).
    fn redeem_many(
        &self,
        claims: Vec<SignedClaim>,
    ) -> BoxFuture<'_, Result<Vec<Result<Redeemed, BrokerError>>, BrokerError>>;

    /// Publishes this host's free capacity and price in the host directory.
    fn advertise(&self, advert: CapacityAdvert) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// The host directory of `cluster_id`: every registered host's latest advertisement
    /// (drain picks destinations from it).
    fn directory(
        &self,
        cluster_id: ClusterId,
    ) -> BoxFuture<'_, Result<Vec<CapacityAdvert>, BrokerError>>;
}
