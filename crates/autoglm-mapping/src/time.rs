//! Timestamps and dates: zones, input formats and units, output renderings.

use std::fmt::Write as _;
use std::str::FromStr;

use chrono::format::{Item, Parsed, StrftimeItems};
use chrono::{
    DateTime, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat,
    TimeZone, Utc,
};
use chrono_tz::Tz;
use serde_json::Value;

use crate::spec::{TimeInputSpec, TimeOutputSpec, TimeUnit};

/// A time zone: UTC, a fixed offset, or an IANA zone with its daylight-saving rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Zone {
    Utc,
    Fixed(FixedOffset),
    Named(Tz),
}

impl Zone {
    pub(crate) fn parse(text: &str) -> Result<Zone, String> {
        if text.eq_ignore_ascii_case("utc") || text == "Z" {
            return Ok(Zone::Utc);
        }
        if text.starts_with(['+', '-']) {
            return FixedOffset::from_str(text)
                .map(Zone::Fixed)
                .map_err(|e| format!("`{text}` is not a UTC offset like `+08:00` ({e})"));
        }
        Tz::from_str(text).map(Zone::Named).map_err(|_| {
            format!("unknown time zone `{text}`: use an IANA name (`Asia/Shanghai`), `UTC` or an offset (`+08:00`)")
        })
    }

    /// The instant a wall-clock time in this zone denotes. In a daylight-saving overlap the
    /// earlier instant is taken; a time inside a gap does not exist and is an error.
    fn localize(self, local: NaiveDateTime) -> Result<DateTime<Utc>, String> {
        fn pick<T: TimeZone>(
            r: LocalResult<DateTime<T>>,
            local: NaiveDateTime,
        ) -> Result<DateTime<Utc>, String> {
            match r {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Ok(t.with_timezone(&Utc)),
                LocalResult::None => Err(format!(
                    "local time {local} does not exist in the input time zone (daylight-saving gap)"
                )),
            }
        }
        match self {
            Zone::Utc => Ok(local.and_utc()),
            Zone::Fixed(o) => pick(o.from_local_datetime(&local), local),
            Zone::Named(tz) => pick(tz.from_local_datetime(&local), local),
        }
    }

    /// The calendar date of an instant in this zone.
    fn date_of(self, t: DateTime<Utc>) -> NaiveDate {
        match self {
            Zone::Utc => t.date_naive(),
            Zone::Fixed(o) => t.with_timezone(&o).date_naive(),
            Zone::Named(tz) => t.with_timezone(&tz).date_naive(),
        }
    }
}

/// One way to read a time string.
#[derive(Debug, Clone)]
enum InFormat {
    /// RFC 3339 with an offset (Debezium `ZonedTimestamp`).
    Rfc3339,
    /// A strftime pattern, parsed once.
    Pattern(Vec<Item<'static>>),
}

/// What a time string turned out to contain.
enum Reading {
    /// A full instant with the offset it was written in.
    Zoned(DateTime<FixedOffset>),
    /// A wall-clock date and time without an offset.
    Local(NaiveDateTime),
    /// A date alone.
    Date(NaiveDate),
}

/// A compiled `input:` block.
#[derive(Debug, Clone)]
pub(crate) struct TimeInput {
    formats: Vec<InFormat>,
    zone: Zone,
    unit: TimeUnit,
    /// The formats as written, for error messages.
    described: String,
}

/// Compiles a strftime pattern, reporting the first bad specifier.
pub(crate) fn strftime_items(text: &str) -> Result<Vec<Item<'static>>, String> {
    if text.is_empty() {
        return Err("the format is empty".to_owned());
    }
    StrftimeItems::new(text)
        .parse_to_owned()
        .map_err(|e| format!("`{text}` is not a valid strftime format ({e})"))
}

