//! The example application: a timeline service, written once as tasks.
//!
//! Users have a profile (whom they follow) and a feed (their recent posts). A timeline request
//! reads the profile, then the feed of everyone the user follows, and merges the newest posts.
//! The same tasks run on `guest-agentd` and in the bench unikernel; the data set is seeded
//! deterministically, so every agent knows every object's id without asking.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentError};
use crate::context::Ctx;
use crate::ids::{AgentId, ObjectId};
use crate::reference::Ref;
use crate::registry::{Registry, RegistryError};
use crate::sim::Rng;
use crate::task::{Step, Task};
use crate::Schema;

/// Posts a feed keeps (older ones fall off).
pub const FEED_KEEP: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Schema)]
pub struct Post {
    pub author: u32,
    /// Unique per post; newer posts have larger ids.
    pub id: u64,
    pub text: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, Schema)]
pub struct Profile {
    pub user: u32,
    pub follows: Vec<Ref<Feed>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, Schema)]
pub struct Feed {
    pub user: u32,
    /// Newest last.
    pub posts: Vec<Post>,
}

/// The data set: users, a power-law follow graph with communities, and posts.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Params {
    pub users: u32,
    pub agents: u16,
    /// Follows per user on average; the counts are skewed (power law).
    pub follows: u32,
    /// Users cluster in communities and mostly follow inside them, as social graphs do.
    pub communities: u32,
    pub posts_per_user: u32,
    pub post_bytes: u32,
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            users: 300,
            agents: 3,
            follows: 12,
            communities: 6,
            posts_per_user: 8,
            post_bytes: 120,
            seed: 42,
        }
    }
}

impl Params {
    /// Where a user's object starts: scattered at random, as a naive deployment would.
    fn initial_agent(&self, user: u32, salt: u64) -> AgentId {
        let mut rng = Rng::new(self.seed ^ (u64::from(user) << 8) ^ salt);
        AgentId(rng.below(u64::from(self.agents.max(1))) as u16)
    }

    pub fn profile(&self, user: u32) -> Ref<Profile> {
        let home = self.initial_agent(user, 1);
        Ref::new(
            ObjectId {
                home,
                seq: 2 * u64::from(user) + 1,
            },
            home,
        )
    }

    pub fn feed(&self, user: u32) -> Ref<Feed> {
        let home = self.initial_agent(user, 2);
        Ref::new(
            ObjectId {
                home,
                seq: 2 * u64::from(user) + 2,
            },
            home,
        )
    }

    fn community(&self, user: u32) -> u32 {
        user % self.communities.max(1)
    }

    /// Whom `user` follows: a skewed count, mostly inside the user's community, popular users
    /// (low ranks) far more often than others.
    pub fn follows_of(&self, user: u32) -> Vec<u32> {
        let mut rng = Rng::new(self.seed ^ 0xf011_0000 ^ u64::from(user));
        let users = self.users.max(2);
        // Pareto-like: many users follow a few, a few follow many.
        let u = (rng.below(1000) + 1) as f64 / 1000.0;
        let count = ((self.follows as f64 * 0.5) / libm_sqrt(u)).min(users as f64 / 2.0) as u32;
        let count = count.max(1);
        let communities = self.communities.max(1);
        let per_community = users.div_ceil(communities);
        let mut out = Vec::new();
        let mut tries = 0;
        while (out.len() as u32) < count && tries < count * 20 {
            tries += 1;
            let community = if rng.chance(850) {
                self.community(user)
            } else {
                rng.below(communities.into()) as u32
            };
            // Zipf-ish rank inside the community: cubing a uniform skews toward rank 0.
            let x = rng.below(1 << 16) as f64 / 65536.0;
            let rank = (x * x * x * per_community as f64) as u32;
            let followee = rank * communities + community;
            if followee < users && followee != user && !out.contains(&followee) {
                out.push(followee);
            }
        }
        out
    }

    /// A deterministic post text of about `post_bytes` bytes.
    pub fn text(&self, author: u32, id: u64) -> String {
        let mut text = alloc::format!("post {id} by user {author}: ");
        let filler = "the quick brown fox jumps over the lazy dog ";
        while text.len() < self.post_bytes as usize {
            text.push_str(filler);
        }
        text.truncate(self.post_bytes as usize);
        text
    }

