//! The compiled mapping: [`Mapping::compile`], [`Mapping::apply`], [`Mapping::check`].

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use arc_swap::ArcSwap;
use regex::{Regex, RegexBuilder};
use rustc_hash::FxHashMap;
use serde_json::Value;

use autoglm_core::Row;

use crate::convert::Conversion;
use crate::error::{Diagnostic, MappingError, MappingFailure, Severity, SpecError};
use crate::path::SourcePath;
use crate::spec::{DecimalInput, FieldSpec, MappingSpec, TimeUnit, TypeSpec};
use crate::time::{TimeInput, TimeOutput, truncate};

/// A [`MappingSpec`] compiled for one route: regexes built, formats parsed, time zones resolved,
/// defaults and constants converted. Applying it is pure and never panics.
///
/// Source names are resolved (drop → exact rename → first matching rule → unchanged, then
/// `keep`) once per distinct name: the names the spec mentions at compile time, the others on
/// the first row that has them (or by [`Mapping::prime`]). The resolved names are shared by
/// every thread that applies the mapping: a row reads them without a lock, and a row with new
/// names adds them copy-on-write. A clone starts with the names known so far. Past 4,096 names
/// (input that invents field names), a new name is resolved on each row instead.
///
/// Per record, [`apply_owned`](Mapping::apply_owned) does one hash lookup per source field,
/// converts and checks the `fields` entries on borrowed values, and only once every check has
/// passed takes the row apart: a value that passes through unconverted moves into the output
/// (under its own name, when it keeps it) instead of being copied. The output map is built in
/// one sorted bulk insert instead of one tree insert per field.
#[derive(Debug, Clone)]
pub struct Mapping {
    route: String,
    spec: MappingSpec,
    exact: HashMap<String, String>,
    rules: Vec<Rule>,
    drop: HashSet<String>,
    /// Top-level source fields a `from:` moves.
    moved: HashSet<String>,
    keep: Option<HashSet<String>>,
    /// `fields` name → index.
    field_index: HashMap<String, usize>,
    fields: Vec<Field>,
    /// Resolved source names.
    names: Decisions,
}

/// How many resolved source names a mapping keeps.
pub(crate) const REMEMBERED_NAMES: usize = 4096;

/// Resolved source names, read by every thread without a lock (one `ArcSwap` load per row) and
/// replaced whole when a row brings new ones. Fx hashing: the keys are field names, and the
/// table is bounded, so hostile input cannot grow it without end.
#[derive(Debug, Default)]
struct Decisions(ArcSwap<FxHashMap<String, Decision>>);

impl Clone for Decisions {
    fn clone(&self) -> Decisions {
        Decisions(ArcSwap::new(self.0.load_full()))
    }
}

#[derive(Debug, Clone)]
struct Rule {
    regex: Regex,
    to: String,
    /// `to` holds `$` references to expand.
    expands: bool,
}

/// Which spec entry gave a source field its target name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Unchanged,
    Rename,
    Rule(usize),
}

/// What happens to a source field.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    /// Not output: dropped, moved by a `from`, outside `keep`, or overridden by a `fields` entry
    /// of the same name that reads elsewhere.
    Skip,
    /// Passed through under `target`.
    Emit { target: String, via: Via },
    /// Read by `fields[field]`, which has no `from` and is named like the renamed field.
    Slot { field: usize, via: Via },
}

impl Decision {
    fn placement(&self) -> Placement<'_> {
        match self {
            Decision::Skip => Placement::Skip,
            Decision::Emit { target, .. } => Placement::Emit(Cow::Borrowed(target)),
            Decision::Slot { field, .. } => Placement::Slot(*field),
        }
    }

    fn into_placement<'a>(self) -> Placement<'a> {
        match self {
            Decision::Skip => Placement::Skip,
            Decision::Emit { target, .. } => Placement::Emit(Cow::Owned(target)),
            Decision::Slot { field, .. } => Placement::Slot(field),
        }
    }
}

/// A [`Decision`] as one row uses it: where the field goes, without the rule that sent it.
enum Placement<'a> {
    Skip,
    Emit(Cow<'a, str>),
    Slot(usize),
}