impl TimeInput {
    /// Compiles an `input:` block. Errors are `(sub-path, reason)`, the sub-path relative to
    /// `input` (`"timezone"`, `"formats[1]"`).
    pub(crate) fn compile(
        spec: Option<&TimeInputSpec>,
        default_unit: TimeUnit,
        errors: &mut Vec<(String, String)>,
    ) -> TimeInput {
        let empty = TimeInputSpec::default();
        let spec = spec.unwrap_or(&empty);
        let zone = match spec.timezone.as_deref().map(Zone::parse) {
            None => Zone::Utc,
            Some(Ok(z)) => z,
            Some(Err(e)) => {
                errors.push(("timezone".to_owned(), e));
                Zone::Utc
            }
        };
        let mut formats = Vec::new();
        let mut written = Vec::new();
        if spec.format.is_some() && !spec.formats.is_empty() {
            errors.push((
                "format".to_owned(),
                "give either `format` or `formats`, not both".to_owned(),
            ));
        }
        let listed = spec.format.iter().map(|f| ("format".to_owned(), f)).chain(
            spec.formats
                .iter()
                .enumerate()
                .map(|(i, f)| (format!("formats[{i}]"), f)),
        );
        for (path, text) in listed {
            written.push(format!("`{text}`"));
            match strftime_items(text) {
                Ok(items) => formats.push(InFormat::Pattern(items)),
                Err(e) => errors.push((path, e)),
            }
        }
        if written.is_empty() {
            formats.push(InFormat::Rfc3339);
            for text in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d"] {
                if let Ok(items) = strftime_items(text) {
                    formats.push(InFormat::Pattern(items));
                }
            }
            written.push("ISO 8601".to_owned());
        }
        TimeInput {
            formats,
            zone,
            unit: spec.unit.unwrap_or(default_unit),
            described: written.join(", "),
        }
    }

    fn read_str(&self, s: &str) -> Option<Reading> {
        let s = s.trim();
        for format in &self.formats {
            match format {
                InFormat::Rfc3339 => {
                    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                        return Some(Reading::Zoned(t));
                    }
                }
                InFormat::Pattern(items) => {
                    let mut parsed = Parsed::new();
                    if chrono::format::parse(&mut parsed, s, items.iter()).is_err() {
                        continue;
                    }
                    if let Ok(t) = parsed.to_datetime() {
                        return Some(Reading::Zoned(t));
                    }
                    if let Ok(t) = parsed.to_naive_datetime_with_offset(0) {
                        return Some(Reading::Local(t));
                    }
                    if let Ok(d) = parsed.to_naive_date() {
                        return Some(Reading::Date(d));
                    }
                }
            }
        }
        None
    }

    fn unreadable(&self, s: &str) -> String {
        format!(
            "`{}` matches none of the input formats ({})",
            truncate(s.trim(), 40),
            self.described
        )
    }

    /// Reads a value as an instant.
    pub(crate) fn timestamp(&self, value: &Value) -> Result<DateTime<Utc>, String> {
        match value {
            Value::String(s) => match self.read_str(s) {
                Some(Reading::Zoned(t)) => Ok(t.with_timezone(&Utc)),
                Some(Reading::Local(t)) => self.zone.localize(t),
                Some(Reading::Date(d)) => self.zone.localize(d.and_time(NaiveTime::MIN)),
                None => match s.trim().parse::<i64>() {
                    Ok(n) => from_epoch(n, self.unit),
                    Err(_) => Err(self.unreadable(s)),
                },
            },
            Value::Number(_) => from_epoch(integer(value, self.unit)?, self.unit),
            other => Err(format!("a {} is not a timestamp", kind(other))),
        }
    }

    /// Reads a value as a calendar date. A string with an offset keeps the date as written; an
    /// epoch number other than days is read in the input zone.
    pub(crate) fn date(&self, value: &Value) -> Result<NaiveDate, String> {
        let from_number = |n: i64| -> Result<NaiveDate, String> {
            if self.unit == TimeUnit::EpochDays {
                epoch_day(n)
            } else {
                from_epoch(n, self.unit).map(|t| self.zone.date_of(t))
            }
        };
        match value {
            Value::String(s) => match self.read_str(s) {
                Some(Reading::Zoned(t)) => Ok(t.date_naive()),
                Some(Reading::Local(t)) => Ok(t.date()),
                Some(Reading::Date(d)) => Ok(d),
                None => match s.trim().parse::<i64>() {
                    Ok(n) => from_number(n),
                    Err(_) => Err(self.unreadable(s)),
                },
            },
            Value::Number(_) => from_number(integer(value, self.unit)?),
            other => Err(format!("a {} is not a date", kind(other))),
        }
    }
}

/// An integral JSON number (an integral float such as `1.7e12` is accepted).
fn integer(value: &Value, unit: TimeUnit) -> Result<i64, String> {
    if let Some(n) = value.as_i64() {
        return Ok(n);
    }
    match value.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(f as i64),
        _ => Err(format!(
            "{value} is not an integer count of {}",
            unit.as_str()
        )),
    }
}

fn epoch_day(days: i64) -> Result<NaiveDate, String> {
    i32::try_from(days)
        .ok()
        .and_then(|d| d.checked_add(719_163))
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .ok_or_else(|| format!("{days} epoch days is outside the supported date range"))
}