    /// Hops per timeline read entering at a random agent, if profiles and feeds lived where
    /// `profile_at` and `feed_at` say: the entry hop to the profile (2/3 of the time with 3
    /// agents), then one hop per other agent holding a followed feed. With a placement oracle
    /// as argument this bounds what placement can achieve on this data set.
    pub fn expected_hops(
        &self,
        profile_at: impl Fn(u32) -> AgentId,
        feed_at: impl Fn(u32) -> AgentId,
    ) -> f64 {
        let agents = f64::from(self.agents.max(1));
        let mut total = 0.0;
        for user in 0..self.users {
            let home = profile_at(user);
            let mut others: Vec<AgentId> = self
                .follows_of(user)
                .into_iter()
                .map(&feed_at)
                .filter(|&at| at != home)
                .collect();
            others.sort_unstable();
            others.dedup();
            total += (agents - 1.0) / agents + others.len() as f64;
        }
        total / f64::from(self.users.max(1))
    }

    /// [`Params::expected_hops`] with every community's objects on one agent (communities
    /// dealt round-robin): the placement this data set was generated to reward.
    pub fn community_hops(&self) -> f64 {
        let at = |user: u32| AgentId((self.community(user) % u32::from(self.agents.max(1))) as u16);
        self.expected_hops(at, at)
    }

    /// Puts this agent's share of the data set into it (a fresh agent's first start).
    pub fn seed_agent(&self, agent: &mut Agent) -> Result<usize, AgentError> {
        let mut placed = 0;
        for user in 0..self.users {
            let profile = self.profile(user);
            if profile.id.home == agent.id() {
                let follows = self
                    .follows_of(user)
                    .into_iter()
                    .map(|f| self.feed(f))
                    .collect();
                agent.insert_object(profile.id.seq, &Profile { user, follows })?;
                placed += 1;
            }
            let feed = self.feed(user);
            if feed.id.home == agent.id() {
                let posts = (0..self.posts_per_user)
                    .map(|i| {
                        let id = u64::from(i) << 32 | u64::from(user);
                        Post {
                            author: user,
                            id,
                            text: self.text(user, id),
                        }
                    })
                    .collect();
                agent.insert_object(feed.id.seq, &Feed { user, posts })?;
                placed += 1;
            }
        }
        Ok(placed)
    }
}

/// Square root without `std` (Newton's method; the inputs are small and positive).
fn libm_sqrt(x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let mut guess = x.max(1.0);
    for _ in 0..40 {
        guess = 0.5 * (guess + x / guess);
    }
    guess
}

/// A timeline request: the newest `limit` posts of everyone `user` follows.
#[derive(Serialize, Deserialize, Schema)]
pub enum Timeline {
    Start {
        user: Ref<Profile>,
        limit: u32,
    },
    Scan {
        pending: Vec<Ref<Feed>>,
        merged: Vec<Post>,
        limit: u32,
    },
}

impl Task for Timeline {
    const NAME: &'static str = "timeline.read";
    const VERSION: u32 = 1;
    type Output = Vec<Post>;

    fn step(&mut self, cx: &mut Ctx<'_>) -> Step<Vec<Post>> {
        match self {
            Timeline::Start { user, limit } => {
                let profile = crate::need!(cx.read(user));
                *self = Timeline::Scan {
                    pending: profile.follows,
                    merged: Vec::new(),
                    limit: *limit,
                };
                Step::Continue
            }
            Timeline::Scan {
                pending,
                merged,
                limit,
            } => {
                // Feeds already here first: a continuation visits each agent once.
                let Some(next) = pending.iter().position(|f| cx.is_here(f)).or(
                    // Otherwise the next feed on the agent most of the rest live on.
                    if pending.is_empty() { None } else { Some(0) },
                ) else {
                    return Step::Done(core::mem::take(merged));
                };
                let feed = crate::need!(cx.read(&pending[next]));
                pending.swap_remove(next);
                merged.extend(feed.posts.into_iter().rev().take(*limit as usize));
                merged.sort_by_key(|p| core::cmp::Reverse(p.id));
                merged.truncate(*limit as usize);
                Step::Continue
            }
        }
    }
}

/// A new post, appended to its author's feed (a write: the task goes to the feed).
#[derive(Serialize, Deserialize, Schema)]
pub struct Publish {
    pub feed: Ref<Feed>,
    pub post: Post,
}