/// A source field a `fields` entry reads: its position in the row, its name and its value.
#[derive(Clone, Copy)]
struct Slotted<'r> {
    at: usize,
    name: &'r str,
    value: &'r Value,
}

/// What one output field holds.
enum Out {
    /// A new value: converted, a constant or a default.
    Value(Value),
    /// The value of the source field at this position, unchanged.
    Moved(usize),
}

#[derive(Debug, Clone)]
enum Source {
    /// `const`: already converted and checked.
    Const(Value),
    /// `from`.
    Path(SourcePath),
    /// The pass-through value of the same name.
    Target,
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    source: Source,
    /// Already converted and checked.
    default: Option<Value>,
    required: bool,
    conversion: Option<Conversion>,
    pattern: Option<Regex>,
    rule_type: String,
    rule_required: String,
    rule_pattern: String,
}

const TYPES: &str = "string, int, long, double, bool, timestamp, date or { decimal: { scale: N } }";

/// Collects spec errors under `mapping.`.
struct Errors(Vec<SpecError>);

impl Errors {
    fn push(&mut self, path: impl AsRef<str>, reason: impl Into<String>) {
        self.0.push(SpecError {
            path: format!("mapping.{}", path.as_ref()),
            reason: reason.into(),
        });
    }
}

/// The `$` references in a rename target: `$1`, `$name`, `${name}` (`$$` is a literal dollar).
fn capture_refs(to: &str) -> Vec<&str> {
    let bytes = to.as_bytes();
    let mut refs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'$') => i += 2,
            Some(b'{') => match to[i + 2..].find('}') {
                Some(len) => {
                    refs.push(&to[i + 2..i + 2 + len]);
                    i += len + 3;
                }
                None => i += 1,
            },
            _ => {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len()
                    && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_')
                {
                    end += 1;
                }
                if end > start {
                    refs.push(&to[start..end]);
                }
                i = end.max(i + 1);
            }
        }
    }
    refs
}

fn compile_conversion(spec: &FieldSpec, at: &str, errors: &mut Errors) -> Option<Conversion> {
    let time_type = |date: bool, errors: &mut Errors| {
        let mut sub = Vec::new();
        let unit = if date {
            TimeUnit::EpochDays
        } else {
            TimeUnit::EpochMillis
        };
        let input = TimeInput::compile(spec.input.as_ref(), unit, &mut sub);
        for (path, reason) in sub.drain(..) {
            errors.push(format!("{at}.input.{path}"), reason);
        }
        let output = TimeOutput::compile(spec.output.as_ref(), date, &mut sub);
        for (path, reason) in sub {
            let path = if path.is_empty() {
                format!("{at}.output")
            } else {
                format!("{at}.output.{path}")
            };
            errors.push(path, reason);
        }
        (input, output)
    };
    let conversion = match spec.ty.as_ref()? {
        TypeSpec::Named(name) => match name.as_str() {
            "string" => Conversion::String,
            "int" => Conversion::Int,
            "long" => Conversion::Long,
            "double" => Conversion::Double,
            "bool" => Conversion::Bool,
            "timestamp" => {
                let (i, o) = time_type(false, errors);
                Conversion::Timestamp(i, o)
            }
            "date" => {
                let (i, o) = time_type(true, errors);
                Conversion::Date(i, o)
            }
            "decimal" => {
                errors.push(
                    format!("{at}.type"),
                    "a decimal needs a scale: `type: { decimal: { scale: 2 } }`",
                );
                return None;
            }
            other => {
                errors.push(
                    format!("{at}.type"),
                    format!("unknown type `{other}`; expected {TYPES}"),
                );
                return None;
            }
        },
        TypeSpec::Decimal { decimal } => {
            let mut ok = true;
            if decimal.scale > rust_decimal::Decimal::MAX_SCALE {
                errors.push(
                    format!("{at}.type.decimal.scale"),
                    format!("scale {} is above the supported 28", decimal.scale),
                );
                ok = false;
            }
            if let Some(p) = decimal.precision
                && (p == 0 || p < decimal.scale)
            {
                errors.push(
                    format!("{at}.type.decimal.precision"),
                    format!("precision {p} must be at least 1 and at least the scale"),
                );
                ok = false;
            }
            if let Some(input_scale) = decimal.input_scale {
                if decimal.input != DecimalInput::Base64 {
                    errors.push(
                        format!("{at}.type.decimal.input_scale"),
                        format!(
                            "`input_scale` only applies to `input: base64` (this decimal reads `input: {}`): text values carry their own scale",
                            decimal.input.as_str()
                        ),
                    );
                    ok = false;
                } else if input_scale > rust_decimal::Decimal::MAX_SCALE {
                    errors.push(
                        format!("{at}.type.decimal.input_scale"),
                        format!("input_scale {input_scale} is above the supported 28"),
                    );
                    ok = false;
                }
            }
            if !ok {
                return None;
            }
            Conversion::Decimal(*decimal)
        }
    };
    Some(conversion)
}

