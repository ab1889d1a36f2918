//! End-to-end tests of compile → apply → check, written from YAML as users write it.

use autoglm_core::{Classify, ErrorClass, Row};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::{Diagnostic, Mapping, MappingFailure, MappingSpec, Severity};

fn spec(yaml: &str) -> MappingSpec {
    serde_yaml::from_str(yaml).expect("valid yaml")
}

fn mapping(yaml: &str) -> Mapping {
    Mapping::compile("crm_customers", &spec(yaml)).expect("compiles")
}

fn row(v: Value) -> Row {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn names(fields: &[&str]) -> Vec<String> {
    fields.iter().map(|s| (*s).to_owned()).collect()
}

// The origin document's rule library:
// mapping_rules = { r'usr_?name|username': 'user_name', r'Email|e.?mail': 'email_address' }
const ORIGIN_RULES: &str = r#"
rename_rules:
  - { pattern: "usr_?name|username", to: user_name }
  - { pattern: "Email|e.?mail", to: email_address }
"#;

#[test]
fn origin_document_regex_rules_rename_whole_names() {
    let m = mapping(ORIGIN_RULES);
    for (source, target) in [
        ("usr_name", "user_name"),
        ("usrname", "user_name"),
        ("username", "user_name"),
        ("Email", "email_address"),
        ("email", "email_address"),
        ("e-mail", "email_address"),
        ("e_mail", "email_address"),
    ] {
        let out = m.apply(&row(json!({ source: "x" }))).expect("maps");
        assert_eq!(out, row(json!({ target: "x" })), "{source}");
    }
    // Whole-name match: a name merely containing a match is left alone.
    let out = m
        .apply(&row(json!({"usr_name_old": 1, "EMAIL": 2, "emails": 3})))
        .expect("maps");
    assert_eq!(
        out,
        row(json!({"usr_name_old": 1, "EMAIL": 2, "emails": 3}))
    );
}

#[test]
fn case_insensitive_rules_and_capture_groups() {
    let m = mapping(
        r#"
rename_rules:
  - { pattern: "Email|e.?mail", to: email_address, case_insensitive: true }
  - { pattern: "crm_(?P<rest>.+)", to: "erp_${rest}" }
  - { pattern: "(.+)_ts", to: "${1}_at" }
"#,
    );
    let out = m
        .apply(&row(
            json!({"EMAIL": "a@b.cn", "crm_owner": "li", "created_ts": 1}),
        ))
        .expect("maps");
    assert_eq!(
        out,
        row(json!({"email_address": "a@b.cn", "erp_owner": "li", "created_at": 1}))
    );
}

#[test]
fn exact_renames_win_over_rules_and_first_rule_wins() {
    let m = mapping(
        r#"
rename: { username: login }
rename_rules:
  - { pattern: "user.*", to: first }
  - { pattern: "u.*", to: second }
"#,
    );
    let out = m
        .apply(&row(json!({"username": 1, "user_id": 2, "uid": 3})))
        .expect("maps");
    assert_eq!(out, row(json!({"login": 1, "first": 2, "second": 3})));
}

#[test]
fn nested_paths_drop_and_keep() {
    let m = mapping(
        r#"
drop: [password_hash, address]
fields:
  city: { from: address.city }
  lat:  { from: address.geo.lat, type: string }
  dotted: { from: 'meta.a\.b' }
"#,
    );
    let input = row(json!({
        "id": 7,
        "password_hash": "secret",
        "address": {"city": "上海", "geo": {"lat": 31.23}},
        "meta": {"a.b": true}
    }));
    let out = m.apply(&input).expect("maps");
    assert_eq!(
        out,
        row(
            json!({"id": 7, "city": "上海", "lat": "31.23", "dotted": true, "meta": {"a.b": true}})
        )
    );

    let keep = mapping(
        r#"
rename: { usr_nm: user_name }
keep: [user_name]
fields:
  source_system: { const: crm }
"#,
    );
    let out = keep
        .apply(&row(json!({"usr_nm": "王", "phone": "138", "id": 1})))
        .expect("maps");
    assert_eq!(out, row(json!({"user_name": "王", "source_system": "crm"})));
}

#[test]
fn a_top_level_from_moves_the_field() {
    let m = mapping(
        r#"
fields:
  customer_name: { from: account_name, type: string }
  created_day: { from: created_at, type: date, input: { unit: epoch_millis } }
  created_at: { type: timestamp }
"#,
    );
    let out = m
        .apply(&row(
            json!({"account_name": "ABC科技有限公司", "created_at": 1_743_820_200_000_i64}),
        ))
        .expect("maps");
    assert_eq!(
        out,
        row(json!({
            "customer_name": "ABC科技有限公司",
            "created_day": "2025-04-05",
            "created_at": "2025-04-05T02:30:00Z"
        }))
    );
}

#[test]
fn defaults_fill_missing_and_null_and_constants_always_win() {
    let m = mapping(
        r#"
fields:
  country: { default: CN }
  tier: { type: int, default: "3" }
  source_system: { const: crm }
"#,
    );
    let out = m
        .apply(&row(json!({"source_system": "other"})))
        .expect("maps");
    assert_eq!(
        out,
        row(json!({"country": "CN", "tier": 3, "source_system": "crm"}))
    );
    let out = m
        .apply(&row(json!({"country": null, "tier": "5"})))
        .expect("maps");
    assert_eq!(
        out,
        row(json!({"country": "CN", "tier": 5, "source_system": "crm"}))
    );
    let out = m.apply(&row(json!({"country": "JP"}))).expect("maps");
    assert_eq!(out["country"], json!("JP"));
}

#[test]
fn optional_fields_stay_missing_or_null() {
    let m = mapping("fields: { n: { type: long }, s: { type: string } }");
    let out = m.apply(&row(json!({"s": null}))).expect("maps");
    assert_eq!(out, row(json!({"s": null})));
}

#[test]
fn a_missing_required_field_names_itself() {
    let m = mapping(
        "fields: { id: { type: long, required: true }, city: { from: address.city, required: true } }",
    );
    let e = m
        .apply(&row(json!({"address": {"city": "x"}})))
        .expect_err("missing");
    assert_eq!(e.route(), "crm_customers");
    assert_eq!(e.rule(), "fields.id.required");
    assert_eq!(e.field(), "id");
    assert_eq!(e.value(), "<missing>");
    assert_eq!(e.failure(), &MappingFailure::Missing);
    assert_eq!(e.class(), ErrorClass::Poison);
    let e = m
        .apply(&row(json!({"id": 1, "address": {"city": null}})))
        .expect_err("null");
    assert_eq!(
        (e.rule(), e.field(), e.value()),
        ("fields.city.required", "address.city", "null")
    );
}

#[test]
fn a_failed_conversion_names_route_rule_path_and_value() {
    let m = mapping(
        r#"
fields:
  credit: { from: finance.credit_limit, type: long }
  signup_at: { type: timestamp, input: { format: "%Y-%m-%d %H:%M:%S" } }
"#,
    );
    let e = m
        .apply(&row(json!({"finance": {"credit_limit": "123a"}})))
        .expect_err("not a number");
    assert_eq!(e.rule(), "fields.credit.type");
    assert_eq!(e.field(), "finance.credit_limit");
    assert_eq!(e.value(), r#""123a""#);
    let text = e.to_string();
    for part in [
        "crm_customers",
        "fields.credit.type",
        "finance.credit_limit",
        "123a",
        "long",
    ] {
        assert!(text.contains(part), "{text} lacks {part}");
    }

    let e = m
        .apply(&row(json!({"signup_at": "2025-13-45 99:00:00"})))
        .expect_err("bad date");
    assert_eq!(e.rule(), "fields.signup_at.type");
    assert!(e.to_string().contains("%Y-%m-%d %H:%M:%S"), "{e}");
}

#[test]
fn a_value_failing_its_pattern_is_rejected() {
    // The origin document: "Tax Registration No → Tax ID, 正则校验后映射".
    let m = mapping(
        r#"
rename: { "Tax Registration No": tax_id }
fields:
  tax_id: { type: string, pattern: "^[0-9A-Z]{18}$" }
"#,
    );
    let ok = m
        .apply(&row(json!({"Tax Registration No": "91310115MA1K3YXXXX"})))
        .expect("valid");
    assert_eq!(ok["tax_id"], json!("91310115MA1K3YXXXX"));
    let e = m
        .apply(&row(json!({"Tax Registration No": "9131-bad"})))
        .expect_err("invalid");
    assert_eq!(e.rule(), "fields.tax_id.pattern");
    assert!(matches!(e.failure(), MappingFailure::Pattern { .. }));
}

#[test]
fn two_sources_renamed_onto_one_name_is_an_error_not_a_silent_overwrite() {
    let m = mapping(ORIGIN_RULES);
    let e = m
        .apply(&row(json!({"username": "a", "usr_name": "b"})))
        .expect_err("collision");
    assert_eq!(e.rule(), "rename_rules[0]");
    assert!(
        matches!(e.failure(), MappingFailure::Collision { target, .. } if target == "user_name")
    );
}

#[test]
fn long_values_are_cut_in_errors() {
    let m = mapping("fields: { n: { type: long } }");
    let e = m
        .apply(&row(json!({"n": "9".repeat(300)})))
        .expect_err("range");
    assert!(e.value().chars().count() <= 65, "{}", e.value());
}

#[test]
fn timestamps_with_format_and_zone_to_iso_and_epoch() {
    let m = mapping(
        r#"
fields:
  signup_at:
    type: timestamp
    input: { format: "%Y-%m-%d %H:%M:%S", timezone: Asia/Shanghai }
    output: iso8601
  signup_local:
    from: signup_at
    type: timestamp
    input: { format: "%Y-%m-%d %H:%M:%S", timezone: Asia/Shanghai }
    output: { format: iso8601, timezone: Asia/Shanghai }
  signup_ms:
    from: signup_at
    type: timestamp
    input: { format: "%Y-%m-%d %H:%M:%S", timezone: Asia/Shanghai }
    output: epoch_millis
  signup_us:
    from: signup_at
    type: timestamp
    input: { format: "%Y-%m-%d %H:%M:%S", timezone: Asia/Shanghai }
    output: epoch_micros
"#,
    );
    let out = m
        .apply(&row(json!({"signup_at": "2025-04-05 10:30:00"})))
        .expect("maps");
    assert_eq!(out["signup_at"], json!("2025-04-05T02:30:00Z"));
    assert_eq!(out["signup_local"], json!("2025-04-05T10:30:00+08:00"));
    assert_eq!(out["signup_ms"], json!(1_743_820_200_000_i64));
    assert_eq!(out["signup_us"], json!(1_743_820_200_000_000_i64));
}

#[test]
fn debezium_units_become_iso_and_back() {
    let m = mapping(
        r#"
fields:
  birthday: { type: date }
  created: { type: timestamp }
  updated: { type: timestamp, input: { unit: epoch_micros } }
  zoned: { type: timestamp, output: epoch_millis }
  day_number: { from: birthday_text, type: date, output: epoch_days }
"#,
    );
    let out = m
        .apply(&row(json!({
            "birthday": 20_183,
            "created": 1_743_820_200_123_i64,
            "updated": 1_743_820_200_123_456_i64,
            "zoned": "2025-04-05T10:30:00+08:00",
            "birthday_text": "2025-04-05"
        })))
        .expect("maps");
    assert_eq!(out["birthday"], json!("2025-04-05"));
    assert_eq!(out["created"], json!("2025-04-05T02:30:00.123Z"));
    assert_eq!(out["updated"], json!("2025-04-05T02:30:00.123456Z"));
    assert_eq!(out["zoned"], json!(1_743_820_200_000_i64));
    assert_eq!(out["day_number"], json!(20_183));
}

#[test]
fn each_scalar_conversion_runs_both_ways_through_a_mapping() {
    let m = mapping(
        r#"
fields:
  a: { type: long }
  b: { type: string }
  c: { type: double }
  d: { type: string }
  e: { type: bool }
  f: { type: string }
  g: { type: { decimal: { scale: 2 } } }
  h: { type: double }
  i: { type: int }
"#,
    );
    let out = m
        .apply(&row(json!({
            "a": "42", "b": 42, "c": "2.5", "d": 2.5, "e": "yes", "f": false,
            "g": 1234.5, "h": "1234.50", "i": 7.0
        })))
        .expect("maps");
    assert_eq!(
        out,
        row(json!({
            "a": 42, "b": "42", "c": 2.5, "d": "2.5", "e": true, "f": "false",
            "g": "1234.50", "h": 1234.5, "i": 7
        }))
    );
}

#[test]
fn debezium_base64_decimals_map_when_the_field_says_so() {
    // Debezium's JSON converter, schemas.enable=false, decimal.handling.mode=precise.
    let source = row(json!({"id": 1, "credit_limit": "XeMS", "rate": "XeMS", "plain": "XeMS"}));
    let m = mapping(
        r#"
fields:
  credit_limit: { type: { decimal: { scale: 2, input: base64 } } }
  rate:         { type: { decimal: { scale: 2, input: base64, input_scale: 4, rounding: half_even } } }
"#,
    );
    let out = m.apply(&source).expect("maps");
    assert_eq!(out["credit_limit"], json!("61529.78"));
    assert_eq!(out["rate"], json!("615.30"));
    assert_eq!(out["id"], json!(1));
    // Moved, as the engine moves it, gives the same.
    assert_eq!(m.apply_owned(source.clone()).expect("maps"), out);

    // Without `input: base64` the bytes are not a decimal number: the record is poison.
    let text = mapping("fields: { plain: { type: { decimal: { scale: 2 } } } }");
    let e = text.apply(&source).expect_err("not a decimal");
    assert!(
        e.to_string().contains("`XeMS` is not a decimal number"),
        "{e}"
    );

    let e = m
        .apply(&row(json!({"credit_limit": "1234.50"})))
        .expect_err("text where bytes were declared");
    assert_eq!(e.class(), ErrorClass::Poison);
    assert_eq!(e.rule(), "fields.credit_limit.type");
    assert_eq!(e.value(), r#""1234.50""#);
    assert!(
        e.to_string()
            .contains("expected Kafka Connect Decimal bytes in base64"),
        "{e}"
    );
}

#[test]
fn decimal_input_scale_needs_base64_input_and_at_most_28() {
    let bad = spec(
        r#"
fields:
  credit_limit: { type: { decimal: { scale: 2, input_scale: 4 } } }
  explicit_text: { type: { decimal: { scale: 2, input: text, input_scale: 4 } } }
  too_fine: { type: { decimal: { scale: 2, input: base64, input_scale: 29 } } }
  fine: { type: { decimal: { scale: 2, input: base64, input_scale: 28 } } }
"#,
    );
    let errors = Mapping::compile("r", &bad).expect_err("invalid");
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "mapping.fields.credit_limit.type.decimal.input_scale",
            "mapping.fields.explicit_text.type.decimal.input_scale",
            "mapping.fields.too_fine.type.decimal.input_scale",
        ],
        "{errors:#?}"
    );
    let message = errors[0].to_string();
    assert!(message.contains("credit_limit"), "{message}");
    assert!(message.contains("`input_scale`"), "{message}");
    assert!(message.contains("`input: base64`"), "{message}");
    assert!(errors[2].reason.contains("29"), "{}", errors[2]);
}

#[test]
fn compile_reports_every_error_with_its_key_path() {
    let bad = spec(
        r#"
rename: { a: "" }
rename_rules:
  - { pattern: "ok", to: fine }
  - { pattern: "usr_(name", to: user_name }
  - { pattern: "(x)", to: "$2" }
drop: [a]
fields:
  signup_at:
    type: timestamp
    input: { format: "%Y-%m-%d %Q", timezone: Mars/Olympus }
    output: epoch_fortnights
  id: { type: lng }
  country: { const: CN, default: US }
  tax_id: { required: true, default: x, pattern: "[" }
  amount: { type: { decimal: { scale: 40 } } }
  n: { type: long, default: abc }
  name: { type: string, input: { unit: epoch_days } }
  city: { from: "address..city" }
"#,
    );
    let errors = Mapping::compile("r", &bad).expect_err("invalid");
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "mapping.rename.a",
            "mapping.rename_rules[1].pattern",
            "mapping.rename_rules[2].to",
            "mapping.drop[0]",
            "mapping.fields.signup_at.input.timezone",
            "mapping.fields.signup_at.input.format",
            "mapping.fields.signup_at.output",
            "mapping.fields.id.type",
            "mapping.fields.country.const",
            "mapping.fields.tax_id.required",
            "mapping.fields.tax_id.pattern",
            "mapping.fields.amount.type.decimal.scale",
            "mapping.fields.n.default",
            "mapping.fields.name.input",
            "mapping.fields.city.from",
        ],
        "{errors:#?}"
    );
    let reason = |p: &str| {
        errors
            .iter()
            .find(|e| e.path == p)
            .map(|e| e.reason.clone())
            .unwrap_or_default()
    };
    assert!(reason("mapping.fields.signup_at.input.timezone").contains("Mars/Olympus"));
    assert!(reason("mapping.fields.id.type").contains("unknown type `lng`"));
    assert!(reason("mapping.rename_rules[1].pattern").contains("bad regex"));
    assert!(reason("mapping.fields.n.default").contains("cannot convert to long"));
    assert!(errors[0].to_string().starts_with("mapping.rename.a: "));
}