impl Task for Publish {
    const NAME: &'static str = "timeline.publish";
    const VERSION: u32 = 1;
    type Output = u64;

    fn step(&mut self, cx: &mut Ctx<'_>) -> Step<u64> {
        let mut feed = crate::need!(cx.get(&self.feed));
        feed.posts.push(self.post.clone());
        let excess = feed.posts.len().saturating_sub(FEED_KEEP);
        feed.posts.drain(..excess);
        crate::need!(cx.put(&self.feed, &feed));
        Step::Done(self.post.id)
    }
}

/// Reads a whole feed's post ids (for checks: nothing lost, nothing twice).
#[derive(Serialize, Deserialize, Schema)]
pub struct ReadFeed {
    pub feed: Ref<Feed>,
}

impl Task for ReadFeed {
    const NAME: &'static str = "timeline.read-feed";
    const VERSION: u32 = 1;
    type Output = Vec<u64>;

    fn step(&mut self, cx: &mut Ctx<'_>) -> Step<Vec<u64>> {
        let feed = crate::need!(cx.get(&self.feed));
        Step::Done(feed.posts.iter().map(|p| p.id).collect())
    }
}

/// The registry every timeline agent runs with.
pub fn registry() -> Result<Registry, RegistryError> {
    let mut registry = Registry::new();
    registry.register::<Timeline>()?;
    registry.register::<Publish>()?;
    registry.register::<ReadFeed>()?;
    Ok(registry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Config, Event};
    use crate::sim::{Faults, Swarm};
    use alloc::sync::Arc;

    #[test]
    fn the_follow_graph_is_skewed_and_mostly_inside_communities() {
        let params = Params::default();
        let mut indegree = alloc::vec![0u32; params.users as usize];
        let (mut inside, mut total) = (0, 0);
        for user in 0..params.users {
            for f in params.follows_of(user) {
                indegree[f as usize] += 1;
                total += 1;
                inside += u32::from(params.community(f) == params.community(user));
            }
        }
        indegree.sort_unstable();
        let top: u32 = indegree.iter().rev().take(params.users as usize / 10).sum();
        assert!(
            top * 4 > total,
            "the top 10% draw over a quarter of follows: {top}/{total}"
        );
        assert!(
            inside * 10 > total * 7,
            "most follows stay inside: {inside}/{total}"
        );
    }

    #[test]
    fn placing_communities_together_bounds_the_hops_below_random() {
        let params = Params::default();
        let random = params.expected_hops(|u| params.profile(u).hint, |u| params.feed(u).hint);
        let community = params.community_hops();
        assert!(
            random > 2.0 && community < random * 0.8,
            "{random} {community}"
        );
    }

    #[test]
    fn timelines_merge_the_newest_posts_of_the_followed() {
        let params = Params {
            users: 60,
            ..Params::default()
        };
        let registry = Arc::new(registry().unwrap());
        let faults = Faults {
            max_delay: 2,
            drop_per_mille: 50,
            ..Faults::default()
        };
        let mut swarm = Swarm::new(params.agents, registry, Config::default(), faults, 3);
        for agent in swarm.agents.iter_mut() {
            params.seed_agent(agent).unwrap();
        }
        let user = 5;
        let fut = swarm.agents[0]
            .submit(&Timeline::Start {
                user: params.profile(user),
                limit: 10,
            })
            .unwrap();
        swarm.persist_all();
        assert!(swarm.run_until_quiet(8, 10_000));
        let bytes = swarm.agents[0].result(fut).cloned().unwrap().unwrap();
        let posts: Vec<Post> = postcard::from_bytes(&bytes).unwrap();
        let mut want: Vec<Post> = params
            .follows_of(user)
            .into_iter()
            .flat_map(|f| {
                (0..params.posts_per_user).map(move |i| (f, u64::from(i) << 32 | u64::from(f)))
            })
            .map(|(f, id)| Post {
                author: f,
                id,
                text: params.text(f, id),
            })
            .collect();
        want.sort_by_key(|p| core::cmp::Reverse(p.id));
        want.truncate(10);
        assert_eq!(posts, want);
        assert_eq!(
            swarm
                .events
                .iter()
                .filter(|(_, e)| matches!(e, Event::Completed(_)))
                .count(),
            1
        );
    }
}