fn compile_field(name: &str, spec: &FieldSpec, errors: &mut Errors) -> Option<Field> {
    let at = format!("fields.{name}");
    let before = errors.0.len();
    if name.is_empty() {
        errors.push("fields", "a field name is empty");
    }
    if spec.constant.is_some() && (spec.from.is_some() || spec.default.is_some()) {
        errors.push(
            format!("{at}.const"),
            "`const` excludes `from` and `default`",
        );
    }
    if spec.required && spec.default.is_some() {
        errors.push(
            format!("{at}.required"),
            "`required` excludes `default`: a default makes the field never missing",
        );
    }
    let path = spec.from.as_deref().and_then(|from| {
        SourcePath::parse(from)
            .map_err(|e| errors.push(format!("{at}.from"), e))
            .ok()
    });
    let conversion = compile_conversion(spec, &at, errors);
    let is_time = matches!(
        conversion,
        Some(Conversion::Timestamp(..) | Conversion::Date(..))
    );
    let time_named =
        matches!(&spec.ty, Some(TypeSpec::Named(n)) if n == "timestamp" || n == "date");
    if !is_time && !time_named {
        if spec.input.is_some() {
            errors.push(
                format!("{at}.input"),
                "only `timestamp` and `date` fields take `input`",
            );
        }
        if spec.output.is_some() {
            errors.push(
                format!("{at}.output"),
                "only `timestamp` and `date` fields take `output`",
            );
        }
    }
    let pattern = spec.pattern.as_deref().and_then(|p| {
        Regex::new(p)
            .map_err(|e| errors.push(format!("{at}.pattern"), format!("bad regex: {e}")))
            .ok()
    });
    // Constants and defaults are converted and checked once, here.
    let mut prepare = |key: &str, v: &Value| -> Option<Value> {
        let v = match &conversion {
            Some(c) => match c.apply(v) {
                Ok(v) => v,
                Err(detail) => {
                    errors.push(
                        format!("{at}.{key}"),
                        format!("cannot convert to {}: {detail}", c.name()),
                    );
                    return None;
                }
            },
            None => v.clone(),
        };
        if let Some(p) = &pattern
            && !pattern_matches(p, &v)
        {
            errors.push(
                format!("{at}.{key}"),
                format!(
                    "{} does not match pattern `{}`",
                    truncate(&v.to_string(), 64),
                    p.as_str()
                ),
            );
        }
        Some(v)
    };
    let default = spec.default.as_ref().and_then(|v| prepare("default", v));
    let constant = spec.constant.as_ref().and_then(|v| prepare("const", v));
    if errors.0.len() > before {
        return None;
    }
    let source = match (constant, path) {
        (Some(c), _) => Source::Const(c),
        (None, Some(p)) => Source::Path(p),
        (None, None) => Source::Target,
    };
    Some(Field {
        name: name.to_owned(),
        source,
        default,
        required: spec.required,
        conversion,
        pattern,
        rule_type: format!("{at}.type"),
        rule_required: format!("{at}.required"),
        rule_pattern: format!("{at}.pattern"),
    })
}

fn pattern_matches(pattern: &Regex, value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => pattern.is_match(s),
        other => pattern.is_match(&other.to_string()),
    }
}