pub(crate) fn from_epoch(n: i64, unit: TimeUnit) -> Result<DateTime<Utc>, String> {
    let t = match unit {
        TimeUnit::EpochDays => epoch_day(n)
            .ok()
            .map(|d| d.and_time(NaiveTime::MIN).and_utc()),
        TimeUnit::EpochSeconds => DateTime::from_timestamp(n, 0),
        TimeUnit::EpochMillis => DateTime::from_timestamp_millis(n),
        TimeUnit::EpochMicros => DateTime::from_timestamp_micros(n),
        TimeUnit::EpochNanos => Some(DateTime::from_timestamp_nanos(n)),
    };
    t.ok_or_else(|| format!("{n} {} is outside the supported range", unit.as_str()))
}

/// How a converted time is written.
#[derive(Debug, Clone)]
pub(crate) enum TimeOutput {
    Iso(Zone),
    Epoch(TimeUnit),
    Pattern(Vec<Item<'static>>, Zone),
}

impl TimeOutput {
    /// Compiles an `output:` value for a timestamp (`date == false`) or a date. Errors are
    /// `(sub-path, reason)` relative to `output`.
    pub(crate) fn compile(
        spec: Option<&TimeOutputSpec>,
        date: bool,
        errors: &mut Vec<(String, String)>,
    ) -> TimeOutput {
        let (format, zone, nested) = match spec {
            None => return TimeOutput::Iso(Zone::Utc),
            Some(TimeOutputSpec::Named(name)) => (name.as_str(), None, false),
            Some(TimeOutputSpec::Format { format, timezone }) => {
                (format.as_str(), timezone.as_deref(), true)
            }
        };
        let zone = match zone.map(Zone::parse) {
            None => Zone::Utc,
            Some(Ok(z)) => z,
            Some(Err(e)) => {
                errors.push(("timezone".to_owned(), e));
                Zone::Utc
            }
        };
        let at = if nested { "format" } else { "" };
        let unit = match format {
            "iso8601" => return TimeOutput::Iso(zone),
            "epoch_days" => TimeUnit::EpochDays,
            "epoch_seconds" => TimeUnit::EpochSeconds,
            "epoch_millis" => TimeUnit::EpochMillis,
            "epoch_micros" => TimeUnit::EpochMicros,
            "epoch_nanos" => TimeUnit::EpochNanos,
            pattern if pattern.contains('%') => {
                return match strftime_items(pattern) {
                    Ok(items) => {
                        // Render a sample once so a pattern asking a date for its hour fails
                        // here rather than on every record.
                        let probe = TimeOutput::Pattern(items, zone);
                        let sample = DateTime::<Utc>::UNIX_EPOCH;
                        if let Err(e) = probe.render(sample, date) {
                            errors.push((at.to_owned(), e));
                        }
                        probe
                    }
                    Err(e) => {
                        errors.push((at.to_owned(), e));
                        TimeOutput::Iso(zone)
                    }
                };
            }
            other => {
                let expected = if date {
                    "iso8601, epoch_days or a strftime pattern"
                } else {
                    "iso8601, epoch_seconds, epoch_millis, epoch_micros, epoch_nanos or a strftime pattern"
                };
                errors.push((
                    at.to_owned(),
                    format!("unknown output `{other}`; expected {expected}"),
                ));
                return TimeOutput::Iso(zone);
            }
        };
        if date != (unit == TimeUnit::EpochDays) {
            let what = if date { "a date" } else { "a timestamp" };
            errors.push((
                at.to_owned(),
                format!("`{}` is not an output for {what}", unit.as_str()),
            ));
        }
        TimeOutput::Epoch(unit)
    }

