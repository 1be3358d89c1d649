//! What an adapter implements and handles: the storage, messaging and inbox
//! contracts, the messages that travel, and the parts of a saga's state a
//! store persists.
//!
//! An application rarely needs more than the traits, which the crate root
//! re-exports: it builds an [`Engine`](crate::Engine) over a store and a
//! transport, and gives a [`Participant`](crate::Participant) an inbox. A
//! crate that provides a store, a transport or an inbox implements them, and
//! proves it with the conformance suites in
//! [`testing`](crate::testing) (feature `testing`).

#[doc(inline)]
pub use crate::inbox::{Claim, Inbox, InboxClaim, compensated_refusal};
#[doc(inline)]
pub use crate::message::{CommandMessage, ReplyMessage, ReplyOutcome};
#[doc(inline)]
pub use crate::state::{Cursor, Waiting};
#[doc(inline)]
pub use crate::store::{Created, DefinitionKey, SagaCount, SagaQuery, SagaStore};
#[doc(inline)]
pub use crate::transport::{Acker, Delivery, Subscription, Transport, subscribe_with_retry};
