//! What can go wrong: a bad spec (at start-up), a record that cannot be mapped (per record), and
//! the start-up diagnostics of a spec checked against schemas.

use std::fmt;

use autoglm_core::{Classify, ErrorClass};
use serde_json::Value;

use crate::time::truncate;

/// One problem in a [`MappingSpec`](crate::MappingSpec), found by
/// [`Mapping::compile`](crate::Mapping::compile).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SpecError {
    /// The key path of the offending setting, e.g. `mapping.rename_rules[1].pattern`.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Why a record could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MappingFailure {
    /// A `required` field was missing or null.
    #[error("required field is missing or null")]
    Missing,
    /// A value could not be converted to the target type.
    #[error("cannot convert to {to}: {detail}")]
    Conversion {
        /// The target type.
        to: &'static str,
        /// Why not.
        detail: String,
    },
    /// A value did not match the field's `pattern`.
    #[error("does not match pattern `{pattern}`")]
    Pattern {
        /// The pattern as written.
        pattern: String,
    },
    /// Two source fields were renamed to the same target name.
    #[error("source fields `{first}` and `{second}` both map to `{target}`")]
    Collision {
        /// The source field seen first.
        first: String,
        /// The source field seen second.
        second: String,
        /// The target name they share.
        target: String,
    },
}

/// A record that cannot be mapped. The record goes to the dead-letter topic
/// ([`ErrorClass::Poison`]); the message names the route, the rule, the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "route `{}`: rule `{}` failed on field `{}` (value {}): {}",
    .0.route, .0.rule, .0.field, .0.value, .0.failure
)]
pub struct MappingError(Box<Details>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Details {
    route: String,
    rule: String,
    field: String,
    value: String,
    failure: MappingFailure,
}

/// Longest value rendering carried in an error (characters).
const VALUE_CHARS: usize = 64;

impl MappingError {
    pub(crate) fn new(
        route: &str,
        rule: &str,
        field: &str,
        value: Option<&Value>,
        failure: MappingFailure,
    ) -> MappingError {
        let value = match value {
            None => "<missing>".to_owned(),
            Some(v) => truncate(&v.to_string(), VALUE_CHARS),
        };
        MappingError(Box::new(Details {
            route: route.to_owned(),
            rule: rule.to_owned(),
            field: field.to_owned(),
            value,
            failure,
        }))
    }

    /// The route whose mapping failed.
    pub fn route(&self) -> &str {
        &self.0.route
    }

    /// The spec rule that failed, e.g. `fields.signup_at.type` or `rename_rules[0]`; fit for a
    /// dead-letter header.
    pub fn rule(&self) -> &str {
        &self.0.rule
    }

    /// The source field path the value came from (`address.city`), or the target name for a
    /// default.
    pub fn field(&self) -> &str {
        &self.0.field
    }

    /// The offending value as JSON, cut to 64 characters (`<missing>` when absent).
    pub fn value(&self) -> &str {
        &self.0.value
    }

    /// Why it failed.
    pub fn failure(&self) -> &MappingFailure {
        &self.0.failure
    }
}

impl Classify for MappingError {
    /// A record that cannot be mapped never will be: dead-letter it and go on.
    fn class(&self) -> ErrorClass {
        ErrorClass::Poison
    }
}

/// How serious a start-up [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Probably a mistake, but records can flow (a rule that can never match).
    Warning,
    /// Records will fail or lose data (an output field the target schema lacks).
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// A finding of [`Mapping::check`](crate::Mapping::check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// How serious it is.
    pub severity: Severity,
    /// The key path it is about: a spec path (`mapping.rename_rules[0]`), `source.<field>` or
    /// `target.<field>`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.path, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mapping_errors_are_poison_and_cut_long_values() {
        let long = json!("x".repeat(500));
        let e = MappingError::new(
            "r",
            "fields.a.type",
            "a",
            Some(&long),
            MappingFailure::Missing,
        );
        assert_eq!(e.class(), ErrorClass::Poison);
        assert_eq!(e.value().chars().count(), VALUE_CHARS + 1);
        assert!(e.value().ends_with('…'));
        assert!(size_of::<Result<autoglm_core::Row, MappingError>>() <= 32);
    }
}