    /// Writes an instant (for `date`, its UTC midnight).
    pub(crate) fn render(&self, t: DateTime<Utc>, date: bool) -> Result<Value, String> {
        match self {
            // `NaiveDate`'s `Display` is ISO 8601 `YYYY-MM-DD`.
            TimeOutput::Iso(_) if date => Ok(Value::String(t.date_naive().to_string())),
            TimeOutput::Iso(Zone::Utc) => Ok(Value::String(
                t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            )),
            TimeOutput::Iso(Zone::Fixed(o)) => Ok(Value::String(
                t.with_timezone(o)
                    .to_rfc3339_opts(SecondsFormat::AutoSi, false),
            )),
            TimeOutput::Iso(Zone::Named(tz)) => Ok(Value::String(
                t.with_timezone(tz)
                    .to_rfc3339_opts(SecondsFormat::AutoSi, false),
            )),
            TimeOutput::Epoch(unit) => {
                let n = match unit {
                    TimeUnit::EpochDays => Some(t.timestamp().div_euclid(86_400)),
                    TimeUnit::EpochSeconds => Some(t.timestamp()),
                    TimeUnit::EpochMillis => Some(t.timestamp_millis()),
                    TimeUnit::EpochMicros => Some(t.timestamp_micros()),
                    TimeUnit::EpochNanos => t.timestamp_nanos_opt(),
                };
                n.map(Value::from)
                    .ok_or_else(|| format!("{t} does not fit in {}", unit.as_str()))
            }
            TimeOutput::Pattern(items, zone) => {
                let mut out = String::new();
                let written = if date {
                    write!(out, "{}", t.date_naive().format_with_items(items.iter()))
                } else {
                    match zone {
                        Zone::Utc => write!(out, "{}", t.format_with_items(items.iter())),
                        Zone::Fixed(o) => {
                            write!(
                                out,
                                "{}",
                                t.with_timezone(o).format_with_items(items.iter())
                            )
                        }
                        Zone::Named(tz) => {
                            write!(
                                out,
                                "{}",
                                t.with_timezone(tz).format_with_items(items.iter())
                            )
                        }
                    }
                };
                written.map(|()| Value::String(out)).map_err(|_| {
                    "the output format asks for a field this value does not have".to_owned()
                })
            }
        }
    }
}

/// The JSON kind of a value, for messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// At most `max` characters of `s`, with `…` when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(yaml: &str, unit: TimeUnit) -> TimeInput {
        let spec: TimeInputSpec = serde_yaml::from_str(yaml).expect("yaml");
        let mut errors = Vec::new();
        let compiled = TimeInput::compile(Some(&spec), unit, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        compiled
    }

