//! Redemption through the real broker: one claim (in steps when it lies too far above what
//! the broker verified), or many in batches.

use laundromat_api::claims::stepped_claims;
use laundromat_api::paths;
use laundromat_api::types::{
    self as types, BatchRedeemed, ClaimOutcome, ErrorBody, Redeem, RedeemBatch, TokenState,
    MAX_BATCH_CLAIMS,
};
use token::{SignedClaim, TokenId};

use super::super::refusal::{to_error, Subject};
use super::super::{BrokerError, Redeemed};
use super::{encode, new_key, too_far, HttpBroker};

impl HttpBroker {
    /// Redeems one claim as it is; `None` when the broker says it lies too far above what it
    /// verified.
    async fn redeem_once(
        &self,
        claim: &SignedClaim,
    ) -> Result<Option<types::Redeemed>, BrokerError> {
        let bytes = encode(&Redeem {
            claim: claim.clone(),
        })?;
        let key = new_key();
        let answer = self
            .send(
                reqwest::Method::POST,
                paths::REDEMPTIONS,
                bytes,
                true,
                Some(&key),
            )
            .await?;
        if too_far(&answer) {
            return Ok(None);
        }
        self.decode(answer, Subject::Claim(claim.claim.token_id))
            .map(Some)
    }

    /// The index the broker last verified for this host's newest range of `token_id`.
    async fn verified_index(&self, token_id: TokenId) -> Result<u64, BrokerError> {
        let state: TokenState = self.get(&paths::token(&token_id)).await?;
        state
            .ranges
            .iter()
            .rev()
            .find(|range| range.host_id == self.host_id)
            .map(|range| range.redeemed)
            .ok_or(BrokerError::NotLeaseHolder { token_id })
    }

    /// Redeems `claim`, in steps the broker accepts when it lies too far above what the
    /// broker has verified. Returns the total credit.
    pub(super) async fn redeem_claim(&self, claim: SignedClaim) -> Result<Redeemed, BrokerError> {
        if let Some(redeemed) = self.redeem_once(&claim).await? {
            return Ok(Redeemed {
                credit: redeemed.credit,
                highest_redeemed: redeemed.highest_redeemed,
            });
        }
        let c = claim.claim;
        if c.host_id != self.host_id {
            return Err(BrokerError::ClaimRefused(format!(
                "the claim of host {} is too far above what the broker verified, and only that host can sign the steps",
                c.host_id
            )));
        }
        let verified = self.verified_index(c.token_id).await?;
        let max = self.max_claim_distance().await?;
        let host_id = self.host_id;
        let steps = tokio::task::spawn_blocking(move || {
            stepped_claims(c.token_id, host_id, verified, c.index, c.link, max)
        })
        .await
        .map_err(|e| BrokerError::Unavailable(format!("cannot compute the claim steps: {e}")))?;
        tracing::info!(token = %c.token_id, verified, index = c.index, steps = steps.len(), "redeeming a far claim in steps");
        let mut total = Redeemed {
            credit: 0,
            highest_redeemed: verified,
        };
        for step in steps {
            let redeemed = self
                .redeem_once(&step.sign(&self.key))
                .await?
                .ok_or_else(|| {
                    BrokerError::ClaimRefused(format!(
                        "the broker refused step {} of {} as too far: its claim distance changed",
                        step.index, c.index
                    ))
                })?;
            total.credit += redeemed.credit;
            total.highest_redeemed = redeemed.highest_redeemed;
        }
        Ok(total)
    }

    /// Redeems claims in batches of at most [`MAX_BATCH_CLAIMS`], each one signed request
    /// under its own idempotency key. A claim the broker refused as too far, for itself or
    /// for what was left of its request's hashing budget, is redeemed on its own, in steps.
    /// A batch that failed as a whole is that failure for each of its claims.
    pub(super) async fn redeem_batches(
        &self,
        claims: Vec<SignedClaim>,
    ) -> Vec<Result<Redeemed, BrokerError>> {
        let mut results = Vec::with_capacity(claims.len());
        for chunk in claims.chunks(MAX_BATCH_CLAIMS) {
            match self.redeem_batch(chunk).await {
                Ok(answer) => {
                    for (claim, result) in chunk.iter().zip(answer.results) {
                        results.push(self.claim_result(claim, result.outcome).await);
                    }
                }
                Err(error) => results.extend(chunk.iter().map(|_| Err(error.clone()))),
            }
        }
        results
    }

    async fn redeem_batch(&self, claims: &[SignedClaim]) -> Result<BatchRedeemed, BrokerError> {
        let key = new_key();
        let body = RedeemBatch {
            claims: claims.to_vec(),
        };
        let answer: BatchRedeemed = self
            .post(paths::BATCH_REDEMPTIONS, &body, Some(&key), Subject::None)
            .await?;
        if answer.results.len() != claims.len() {
            return Err(BrokerError::Unavailable(format!(
                "the broker answered {} results for {} claims",
                answer.results.len(),
                claims.len()
            )));
        }
        Ok(answer)
    }

    async fn claim_result(
        &self,
        claim: &SignedClaim,
        outcome: ClaimOutcome,
    ) -> Result<Redeemed, BrokerError> {
        match outcome {
            ClaimOutcome::Credited {
                credit,
                highest_redeemed,
            } => Ok(Redeemed {
                credit,
                highest_redeemed,
            }),
            ClaimOutcome::Refused { code, .. }
                if code == "claim_too_far" || code == "batch_work_exceeded" =>
            {
                self.redeem_claim(claim.clone()).await
            }
            ClaimOutcome::Refused {
                status,
                code,
                error,
            } => Err(to_error(
                status,
                ErrorBody { error, code },
                Subject::Claim(claim.claim.token_id),
                self.host_id,
            )),
        }
    }
}