#[test]
fn check_warns_about_rules_that_can_never_match() {
    let m = mapping(
        r#"
rename: { usr_nm: user_name }
rename_rules:
  - { pattern: "usr_?name|username", to: user_name }
  - { pattern: "Email|e.?mail", to: email_address }
  - { pattern: "usr.*", to: someone }
drop: [fax]
fields:
  city: { from: address.city }
  phone: { type: string }
"#,
    );
    let source = names(&["usr_name", "email_address", "address", "address.town"]);
    let d = m.check(Some(&source), None);
    let got: Vec<(Severity, &str)> = d.iter().map(|d| (d.severity, d.path.as_str())).collect();
    assert_eq!(
        got,
        [
            (Severity::Warning, "mapping.rename.usr_nm"),
            (Severity::Warning, "mapping.rename_rules[1]"),
            (Severity::Warning, "mapping.rename_rules[2]"),
            (Severity::Warning, "mapping.drop[0]"),
            (Severity::Warning, "mapping.fields.city.from"),
            (Severity::Warning, "mapping.fields.phone"),
        ],
        "{d:#?}"
    );
    assert!(
        d.iter()
            .take(2)
            .all(|d| d.message.contains("can never match")),
        "{d:#?}"
    );
    assert!(d[2].message.contains("taken by"), "{}", d[2]);
    assert!(d[4].message.contains("address.city"), "{}", d[4]);
}