    fn iso(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    #[test]
    fn wall_clock_in_a_named_zone_becomes_the_right_instant() {
        let i = input(
            r#"{ format: "%Y-%m-%d %H:%M:%S", timezone: Asia/Shanghai }"#,
            TimeUnit::EpochMillis,
        );
        let t = i.timestamp(&json!("2025-04-05 10:30:00")).expect("parses");
        assert_eq!(iso(t), "2025-04-05T02:30:00Z");
    }

    #[test]
    fn several_formats_are_tried_in_order_and_date_only_means_midnight() {
        let i = input(
            r#"{ formats: ["%d/%m/%Y %H:%M", "%Y%m%d"], timezone: "+08:00" }"#,
            TimeUnit::EpochMillis,
        );
        assert_eq!(
            iso(i.timestamp(&json!("05/04/2025 10:30")).expect("first")),
            "2025-04-05T02:30:00Z"
        );
        assert_eq!(
            iso(i.timestamp(&json!("20250405")).expect("second")),
            "2025-04-04T16:00:00Z"
        );
        let err = i.timestamp(&json!("April 5th")).expect_err("neither");
        assert!(
            err.contains("%d/%m/%Y %H:%M") && err.contains("%Y%m%d"),
            "{err}"
        );
    }

    #[test]
    fn default_input_reads_iso_strings_and_debezium_units() {
        let i = input("{}", TimeUnit::EpochMillis);
        assert_eq!(
            iso(i
                .timestamp(&json!("2025-04-05T10:30:00+08:00"))
                .expect("zoned")),
            "2025-04-05T02:30:00Z"
        );
        assert_eq!(
            iso(i
                .timestamp(&json!("2025-04-05T02:30:00.250Z"))
                .expect("zoned")),
            "2025-04-05T02:30:00.250Z"
        );
        assert_eq!(
            iso(i.timestamp(&json!("2025-04-05 02:30:00")).expect("naive")),
            "2025-04-05T02:30:00Z"
        );
        assert_eq!(
            iso(i.timestamp(&json!(1_743_820_200_000_i64)).expect("millis")),
            "2025-04-05T02:30:00Z"
        );
        assert_eq!(
            iso(i.timestamp(&json!("1743820200000")).expect("millis text")),
            "2025-04-05T02:30:00Z"
        );
        let micros = input("{ unit: epoch_micros }", TimeUnit::EpochMillis);
        assert_eq!(
            iso(micros
                .timestamp(&json!(1_743_820_200_000_001_i64))
                .expect("micros")),
            "2025-04-05T02:30:00.000001Z"
        );
        let nanos = input("{ unit: epoch_nanos }", TimeUnit::EpochMillis);
        assert_eq!(
            iso(nanos
                .timestamp(&json!(1_743_820_200_000_000_007_i64))
                .expect("nanos")),
            "2025-04-05T02:30:00.000000007Z"
        );
        let days = input("{}", TimeUnit::EpochDays);
        assert_eq!(
            days.date(&json!(20_183)).expect("days").to_string(),
            "2025-04-05"
        );
        assert_eq!(
            days.date(&json!(-1)).expect("days").to_string(),
            "1969-12-31"
        );
    }

    #[test]
    fn dates_from_instants_use_the_input_zone() {
        let i = input(
            "{ unit: epoch_millis, timezone: Asia/Shanghai }",
            TimeUnit::EpochDays,
        );
        // 2025-04-04T20:00:00Z is already the 5th in Shanghai.
        assert_eq!(
            i.date(&json!(1_743_796_800_000_i64))
                .expect("ok")
                .to_string(),
            "2025-04-05"
        );
        assert_eq!(
            i.date(&json!("2025-04-05T23:30:00-05:00"))
                .expect("ok")
                .to_string(),
            "2025-04-05"
        );
    }

    #[test]
    fn daylight_saving_gaps_are_errors_and_overlaps_take_the_earlier_instant() {
        let i = input(
            r#"{ format: "%Y-%m-%d %H:%M", timezone: America/New_York }"#,
            TimeUnit::EpochMillis,
        );
        assert!(
            i.timestamp(&json!("2025-03-09 02:30"))
                .expect_err("gap")
                .contains("does not exist")
        );
        assert_eq!(
            iso(i.timestamp(&json!("2025-11-02 01:30")).expect("overlap")),
            "2025-11-02T05:30:00Z"
        );
    }

    #[test]
    fn bad_zones_formats_and_outputs_are_reported_by_sub_path() {
        let spec: TimeInputSpec =
            serde_yaml::from_str(r#"{ timezone: Mars/Base, formats: ["%Y", "%Q"] }"#)
                .expect("yaml");
        let mut errors = Vec::new();
        TimeInput::compile(Some(&spec), TimeUnit::EpochMillis, &mut errors);
        let paths: Vec<_> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["timezone", "formats[1]"]);

        let mut errors = Vec::new();
        TimeOutput::compile(
            Some(&TimeOutputSpec::Named("epoch_days".into())),
            false,
            &mut errors,
        );
        TimeOutput::compile(
            Some(&TimeOutputSpec::Named("unix".into())),
            false,
            &mut errors,
        );
        TimeOutput::compile(
            Some(&TimeOutputSpec::Format {
                format: "%H:%M".into(),
                timezone: Some("Nowhere".into()),
            }),
            true,
            &mut errors,
        );
        let paths: Vec<_> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["", "", "timezone", "format"], "{errors:?}");
    }

    #[test]
    fn outputs_render_iso_with_offsets_epochs_and_patterns() {
        let t = DateTime::parse_from_rfc3339("2025-04-05T02:30:00Z")
            .expect("t")
            .with_timezone(&Utc);
        let out = |spec: TimeOutputSpec, date: bool| {
            let mut errors = Vec::new();
            let o = TimeOutput::compile(Some(&spec), date, &mut errors);
            assert!(errors.is_empty(), "{errors:?}");
            o.render(t, date).expect("renders")
        };
        let named = |s: &str| TimeOutputSpec::Named(s.to_owned());
        let fmt = |f: &str, z: &str| TimeOutputSpec::Format {
            format: f.into(),
            timezone: Some(z.into()),
        };
        assert_eq!(out(named("iso8601"), false), json!("2025-04-05T02:30:00Z"));
        assert_eq!(
            out(fmt("iso8601", "Asia/Shanghai"), false),
            json!("2025-04-05T10:30:00+08:00")
        );
        assert_eq!(
            out(named("epoch_millis"), false),
            json!(1_743_820_200_000_i64)
        );
        assert_eq!(
            out(named("epoch_micros"), false),
            json!(1_743_820_200_000_000_i64)
        );
        assert_eq!(out(named("epoch_seconds"), false), json!(1_743_820_200_i64));
        assert_eq!(
            out(fmt("%Y/%m/%d %H:%M", "+08:00"), false),
            json!("2025/04/05 10:30")
        );
        assert_eq!(out(named("iso8601"), true), json!("2025-04-05"));
        assert_eq!(out(named("epoch_days"), true), json!(20_183));
    }

    #[test]
    fn truncate_counts_characters_not_bytes() {
        assert_eq!(truncate("上海市浦东新区", 3), "上海市…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
