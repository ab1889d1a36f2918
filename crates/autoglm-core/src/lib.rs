//! Domain types shared by every stage of the pipeline, with no I/O: change events, versions and
//! error classes.
//!
//! ```text
//!   decode ─► route ─► version guard ─► mapping ─► encode ─► transactional produce
//!      │                                   │                        │
//!      └──── every failure is one ErrorClass: retry, dead-letter or stop ────┘
//! ```
//!
//! Each library crate has its own error enum; each of those maps onto an [`ErrorClass`] through
//! [`Classify`], and the class alone decides what the runtime does with the failure.

mod error_class;
mod event;
mod version;

pub use error_class::{Classify, ErrorClass, chain};
pub use event::{ChangeEvent, Op, Row, SourcePosition};
pub use version::Version;