#[test]
fn check_errors_on_outputs_the_target_lacks_and_warns_on_unproduced_targets() {
    let m = mapping(
        r#"
rename: { usr_nm: user_name }
rename_rules:
  - { pattern: "Email|e.?mail", to: email_address }
  - { pattern: "crm_(.+)", to: "$1" }
fields:
  source_system: { const: crm }
  id: { type: long, required: true }
"#,
    );
    let source = names(&["usr_nm", "email", "crm_owner", "id", "legacy"]);
    let target = names(&["user_name", "id", "owner", "tax_id"]);
    let d = m.check(Some(&source), Some(&target));
    let got: Vec<(Severity, &str)> = d.iter().map(|d| (d.severity, d.path.as_str())).collect();
    assert_eq!(
        got,
        [
            (Severity::Error, "mapping.rename_rules[0].to"),
            (Severity::Error, "mapping.fields.source_system"),
            (Severity::Warning, "source.legacy"),
            (Severity::Warning, "target.tax_id"),
        ],
        "{d:#?}"
    );

    // Without the source, the spec's own outputs are still checked.
    let d = m.check(None, Some(&names(&["id"])));
    let got: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        got,
        [
            "mapping.rename.usr_nm",
            "mapping.rename_rules[0].to",
            "mapping.fields.source_system"
        ]
    );
    assert!(d.iter().all(|d| d.severity == Severity::Error));
}

