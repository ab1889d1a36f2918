//! Field mapping and type conversion: declared in config, compiled once, applied as a pure
//! synchronous function per record.
//!
//! ```text
//!  MappingSpec (YAML `mapping:`) ──compile──► Mapping ──check(source, target)──► Vec<Diagnostic>
//!        │ every error at once,                 │                  (start-up, before records flow)
//!        ▼ with its key path                    ▼
//!   Vec<SpecError> (fatal)        Row ──apply──► Row ─► encode
//!                                               │
//!                                               └─► MappingError (poison ─► dead-letter topic)
//! ```
//!
//! One row goes through: drop → rename (exact, then the first whole-name regex rule) → keep →
//! the `fields` entries in order (`const` / `from` / pass-through value, `default`, `required`,
//! type conversion, `pattern`). See [`MappingSpec`] for the YAML and [the table below](#types)
//! for the conversions.
//!
//! Failure behaviour:
//!
//! * A bad spec (bad regex, unknown time zone or type, bad strftime format, `const` with
//!   `from`/`default`, `required` with `default`, …) fails [`Mapping::compile`] with every
//!   [`SpecError`] at once; the caller treats that as a fatal configuration error.
//! * A record that cannot be mapped (a missing required field, `"123a"` as a `long`, a value
//!   failing its `pattern`, two source fields renamed onto one name) gives a [`MappingError`]
//!   naming the route, the rule, the field path and the value (cut to 64 characters). It is
//!   [`Poison`](autoglm_core::ErrorClass::Poison): the record goes to the dead-letter topic and
//!   the pipeline goes on. Nothing on this path panics.
//! * [`Mapping::check`] reports rules that can never match and output fields the target schema
//!   lacks as [`Diagnostic`]s before any record flows.
//!
//! # Types
//!
//! | `type` | accepts | writes |
//! | --- | --- | --- |
//! | `string` | strings; numbers (their JSON text); booleans; objects and arrays (compact JSON) | a string |
//! | `int` (32-bit, range checked), `long` | integers; integral floats (`3.0`); strings holding an integer (surrounding spaces ignored); booleans as 1/0 | a number |
//! | `double` | numbers; numeric strings; booleans as 1/0 — never NaN or infinity | a number |
//! | `{ decimal: { scale, precision?, rounding?, input?, input_scale? } }` | numbers; decimal strings (`1234.50`, `-1.5e3`, at most 28 significant digits); with `input: base64`, strings are Kafka Connect `Decimal` bytes instead (base64 of the unscaled big-endian two's complement integer, at `input_scale`, default `scale`) | a string with exactly `scale` fractional digits. Extra digits are **rejected** by default (`rounding: reject`, unless they are all zero); `half_even` and `half_up` round instead |
//! | `bool` | booleans; numbers 1/0; `true/false`, `t/f`, `yes/no`, `y/n`, `on/off`, `1/0` in any case | a boolean |
//! | `timestamp` | strings by `input.format(s)` (default ISO 8601 / RFC 3339) read in `input.timezone` unless they carry an offset; numbers (or digit strings) in `input.unit` (default `epoch_millis`) | `output`: `iso8601` (default, UTC `Z`), `epoch_seconds/millis/micros/nanos`, or `{ format, timezone }` |
//! | `date` | as `timestamp`, default unit `epoch_days` (Debezium `Date`) | `iso8601` (`YYYY-MM-DD`, default), `epoch_days`, or `{ format }` |
//!
//! `null` stays `null` for every type (then `default` or `required` decide).

mod convert;
mod error;
mod mapping;
mod path;
mod spec;
mod time;

pub use error::{Diagnostic, MappingError, MappingFailure, Severity, SpecError};
pub use mapping::Mapping;
pub use spec::{
    DecimalInput, DecimalSpec, FieldSpec, MappingSpec, RenameRule, Rounding, TimeInputSpec,
    TimeOutputSpec, TimeUnit, TypeSpec,
};

#[cfg(test)]
mod tests;
