//! `Ref<T>`: a typed global reference to an object that may live on any agent.

use core::marker::PhantomData;

use postcard_schema::schema::NamedType;
use postcard_schema::Schema;
use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, ObjectId};

/// A reference to an object of type `T` somewhere in the swarm.
///
/// `hint` is where the object was when this reference was made. It is only a hint: the agents
/// keep forwarding pointers when objects move, and runtimes follow them, so a stale hint costs
/// a hop, never correctness.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Ref<T> {
    pub id: ObjectId,
    pub hint: AgentId,
    #[serde(skip)]
    _type: PhantomData<fn() -> T>,
}

impl<T> Ref<T> {
    pub const fn new(id: ObjectId, hint: AgentId) -> Self {
        Ref {
            id,
            hint,
            _type: PhantomData,
        }
    }

    /// The untyped form, for `Step::deref` and friends.
    pub const fn any(&self) -> AnyRef {
        AnyRef {
            id: self.id,
            hint: self.hint,
        }
    }
}

// Manual impls: deriving would demand `T: Clone` etc. for a reference that holds no `T`.
impl<T> Clone for Ref<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Ref<T> {}
impl<T> PartialEq for Ref<T> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl<T> Eq for Ref<T> {}
impl<T> core::fmt::Debug for Ref<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Ref({}, hint {})", self.id, self.hint)
    }
}

impl<T: Schema> Schema for Ref<T> {
    // The schema names the referenced type too: a task that keeps `Ref<Feed>` is a different
    // task from one that keeps `Ref<Profile>`, though both encode as an id and a hint.
    const SCHEMA: &'static NamedType = &NamedType {
        name: "Ref",
        ty: &postcard_schema::schema::DataModelType::Struct(&[
            &postcard_schema::schema::NamedValue {
                name: "id",
                ty: ObjectId::SCHEMA,
            },
            &postcard_schema::schema::NamedValue {
                name: "hint",
                ty: AgentId::SCHEMA,
            },
            &postcard_schema::schema::NamedValue {
                name: "target",
                ty: T::SCHEMA,
            },
        ]),
    };
}

/// An untyped reference: what the runtime needs to find an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Schema)]
pub struct AnyRef {
    pub id: ObjectId,
    pub hint: AgentId,
}

impl<T> From<Ref<T>> for AnyRef {
    fn from(r: Ref<T>) -> Self {
        r.any()
    }
}