#[test]
fn check_flags_collisions_and_unsatisfiable_required_fields_as_errors() {
    let m = mapping(
        r#"
rename_rules:
  - { pattern: "usr_?name|username", to: user_name }
  - { pattern: "crm_(.+)", to: "$1" }
fields:
  id: { required: true }
"#,
    );
    let d = m.check(
        Some(&names(&["usr_name", "username", "crm_x"])),
        Some(&names(&["user_name"])),
    );
    let got: Vec<(Severity, &str)> = d.iter().map(|d| (d.severity, d.path.as_str())).collect();
    assert_eq!(
        got,
        [
            (Severity::Error, "mapping.fields.id"),
            (Severity::Error, "mapping.rename_rules[0]"),
            (Severity::Error, "mapping.rename_rules[1]"),
            (Severity::Error, "mapping.fields.id"),
        ],
        "{d:#?}"
    );
    assert!(
        d[0].message.contains("the target has no field `id`"),
        "{}",
        d[0]
    );
    assert!(d[1].message.contains("both map to `user_name`"), "{}", d[1]);
    assert!(d[2].message.contains("`crm_x` to `x`"), "{}", d[2]);
    let text: Vec<String> = d.iter().map(Diagnostic::to_string).collect();
    assert!(text[3].starts_with("error mapping.fields.id: "), "{text:?}");
}

