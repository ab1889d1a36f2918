//! The three ways a failure can be handled.

use std::fmt;

/// What the runtime does with a failure. Every error in the workspace maps to exactly one class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The operation may succeed if retried (broker unavailable, registry timeout, a full producer
    /// queue). Retry with exponential backoff; when the attempts run out, wait or stop cleanly,
    /// never skip data.
    Transient,
    /// This record can never be processed (undecodable bytes, a failed conversion). Send it to the
    /// dead-letter topic with its original bytes and go on.
    Poison,
    /// The process cannot go on (fenced producer, authentication, bad configuration). Stop in
    /// order with a non-zero exit and one clear log line.
    Fatal,
}

impl ErrorClass {
    /// The lowercase name used in logs, metric labels and dead-letter headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Poison => "poison",
            ErrorClass::Fatal => "fatal",
        }
    }

    /// Whether retrying the same operation can help.
    pub const fn is_retriable(self) -> bool {
        matches!(self, ErrorClass::Transient)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by every error type whose handling the runtime must decide.
pub trait Classify {
    /// The class of this error.
    fn class(&self) -> ErrorClass;
}

/// An error and its sources, `outer: inner: …`, for one log line or message (apache-avro, for
/// one, nests field mismatches as sources).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_errors_are_retried() {
        assert!(ErrorClass::Transient.is_retriable());
        assert!(!ErrorClass::Poison.is_retriable());
        assert!(!ErrorClass::Fatal.is_retriable());
    }

    #[test]
    fn names_are_stable_label_values() {
        let names: Vec<_> = [ErrorClass::Transient, ErrorClass::Poison, ErrorClass::Fatal]
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(names, ["transient", "poison", "fatal"]);
    }

    #[test]
    fn a_chain_names_every_source() {
        #[derive(Debug)]
        struct Outer(fmt::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("outer")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(chain(&Outer(fmt::Error)), format!("outer: {}", fmt::Error));
        assert_eq!(chain(&fmt::Error), fmt::Error.to_string());
    }
}