impl Mapping {
    /// Compiles `spec` for `route`, reporting every problem at once, each with its key path
    /// (`mapping.rename_rules[1].pattern`, `mapping.fields.signup_at.input.timezone`).
    pub fn compile(route: &str, spec: &MappingSpec) -> Result<Mapping, Vec<SpecError>> {
        let mut errors = Errors(Vec::new());

        for (from, to) in &spec.rename {
            if from.is_empty() {
                errors.push("rename", "a source name is empty");
            }
            if to.is_empty() {
                errors.push(format!("rename.{from}"), "the target name is empty");
            }
        }

        let mut rules = Vec::new();
        for (i, rule) in spec.rename_rules.iter().enumerate() {
            let at = format!("rename_rules[{i}]");
            // Checked alone first, so the message shows the pattern as written and a pattern
            // such as `a)|(b` cannot slip through the anchoring group.
            if let Err(e) = RegexBuilder::new(&rule.pattern)
                .case_insensitive(rule.case_insensitive)
                .build()
            {
                errors.push(format!("{at}.pattern"), format!("bad regex: {e}"));
                continue;
            }
            let anchored = format!(r"\A(?:{})\z", rule.pattern);
            let regex = match RegexBuilder::new(&anchored)
                .case_insensitive(rule.case_insensitive)
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    errors.push(format!("{at}.pattern"), format!("bad regex: {e}"));
                    continue;
                }
            };
            if rule.to.is_empty() {
                errors.push(format!("{at}.to"), "the target name is empty");
            }
            for r in capture_refs(&rule.to) {
                let known = match r.parse::<usize>() {
                    Ok(n) => n < regex.captures_len(),
                    Err(_) => regex.capture_names().flatten().any(|n| n == r),
                };
                if !known {
                    errors.push(
                        format!("{at}.to"),
                        format!(
                            "`${r}` names no capture group of the pattern (write `${{1}}x` to put text right after a group)"
                        ),
                    );
                }
            }
            rules.push(Rule {
                regex,
                expands: rule.to.contains('$'),
                to: rule.to.clone(),
            });
        }

        for (i, name) in spec.drop.iter().enumerate() {
            if name.is_empty() {
                errors.push(format!("drop[{i}]"), "the name is empty");
            } else if spec.rename.contains_key(name) {
                errors.push(
                    format!("drop[{i}]"),
                    format!("`{name}` is both dropped and renamed (`rename.{name}`)"),
                );
            }
        }
        for (i, name) in spec.keep.iter().flatten().enumerate() {
            if name.is_empty() {
                errors.push(format!("keep[{i}]"), "the name is empty");
            }
        }

        let fields: Vec<Field> = spec
            .fields
            .iter()
            .filter_map(|(name, f)| compile_field(name, f, &mut errors))
            .collect();

        if !errors.0.is_empty() {
            return Err(errors.0);
        }

        let field_index: HashMap<String, usize> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i))
            .collect();
        let moved = fields
            .iter()
            .filter_map(|f| match &f.source {
                Source::Path(p) if p.is_top_level() => Some(p.head().to_owned()),
                _ => None,
            })
            .collect();
        let keep = spec.keep.as_ref().map(|k| k.iter().cloned().collect());
        let mut mapping = Mapping {
            route: route.to_owned(),
            spec: spec.clone(),
            exact: spec
                .rename
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            rules,
            drop: spec.drop.iter().cloned().collect(),
            moved,
            keep,
            field_index,
            fields,
            names: Decisions::default(),
        };
        let mentioned: Vec<String> = spec
            .rename
            .keys()
            .chain(&spec.drop)
            .chain(spec.keep.iter().flatten())
            .chain(spec.fields.keys())
            .chain(mapping.moved.iter())
            .cloned()
            .collect();
        mapping.prime(&mentioned);
        Ok(mapping)
    }

    /// The route this mapping belongs to.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The spec it was compiled from.
    pub fn spec(&self) -> &MappingSpec {
        &self.spec
    }

    /// Resolves these source field names now rather than on the first row that has them.
    pub fn prime(&mut self, source_fields: &[String]) {
        self.remember(source_fields.iter().map(String::as_str));
    }

    /// How many source names are resolved and remembered.
    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        self.names.0.load().len()
    }

    /// Adds the decisions of `names` to the shared table, up to `REMEMBERED_NAMES`.
    fn remember<'n>(&self, names: impl IntoIterator<Item = &'n str> + Clone) {
        self.names.0.rcu(|known| {
            let mut table = FxHashMap::clone(known);
            for name in names.clone() {
                if table.len() >= REMEMBERED_NAMES {
                    break;
                }
                if !table.contains_key(name) {
                    table.insert(name.to_owned(), self.decide(name));
                }
            }
            table
        });
    }

    /// The target name of a source field after exact renames and rules, ignoring drop and keep.
    fn rename_of(&self, name: &str) -> (String, Via) {
        if let Some(to) = self.exact.get(name) {
            return (to.clone(), Via::Rename);
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.expands {
                if let Some(caps) = rule.regex.captures(name) {
                    let mut target = String::new();
                    caps.expand(&rule.to, &mut target);
                    return (target, Via::Rule(i));
                }
            } else if rule.regex.is_match(name) {
                return (rule.to.clone(), Via::Rule(i));
            }
        }
        (name.to_owned(), Via::Unchanged)
    }

    fn decide(&self, name: &str) -> Decision {
        if self.drop.contains(name) {
            return Decision::Skip;
        }
        let (target, via) = self.rename_of(name);
        if let Some(&field) = self.field_index.get(&target) {
            return match self.fields.get(field).map(|f| &f.source) {
                Some(Source::Target) => Decision::Slot { field, via },
                _ => Decision::Skip,
            };
        }
        if self.moved.contains(name) {
            return Decision::Skip;
        }
        if let Some(keep) = &self.keep
            && !keep.contains(&target)
        {
            return Decision::Skip;
        }
        Decision::Emit { target, via }
    }

    fn via_rule(&self, name: &str, via: Via) -> String {
        match via {
            Via::Unchanged => "passthrough".to_owned(),
            Via::Rename => format!("rename.{name}"),
            Via::Rule(i) => format!("rename_rules[{i}]"),
        }
    }

    /// Maps one row. Pure: the same row always gives the same result. The one thing it may
    /// change is the shared table of resolved names, which changes no result. A failure names
    /// the route, the rule, the field and the value; it is
    /// [`Poison`](autoglm_core::ErrorClass::Poison).
    ///
    /// Copies the row first; [`apply_owned`](Self::apply_owned) takes it instead.
    pub fn apply(&self, row: &Row) -> Result<Row, MappingError> {
        self.apply_owned(row.clone())
    }

    /// [`apply`](Self::apply), taking the row: a value that passes through unconverted moves
    /// into the output, under its own name when it keeps it, instead of being copied.
    pub fn apply_owned(&self, row: Row) -> Result<Row, MappingError> {
        self.apply_sorted(row)
            .map(|fields| fields.into_iter().collect())
    }

    /// [`apply_owned`](Self::apply_owned), the output as its fields in name order, each name
    /// once, instead of a map: what an encoder that walks a row in name order (the Avro
    /// target's `write_fields`) takes without a map being built for it.
    pub fn apply_sorted(&self, row: Row) -> Result<Vec<(String, Value)>, MappingError> {
        let names = self.names.0.load();
        let plan = self.plan(&row, &names)?;
        // Every check passed: what is left are moves.
        let mut source: Vec<(String, Value)> = row.into_iter().collect();
        Ok(plan
            .into_iter()
            .map(|(name, out)| match out {
                Out::Value(value) => (name.into_owned(), value),
                Out::Moved(at) => {
                    let (key, value) = std::mem::take(&mut source[at]);
                    let key = if key == name { key } else { name.into_owned() };
                    (key, value)
                }
            })
            .collect())
    }

    /// Every decision, conversion and check of one row, on borrowed values: the output fields
    /// sorted by name, each with what it holds.
    fn plan<'m>(
        &'m self,
        row: &Row,
        names: &'m FxHashMap<String, Decision>,
    ) -> Result<Vec<(Cow<'m, str>, Out)>, MappingError> {
        let mut out: Vec<(Cow<'m, str>, Out)> = Vec::with_capacity(row.len() + self.fields.len());
        // The source field each pass-through-reading `fields` entry takes.
        let mut slots: Vec<Option<Slotted<'_>>> = vec![None; self.fields.len()];
        let mut unseen: Vec<&str> = Vec::new();
        for (at, (name, value)) in row.iter().enumerate() {
            let placement = match names.get(name) {
                Some(decision) => decision.placement(),
                None => {
                    unseen.push(name);
                    self.decide(name).into_placement()
                }
            };
            match placement {
                Placement::Skip => {}
                Placement::Emit(target) => out.push((target, Out::Moved(at))),
                Placement::Slot(field) => {
                    if let Some(slot) = slots.get_mut(field) {
                        if slot.is_some() {
                            return Err(self.collision(row, name));
                        }
                        *slot = Some(Slotted { at, name, value });
                    }
                }
            }
        }
        if !unseen.is_empty() && names.len() < REMEMBERED_NAMES {
            self.remember(unseen);
        }
        for (field, slot) in self.fields.iter().zip(&slots) {
            if let Some(value) = self.apply_field(field, row, *slot)? {
                out.push((Cow::Borrowed(field.name.as_str()), value));
            }
        }
        // `fields` names never collide with pass-through names (`decide` sees to that), so a
        // duplicate here is two source fields renamed onto one name.
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = out.windows(2).find(|w| w[0].0 == w[1].0) {
            let target = &*pair[0].0;
            let second = row
                .keys()
                .filter(
                    |n| matches!(self.decide(n), Decision::Emit { target: t, .. } if t == target),
                )
                .nth(1)
                .map_or(target, String::as_str);
            return Err(self.collision(row, second));
        }
        Ok(out)
    }

    /// The output of one `fields` entry, `None` when it stays absent. A source value that
    /// needs no conversion is moved, not copied, by [`apply_owned`](Self::apply_owned).
    fn apply_field(
        &self,
        field: &Field,
        row: &Row,
        slot: Option<Slotted<'_>>,
    ) -> Result<Option<Out>, MappingError> {
        let (value, at, moved) = match &field.source {
            Source::Const(v) => return Ok(Some(Out::Value(v.clone()))),
            Source::Path(p) => (p.lookup(row), p.as_str(), None),
            Source::Target => match slot {
                Some(s) => (Some(s.value), s.name, Some(s.at)),
                None => (None, field.name.as_str(), None),
            },
        };
        let value = match value {
            Some(v) if !v.is_null() => v,
            absent => {
                return if let Some(d) = &field.default {
                    Ok(Some(Out::Value(d.clone())))
                } else if field.required {
                    Err(MappingError::new(
                        &self.route,
                        &field.rule_required,
                        at,
                        absent,
                        MappingFailure::Missing,
                    ))
                } else {
                    // A null stays null.
                    Ok(absent.map(|_| Out::Value(Value::Null)))
                };
            }
        };
        let converted = match &field.conversion {
            Some(c) if !c.is_identity(value) => Some(c.apply(value).map_err(|detail| {
                MappingError::new(
                    &self.route,
                    &field.rule_type,
                    at,
                    Some(value),
                    MappingFailure::Conversion {
                        to: c.name(),
                        detail,
                    },
                )
            })?),
            _ => None,
        };
        let result = converted.as_ref().unwrap_or(value);
        if let Some(p) = &field.pattern
            && !pattern_matches(p, result)
        {
            return Err(MappingError::new(
                &self.route,
                &field.rule_pattern,
                at,
                Some(result),
                MappingFailure::Pattern {
                    pattern: p.as_str().to_owned(),
                },
            ));
        }
        Ok(Some(match (converted, moved) {
            (Some(value), _) => Out::Value(value),
            (None, Some(position)) => Out::Moved(position),
            (None, None) => Out::Value(value.clone()),
        }))
    }
    /// Where a source field lands (passed through or read by a `fields` entry) and by which
    /// rule; `None` when it is not output.
    fn landing(&self, name: &str) -> Option<(String, Via)> {
        match self.decide(name) {
            Decision::Skip => None,
            Decision::Emit { target, via } => Some((target, via)),
            Decision::Slot { field, via } => self.fields.get(field).map(|f| (f.name.clone(), via)),
        }
    }

    /// The error for source field `second` landing on a name an earlier field took (cold path).
    fn collision(&self, row: &Row, second: &str) -> MappingError {
        let (target, via) = self
            .landing(second)
            .unwrap_or_else(|| (second.to_owned(), Via::Unchanged));
        let first = row
            .keys()
            .find(|n| n.as_str() != second && self.landing(n).is_some_and(|(t, _)| t == target))
            .map_or_else(String::new, Clone::clone);
        MappingError::new(
            &self.route,
            &self.via_rule(second, via),
            second,
            row.get(second),
            MappingFailure::Collision {
                first,
                second: second.to_owned(),
                target,
            },
        )
    }

    /// Checks the mapping against the source and target schemas' field names before records
    /// flow. `source_fields` lists the source's top-level names; nested fields may be added as
    /// dotted paths (`address.city`) to have nested `from` paths checked too.
    ///
    /// * Warning: an exact rename, a rename rule, a `drop` or a `from` that matches no source
    ///   field ("can never match"); a rule whose every match an earlier entry takes; a field
    ///   nothing produces; a source field that passes through unchanged into a target lacking it;
    ///   a target field no rule or source field produces.
    /// * Error: an output field (a `fields` entry or a rename target) the target lacks; two
    ///   source fields renamed to one name; a `required` field with no source.
    pub fn check(
        &self,
        source_fields: Option<&[String]>,
        target_fields: Option<&[String]>,
    ) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        let mut say = |severity: Severity, path: String, message: String| {
            out.push(Diagnostic {
                severity,
                path,
                message,
            });
        };
        let target: Option<HashSet<&str>> =
            target_fields.map(|t| t.iter().map(String::as_str).collect());
        let lacks = |name: &str| target.as_ref().is_some_and(|t| !t.contains(name));

        // Exact-rename and literal rule targets are known without the source.
        for (from, to) in &self.spec.rename {
            if lacks(to) {
                say(
                    Severity::Error,
                    format!("mapping.rename.{from}"),
                    format!("the target has no field `{to}`"),
                );
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.expands && lacks(&rule.to) {
                say(
                    Severity::Error,
                    format!("mapping.rename_rules[{i}].to"),
                    format!("the target has no field `{}`", rule.to),
                );
            }
        }
        for field in &self.fields {
            if lacks(&field.name) {
                say(
                    Severity::Error,
                    format!("mapping.fields.{}", field.name),
                    format!("the target has no field `{}`", field.name),
                );
            }
        }

        let Some(source) = source_fields else {
            return out;
        };
        let all: HashSet<&str> = source.iter().map(String::as_str).collect();
        // A dotted entry whose head is listed describes a nested field, not a top-level one.
        let top: Vec<&str> = source
            .iter()
            .map(String::as_str)
            .filter(|s| match s.split_once('.') {
                Some((head, _)) => !all.contains(head),
                None => true,
            })
            .collect();
        let has_top = |n: &str| top.contains(&n);

        for from in self.spec.rename.keys() {
            if !has_top(from) {
                say(
                    Severity::Warning,
                    format!("mapping.rename.{from}"),
                    format!("the source has no field `{from}`: this rename can never match"),
                );
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let matched: Vec<&str> = top
                .iter()
                .copied()
                .filter(|n| rule.regex.is_match(n))
                .collect();
            let path = format!("mapping.rename_rules[{i}]");
            let pattern = &self.spec.rename_rules[i].pattern;
            if matched.is_empty() {
                say(
                    Severity::Warning,
                    path,
                    format!(
                        "pattern `{pattern}` matches no source field: this rule can never match"
                    ),
                );
            } else if matched.iter().all(|n| {
                self.drop.contains(*n) || !matches!(self.rename_of(n).1, Via::Rule(j) if j == i)
            }) {
                say(
                    Severity::Warning,
                    path,
                    format!(
                        "pattern `{pattern}` can never match: every source field it matches ({}) is taken by `drop`, an exact rename or an earlier rule",
                        quoted(&matched)
                    ),
                );
            }
        }
        for (i, name) in self.spec.drop.iter().enumerate() {
            if !has_top(name) {
                say(
                    Severity::Warning,
                    format!("mapping.drop[{i}]"),
                    format!("the source has no field `{name}`: nothing to drop"),
                );
            }
        }

        // What the pass-through produces, and from which source names.
        let mut produced: HashMap<String, Vec<(&str, Via)>> = HashMap::new();
        for name in &top {
            if let Some((target, via)) = self.landing(name) {
                produced.entry(target).or_default().push((name, via));
            }
        }
        let mut targets: Vec<_> = produced.iter().collect();
        targets.sort_by_key(|(t, _)| t.as_str());
        for (target_name, sources) in targets {
            if let [(first, _), (second, via), ..] = sources.as_slice() {
                say(
                    Severity::Error,
                    format!("mapping.{}", self.via_rule(second, *via)),
                    format!(
                        "source fields `{first}` and `{second}` both map to `{target_name}`: every record carrying both will fail"
                    ),
                );
            }
            if self.field_index.contains_key(target_name) {
                continue;
            }
            for (name, via) in sources {
                if !lacks(target_name) {
                    continue;
                }
                match via {
                    Via::Unchanged => say(
                        Severity::Warning,
                        format!("source.{name}"),
                        format!(
                            "passes through unchanged, but the target has no field `{name}`: drop it or use keep"
                        ),
                    ),
                    Via::Rule(i) if self.rules[*i].expands => say(
                        Severity::Error,
                        format!("mapping.rename_rules[{i}]"),
                        format!("renames `{name}` to `{target_name}`, which the target lacks"),
                    ),
                    // Reported above, from the spec alone.
                    Via::Rule(_) | Via::Rename => {}
                }
            }
        }

        for field in &self.fields {
            let spec = &self.spec.fields[field.name.as_str()];
            let fatal = field.required && field.default.is_none();
            let severity = if fatal {
                Severity::Error
            } else {
                Severity::Warning
            };
            let consequence = if fatal {
                "every record will fail"
            } else if field.default.is_some() {
                "the default will always be used"
            } else {
                "the field will be absent"
            };
            match &field.source {
                Source::Const(_) => {}
                Source::Path(p) => {
                    let head = p.head();
                    let nested_listed = source.iter().any(|s| {
                        s.strip_prefix(head)
                            .is_some_and(|rest| rest.starts_with('.'))
                    });
                    let missing = if !has_top(head) && !nested_listed {
                        Some(head.to_owned())
                    } else if !p.is_top_level()
                        && nested_listed
                        && !all.contains(p.dotted().as_str())
                    {
                        Some(p.dotted())
                    } else {
                        None
                    };
                    if let Some(m) = missing {
                        say(
                            severity,
                            format!("mapping.fields.{}.from", field.name),
                            format!("the source has no field `{m}`: {consequence}"),
                        );
                    }
                }
                Source::Target => {
                    if !produced.contains_key(&field.name) && spec.default.is_none() {
                        say(
                            severity,
                            format!("mapping.fields.{}", field.name),
                            format!(
                                "no source field or rename produces `{}`: {consequence}",
                                field.name
                            ),
                        );
                    }
                }
            }
        }
        for (i, name) in self.spec.keep.iter().flatten().enumerate() {
            if !produced.contains_key(name) && !self.field_index.contains_key(name) {
                say(
                    Severity::Warning,
                    format!("mapping.keep[{i}]"),
                    format!("no source field or rename produces `{name}`"),
                );
            }
        }
        if let Some(target_fields) = target_fields {
            for t in target_fields {
                if !produced.contains_key(t) && !self.field_index.contains_key(t) {
                    say(
                        Severity::Warning,
                        format!("target.{t}"),
                        format!("no rule or source field produces target field `{t}`"),
                    );
                }
            }
        }
        out
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