#[test]
fn a_clean_spec_checks_clean() {
    let m = mapping(ORIGIN_RULES);
    let source = names(&["usr_name", "Email", "id"]);
    let target = names(&["user_name", "email_address", "id"]);
    assert_eq!(m.check(Some(&source), Some(&target)), []);
}

#[test]
fn priming_does_not_change_results() {
    let yaml = r#"
rename_rules:
  - { pattern: "usr_?name|username", to: user_name }
  - { pattern: "crm_(.+)", to: "$1" }
drop: [secret]
"#;
    let cold = mapping(yaml);
    let mut warm = mapping(yaml);
    warm.prime(&names(&["usr_name", "crm_owner", "secret", "other"]));
    let input = row(json!({"usr_name": 1, "crm_owner": 2, "secret": 3, "other": 4, "new": 5}));
    assert_eq!(cold.apply(&input), warm.apply(&input));
    assert_eq!(
        warm.apply(&input).expect("maps"),
        row(json!({"user_name": 1, "owner": 2, "other": 4, "new": 5}))
    );
}

#[test]
fn names_are_resolved_once_and_the_table_is_bounded() {
    use crate::mapping::REMEMBERED_NAMES;
    let m = mapping(ORIGIN_RULES);
    let known = m.remembered();
    let input = row(json!({"usr_name": 1, "Email": 2, "other": 3}));
    let expected = row(json!({"user_name": 1, "email_address": 2, "other": 3}));
    assert_eq!(m.apply(&input).expect("maps"), expected);
    assert_eq!(m.remembered(), known + 3);
    // Now from the table, with the same result; a clone starts with what is known.
    assert_eq!(m.apply(&input).expect("maps"), expected);
    assert_eq!(m.clone().remembered(), known + 3);

    // A row inventing more names than the bound fills the table to it, and maps the same.
    let invented: Row = (0..REMEMBERED_NAMES + 10)
        .map(|i| (format!("f{i}"), json!(i)))
        .collect();
    assert_eq!(m.apply(&invented).expect("maps"), invented);
    assert_eq!(m.remembered(), REMEMBERED_NAMES);
    let late = row(json!({"usr_name": 1, "late_name": 2}));
    assert_eq!(
        m.apply(&late).expect("maps"),
        row(json!({"user_name": 1, "late_name": 2}))
    );
    assert_eq!(m.remembered(), REMEMBERED_NAMES);
}

/// Mostly the names the spec below mentions, so conversions really run.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(&["a", "b", "c", "d", "e", "f", "f2", "g", "h", "i", "k", "m", "p", "q1"][..])
            .prop_map(str::to_owned),
        1 => "[a-z_.]{1,6}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        "[-+ 0-9.eE]{0,12}".prop_map(Value::from),
        // Base64, up to 30 bytes: past what a decimal holds.
        "[A-Za-z0-9+/]{0,40}={0,2}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_.]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// renames + long → string → long gives back the same values under the new names.
    #[test]
    fn renames_and_string_long_round_trip(
        values in prop::collection::btree_map("[a-z]{1,8}", any::<i64>(), 1..8),
        texts in prop::collection::btree_map("[a-z]{1,8}", "\\PC{0,16}", 0..4),
    ) {
        let forward = Mapping::compile("r", &spec(r#"rename_rules: [{ pattern: "(.+)", to: "n_$1" }]"#))
            .expect("compiles");
        let mut to_string = MappingSpec::default();
        let mut to_long = MappingSpec::default();
        for k in values.keys() {
            to_string.fields.insert(format!("n_{k}"), spec_field("string"));
            to_long.fields.insert(format!("n_{k}"), spec_field("long"));
        }
        let to_string = Mapping::compile("r", &to_string).expect("compiles");
        let to_long = Mapping::compile("r", &to_long).expect("compiles");

        let mut input: Row = values.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        for (k, t) in &texts {
            input.entry(format!("s_{k}")).or_insert_with(|| json!(t));
        }
        let renamed = forward.apply(&input).expect("renames");
        let as_text = to_string.apply(&renamed).expect("to string");
        for k in values.keys() {
            let key = format!("n_{k}");
            prop_assert!(as_text[&key].is_string(), "{} is not a string", key);
        }
        let back = to_long.apply(&as_text).expect("to long");
        for (k, v) in &values {
            prop_assert_eq!(&back[&format!("n_{k}")], &json!(v));
        }
        for (k, t) in &texts {
            prop_assert_eq!(&back[&format!("n_s_{k}")], &json!(t));
        }
        prop_assert_eq!(back.len(), input.len());
    }

    /// Whatever arrives, apply returns Ok or Err; it never panics. What it returns is in name
    /// order, each name once.
    #[test]
    fn apply_never_panics_on_arbitrary_rows(
        input in prop::collection::btree_map(arb_key(), arb_json(), 0..10),
    ) {
        let m = mapping(r#"
rename_rules: [{ pattern: "(p|q)(.*)", to: "x$2" }]
drop: [c]
fields:
  a: { type: int }
  b: { type: long, default: 0 }
  d: { type: double }
  e: { type: bool }
  f: { type: { decimal: { scale: 2, rounding: half_even } } }
  f2: { type: { decimal: { scale: 2, input: base64, input_scale: 6, rounding: half_up } } }
  g: { type: timestamp }
  h: { type: date, output: epoch_days }
  i: { type: string, pattern: "^[0-9]+$" }
  j: { from: k.l, type: timestamp, input: { unit: epoch_nanos }, output: epoch_nanos }
  m: { type: timestamp, input: { formats: ["%Y-%m-%d %H:%M", "%s"], timezone: Europe/London } }
"#);
        let input: Row = input.into_iter().collect();
        let _ = m.apply(&input);
        // What the encoders rely on: the fields in strictly increasing name order.
        if let Ok(fields) = m.apply_sorted(input) {
            prop_assert!(fields.windows(2).all(|w| w[0].0 < w[1].0), "{:?}", fields);
        }
    }
}

fn spec_field(ty: &str) -> crate::FieldSpec {
    crate::FieldSpec {
        ty: Some(crate::TypeSpec::Named(ty.to_owned())),
        ..crate::FieldSpec::default()
    }
}

#[test]
fn a_mapping_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + Clone>() {}
    shareable::<Mapping>();
}

#[test]
fn duplicate_field_keys_in_yaml_are_refused() {
    let parsed =
        serde_yaml::from_str::<MappingSpec>("fields: { a: { type: long }, a: { type: int } }");
    assert!(parsed.is_err(), "{parsed:?}");
}
