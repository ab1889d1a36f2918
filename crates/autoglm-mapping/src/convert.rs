//! Type conversions of single JSON values; the crate docs' `# Types` table says what each type
//! accepts and writes. Every function returns a reason instead of panicking.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use chrono::NaiveTime;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Number, Value};

use crate::spec::{DecimalInput, DecimalSpec, Rounding};
use crate::time::{TimeInput, TimeOutput, kind, truncate};

/// A compiled target type.
#[derive(Debug, Clone)]
pub(crate) enum Conversion {
    String,
    Int,
    Long,
    Double,
    Decimal(DecimalSpec),
    Bool,
    Timestamp(TimeInput, TimeOutput),
    Date(TimeInput, TimeOutput),
}

impl Conversion {
    /// The type's name, for messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Conversion::String => "string",
            Conversion::Int => "int",
            Conversion::Long => "long",
            Conversion::Double => "double",
            Conversion::Decimal(_) => "decimal",
            Conversion::Bool => "bool",
            Conversion::Timestamp(..) => "timestamp",
            Conversion::Date(..) => "date",
        }
    }

    /// Whether converting `value` gives it back unchanged, so that it can be moved, not
    /// converted. Only strings are worth moving: every other value is a copy either way. A
    /// decimal string already in its output form is one: Avro decimals decode to strings of
    /// their writer's scale, which is most often the target's. A string read as base64 bytes is
    /// never one: it must be decoded (`"1234"` is valid base64 as well as a decimal).
    pub(crate) fn is_identity(&self, value: &Value) -> bool {
        match (self, value) {
            (Conversion::String, Value::String(_)) => true,
            (Conversion::Decimal(spec), Value::String(s)) => {
                spec.input == DecimalInput::Text && is_canonical_decimal(s, *spec)
            }
            _ => false,
        }
    }

    /// Converts one non-null value (`null` stays `null`).
    pub(crate) fn apply(&self, value: &Value) -> Result<Value, String> {
        if value.is_null() {
            return Ok(Value::Null);
        }
        self.convert(value)
    }

    #[cfg(test)]
    fn run(&self, value: Value) -> Result<Value, String> {
        self.apply(&value)
    }

    fn convert(&self, value: &Value) -> Result<Value, String> {
        match self {
            Conversion::String => Ok(to_string(value)),
            Conversion::Int => {
                let n = to_i64(value, "int")?;
                i32::try_from(n)
                    .map(Value::from)
                    .map_err(|_| format!("{n} is outside the int range (32 bits)"))
            }
            Conversion::Long => to_i64(value, "long").map(Value::from),
            Conversion::Double => to_f64(value).and_then(|f| {
                Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{f} is not a finite number"))
            }),
            Conversion::Decimal(spec) => to_decimal(value, *spec),
            Conversion::Bool => to_bool(value).map(Value::Bool),
            Conversion::Timestamp(input, output) => output.render(input.timestamp(value)?, false),
            Conversion::Date(input, output) => {
                let d = input.date(value)?;
                output.render(d.and_time(NaiveTime::MIN).and_utc(), true)
            }
        }
    }
}

fn to_string(value: &Value) -> Value {
    match value {
        Value::String(_) => value.clone(),
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(if *b { "true" } else { "false" }.to_owned()),
        other => Value::String(other.to_string()),
    }
}

fn not_convertible(value: &Value, to: &str) -> String {
    format!("a {} cannot be converted to {to}", kind(value))
}

fn to_i64(value: &Value, to: &str) -> Result<i64, String> {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else if n.is_u64() {
                Err(format!("{n} is outside the {to} range"))
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() != 0.0 {
                    Err(format!("{n} has a fractional part"))
                } else if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) {
                    Ok(f as i64)
                } else {
                    Err(format!("{n} is outside the {to} range"))
                }
            }
        }
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|e| format!("`{}` is not an integer ({e})", truncate(s, 40))),
        Value::Bool(b) => Ok(i64::from(*b)),
        other => Err(not_convertible(other, to)),
    }
}

fn to_f64(value: &Value) -> Result<f64, String> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("{n} is not representable as a double")),
        Value::String(s) => {
            let t = s.trim();
            // `f64::from_str` also takes `inf` and `NaN`, which JSON cannot carry.
            match t.parse::<f64>() {
                Ok(f) if f.is_finite() && t.bytes().any(|b| b.is_ascii_digit()) => Ok(f),
                _ => Err(format!("`{}` is not a number", truncate(s, 40))),
            }
        }
        Value::Bool(b) => Ok(f64::from(u8::from(*b))),
        other => Err(not_convertible(other, "double")),
    }
}

fn parse_decimal(text: &str) -> Result<Decimal, String> {
    let t = text.trim();
    let well_formed = !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
        && t.bytes().any(|b| b.is_ascii_digit());
    if !well_formed {
        return Err(format!("`{}` is not a decimal number", truncate(text, 40)));
    }
    let parsed = if t.contains(['e', 'E']) {
        Decimal::from_scientific(t)
    } else {
        Decimal::from_str_exact(t)
    };
    parsed.map_err(|e| {
        format!(
            "`{}` is not a representable decimal ({e})",
            truncate(text, 40)
        )
    })
}

/// Whether `text` is what [`to_decimal`] writes for itself under `spec`: an optional `-` (not
/// before zero), the integer digits without leading zeros, and exactly `scale` fractional
/// digits, all within the 28 digits a decimal carries and within `precision`. Checked without
/// parsing it into a number.
fn is_canonical_decimal(text: &str, spec: DecimalSpec) -> bool {
    let scale = spec.scale as usize;
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = match unsigned.split_once('.') {
        Some((int, frac)) if scale > 0 => (int, frac),
        None if scale == 0 => (unsigned, ""),
        _ => return false,
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.len() != scale || (scale > 0 && !digits(frac)) {
        return false;
    }
    if int.len() > 1 && int.starts_with('0') {
        return false;
    }
    // The digits of the unscaled integer, without its leading zeros (none for zero).
    let int = int.trim_start_matches('0');
    let mantissa = if int.is_empty() {
        frac.trim_start_matches('0').len()
    } else {
        int.len() + frac.len()
    };
    if text.starts_with('-') && mantissa == 0 {
        return false;
    }
    int.len() + frac.len() <= 28 && spec.precision.is_none_or(|p| mantissa.max(1) <= p as usize)
}

/// Standard base64 (`+/`), padded as Debezium writes it or not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Reads a Kafka Connect `Decimal`: `text` is base64 of the unscaled value as a big-endian two's
/// complement integer (no bytes is zero), taken at `scale`.
fn decode_base64_decimal(text: &str, scale: u32) -> Result<Decimal, String> {
    let bytes = BASE64.decode(text.trim()).map_err(|e| {
        format!(
            "`{}` is not base64 (expected Kafka Connect Decimal bytes in base64, as `input: base64` says): {e}",
            truncate(text, 40)
        )
    })?;
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let sign = if negative { 0xFF } else { 0x00 };
    // Sign-extension bytes carry nothing: drop them, keeping the byte that holds the sign.
    let redundant = bytes
        .windows(2)
        .take_while(|w| w[0] == sign && (w[1] & 0x80 != 0) == negative)
        .count();
    let bytes = &bytes[redundant..];
    let too_big = || {
        format!(
            "`{}` holds an integer of {} bytes, beyond the 28 digits (96 bits) a decimal carries",
            truncate(text, 40),
            bytes.len()
        )
    };
    if bytes.len() > 16 {
        return Err(too_big());
    }
    let mut be = [sign; 16];
    be[16 - bytes.len()..].copy_from_slice(bytes);
    let unscaled = i128::from_be_bytes(be);
    if unscaled.unsigned_abs() >= 1 << 96 {
        return Err(too_big());
    }
    Decimal::try_from_i128_with_scale(unscaled, scale).map_err(|e| {
        format!(
            "`{}` holds {unscaled} at scale {scale}, not a representable decimal ({e})",
            truncate(text, 40)
        )
    })
}

fn to_decimal(value: &Value, spec: DecimalSpec) -> Result<Value, String> {
    let d = match (value, spec.input) {
        (Value::String(s), DecimalInput::Text) => parse_decimal(s)?,
        (Value::String(s), DecimalInput::Base64) => {
            decode_base64_decimal(s, spec.input_scale.unwrap_or(spec.scale))?
        }
        (Value::Number(n), _) => parse_decimal(&n.to_string())?,
        (other, _) => return Err(not_convertible(other, "decimal")),
    };
    let scale = spec.scale;
    let mut r = match spec.rounding {
        Rounding::Reject => {
            let cut = d.round_dp_with_strategy(scale, RoundingStrategy::ToZero);
            if cut != d {
                return Err(format!(
                    "{d} has more than {scale} fractional digits (rounding: reject)"
                ));
            }
            cut
        }
        Rounding::HalfEven => {
            d.round_dp_with_strategy(scale, RoundingStrategy::MidpointNearestEven)
        }
        Rounding::HalfUp => d.round_dp_with_strategy(scale, RoundingStrategy::MidpointAwayFromZero),
    };
    r.rescale(scale);
    if r.scale() != scale {
        return Err(format!(
            "{d} has too many digits to carry {scale} fractional digits"
        ));
    }
    if r.is_zero() {
        r.set_sign_positive(true);
    }
    if let Some(precision) = spec.precision {
        let digits = r
            .mantissa()
            .unsigned_abs()
            .checked_ilog10()
            .map_or(1, |l| l + 1);
        if digits > precision {
            return Err(format!(
                "{r} needs {digits} digits, more than precision {precision}"
            ));
        }
    }
    Ok(Value::String(r.to_string()))
}

fn to_bool(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Ok(true),
            Some(0.0) => Ok(false),
            _ => Err(format!("{n} is not a boolean (only 1 and 0 are)")),
        },
        Value::String(s) => {
            let t = s.trim();
            const TRUE: [&str; 6] = ["true", "t", "yes", "y", "on", "1"];
            const FALSE: [&str; 6] = ["false", "f", "no", "n", "off", "0"];
            if TRUE.iter().any(|w| t.eq_ignore_ascii_case(w)) {
                Ok(true)
            } else if FALSE.iter().any(|w| t.eq_ignore_ascii_case(w)) {
                Ok(false)
            } else {
                Err(format!(
                    "`{}` is not a boolean (true/false, yes/no, y/n, t/f, on/off, 1/0)",
                    truncate(s, 40)
                ))
            }
        }
        other => Err(not_convertible(other, "bool")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dec(scale: u32, rounding: Rounding) -> Conversion {
        Conversion::Decimal(DecimalSpec {
            scale,
            precision: None,
            rounding,
            input: DecimalInput::Text,
            input_scale: None,
        })
    }

    fn b64(scale: u32, input_scale: Option<u32>, rounding: Rounding) -> Conversion {
        Conversion::Decimal(DecimalSpec {
            scale,
            precision: None,
            rounding,
            input: DecimalInput::Base64,
            input_scale,
        })
    }

    #[test]
    fn strings_become_numbers_and_back() {
        assert_eq!(Conversion::Long.run(json!(" 42 ")), Ok(json!(42)));
        assert_eq!(
            Conversion::Long.run(json!("-9223372036854775808")),
            Ok(json!(i64::MIN))
        );
        assert_eq!(
            Conversion::Int.run(json!("2147483647")),
            Ok(json!(i32::MAX))
        );
        assert_eq!(Conversion::Double.run(json!("1234.50")), Ok(json!(1234.5)));
        assert_eq!(Conversion::String.run(json!(42)), Ok(json!("42")));
        assert_eq!(Conversion::String.run(json!(-1.5)), Ok(json!("-1.5")));
        assert_eq!(Conversion::String.run(json!(true)), Ok(json!("true")));
        assert_eq!(
            Conversion::String.run(json!({"a": [1]})),
            Ok(json!(r#"{"a":[1]}"#))
        );
        assert_eq!(Conversion::String.run(json!("same")), Ok(json!("same")));
    }

    #[test]
    fn numbers_convert_between_widths_with_range_checks() {
        assert_eq!(Conversion::Long.run(json!(3.0)), Ok(json!(3)));
        assert_eq!(Conversion::Double.run(json!(3)), Ok(json!(3.0)));
        assert_eq!(Conversion::Long.run(json!(true)), Ok(json!(1)));
        let too_big = Conversion::Int
            .run(json!(2_147_483_648_i64))
            .expect_err("range");
        assert!(too_big.contains("int range"), "{too_big}");
        assert!(Conversion::Long.run(json!(u64::MAX)).is_err());
        assert!(Conversion::Long.run(json!(1e300)).is_err());
        assert!(
            Conversion::Long
                .run(json!(2.5))
                .expect_err("fraction")
                .contains("fractional")
        );
    }

    #[test]
    fn unparsable_numbers_say_why_instead_of_crashing() {
        // The origin document's `Integer.parseInt("123a")` case.
        let e = Conversion::Int
            .run(json!("123a"))
            .expect_err("not a number");
        assert!(e.contains("`123a` is not an integer"), "{e}");
        for bad in ["abc", "", "NaN", "inf", "-infinity", "1,5"] {
            assert!(Conversion::Double.run(json!(bad)).is_err(), "{bad}");
        }
        assert!(
            Conversion::Long
                .run(json!([1]))
                .expect_err("array")
                .contains("array")
        );
    }

    #[test]
    fn decimals_get_exactly_the_scale() {
        let d2 = dec(2, Rounding::Reject);
        assert_eq!(d2.run(json!("1234.5")), Ok(json!("1234.50")));
        assert_eq!(d2.run(json!("1234.500")), Ok(json!("1234.50")));
        assert_eq!(d2.run(json!(7)), Ok(json!("7.00")));
        assert_eq!(d2.run(json!(0.1)), Ok(json!("0.10")));
        assert_eq!(d2.run(json!("-1.5e3")), Ok(json!("-1500.00")));
        assert_eq!(d2.run(json!("-0.00")), Ok(json!("0.00")));
        let e = d2.run(json!("1234.505")).expect_err("reject");
        assert!(e.contains("rounding: reject"), "{e}");
        assert!(d2.run(json!("12a")).is_err());
        assert!(d2.run(json!("1_000")).is_err());
        assert!(d2.run(json!(true)).is_err());
    }

    #[test]
    fn decimal_rounding_modes_differ_only_at_midpoints() {
        let even = dec(2, Rounding::HalfEven);
        let up = dec(2, Rounding::HalfUp);
        assert_eq!(even.run(json!("2.345")), Ok(json!("2.34")));
        assert_eq!(up.run(json!("2.345")), Ok(json!("2.35")));
        assert_eq!(even.run(json!("2.355")), Ok(json!("2.36")));
        assert_eq!(even.run(json!("-2.345")), Ok(json!("-2.34")));
        assert_eq!(up.run(json!("-2.345")), Ok(json!("-2.35")));
        assert_eq!(even.run(json!("2.3449")), Ok(json!("2.34")));
    }

    #[test]
    fn decimal_precision_and_range_limits_are_errors() {
        let p5 = Conversion::Decimal(DecimalSpec {
            scale: 2,
            precision: Some(5),
            rounding: Rounding::Reject,
            input: DecimalInput::Text,
            input_scale: None,
        });
        assert_eq!(p5.run(json!("999.99")), Ok(json!("999.99")));
        assert!(
            p5.run(json!("1000"))
                .expect_err("precision")
                .contains("precision 5")
        );
        let d20 = dec(20, Rounding::Reject);
        assert!(
            d20.run(json!("123456789012")).is_err(),
            "28 digits is the limit"
        );
    }

    #[test]
    fn decimals_already_in_output_form_are_moved_not_converted() {
        let d2 = dec(2, Rounding::Reject);
        for same in ["5242.42", "-1.50", "0.00", "0.07", "-0.07"] {
            assert!(d2.is_identity(&json!(same)), "{same}");
            assert_eq!(d2.run(json!(same)), Ok(json!(same)));
        }
        // Each of these converts to something else, or fails.
        for other in [
            "5242.4", "5242.420", "05.00", "-0.00", "+1.00", "1.", ".50", "1e2", " 1.00", "1,00",
        ] {
            assert!(!d2.is_identity(&json!(other)), "{other}");
        }
        assert!(!d2.is_identity(&json!(5)), "numbers are converted");
        assert!(dec(0, Rounding::Reject).is_identity(&json!("42")));
        assert!(!dec(0, Rounding::Reject).is_identity(&json!("42.0")));
        let p5 = Conversion::Decimal(DecimalSpec {
            scale: 2,
            precision: Some(5),
            rounding: Rounding::Reject,
            input: DecimalInput::Text,
            input_scale: None,
        });
        assert!(p5.is_identity(&json!("999.99")));
        assert!(
            !p5.is_identity(&json!("1000.00")),
            "over precision: an error"
        );
    }

    proptest::proptest! {
        /// A decimal taken as already converted converts to itself: moving it changes nothing.
        #[test]
        fn decimals_taken_as_converted_convert_to_themselves(
            minus in proptest::bool::ANY,
            int in "[0-9]{1,31}",
            frac in "(\\.[0-9]{0,31})?",
            // Mostly the scale the text has (`None`), so that most texts are taken as converted.
            other_scale in proptest::option::weighted(0.2, 0_u32..31),
            precision in proptest::option::of(1_u32..32),
        ) {
            let text = format!("{}{int}{frac}", if minus { "-" } else { "" });
            let scale = other_scale.unwrap_or(frac.len().saturating_sub(1) as u32);
            let spec = DecimalSpec {
                scale,
                precision,
                rounding: Rounding::Reject,
                input: DecimalInput::Text,
                input_scale: None,
            };
            let value = json!(text);
            if Conversion::Decimal(spec).is_identity(&value) {
                proptest::prop_assert_eq!(to_decimal(&value, spec), Ok(value));
            }
        }
    }

    /// The minimal big-endian two's complement bytes of `n`, as Java's
    /// `BigInteger.toByteArray()` (and so Kafka Connect's `Decimal`) writes them.
    fn twos_complement(n: i64) -> Vec<u8> {
        let be = n.to_be_bytes();
        let sign = if n < 0 { 0xFF } else { 0x00 };
        let skip = be
            .windows(2)
            .take_while(|w| w[0] == sign && (w[1] & 0x80 != 0) == (n < 0))
            .count();
        be[skip..].to_vec()
    }

    fn base64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn base64_decimals_are_read_as_connect_decimal_bytes() {
        let d2 = b64(2, None, Rounding::Reject);
        // 0x5D 0xE3 0x12 = 6152978.
        assert_eq!(base64(&[0x5D, 0xE3, 0x12]), "XeMS");
        assert_eq!(d2.run(json!("XeMS")), Ok(json!("61529.78")));
        // A scale-4 column written into a scale-6 target gains zeros.
        assert_eq!(
            b64(6, Some(4), Rounding::Reject).run(json!("XeMS")),
            Ok(json!("615.297800"))
        );
        assert_eq!(
            b64(0, Some(0), Rounding::Reject).run(json!("XeMS")),
            Ok(json!("6152978"))
        );
        // The byte with the sign bit is kept: 0x00 0x80 is +128.
        assert_eq!(d2.run(json!(base64(&[0x00, 0x80]))), Ok(json!("1.28")));
        assert_eq!(d2.run(json!(base64(&[0x7F]))), Ok(json!("1.27")));
        // The largest 96-bit mantissa fits.
        let d0 = b64(0, None, Rounding::Reject);
        let mut max = vec![0x00];
        max.extend([0xFF; 12]);
        assert_eq!(
            d0.run(json!(base64(&max))),
            Ok(json!("79228162514264337593543950335"))
        );
        assert_eq!(
            d0.run(json!(base64(&max[1..]))),
            Ok(json!("-1")),
            "twelve 0xFF bytes are -1"
        );
    }

    #[test]
    fn negative_base64_decimals_are_twos_complement() {
        let d2 = b64(2, None, Rounding::Reject);
        // 0xFF 0x38 = -200.
        assert_eq!(d2.run(json!(base64(&[0xFF, 0x38]))), Ok(json!("-2.00")));
        assert_eq!(d2.run(json!(base64(&[0xFF]))), Ok(json!("-0.01")));
        assert_eq!(d2.run(json!(base64(&[0x80]))), Ok(json!("-1.28")));
        // Redundant sign-extension bytes change nothing.
        assert_eq!(
            d2.run(json!(base64(&[0xFF, 0xFF, 0xFF, 0x38]))),
            Ok(json!("-2.00"))
        );
        assert_eq!(
            d2.run(json!(base64(&[0xFF; 20]))),
            Ok(json!("-0.01")),
            "sign extension is not size"
        );
    }

    #[test]
    fn base64_zero_is_empty_bytes_or_a_zero_byte() {
        let d2 = b64(2, None, Rounding::Reject);
        for zero in ["", "AA==", "AA", "AAAA"] {
            assert_eq!(d2.run(json!(zero)), Ok(json!("0.00")), "{zero:?}");
        }
    }

    #[test]
    fn base64_padding_is_optional() {
        let d2 = b64(2, None, Rounding::Reject);
        // 0x30 0x39 = 12345.
        assert_eq!(d2.run(json!("MDk=")), Ok(json!("123.45")));
        assert_eq!(d2.run(json!("MDk")), Ok(json!("123.45")));
    }

    #[test]
    fn base64_input_scale_rounds_into_the_target_scale() {
        // 0x5D 0xE3 0x12 = 6152978 at scale 4 is 615.2978.
        let reject = b64(2, Some(4), Rounding::Reject);
        let e = reject.run(json!("XeMS")).expect_err("digits dropped");
        assert!(
            e.contains("615.2978 has more than 2 fractional digits"),
            "{e}"
        );
        assert!(e.contains("rounding: reject"), "{e}");
        // Zero digits dropped are no loss. 61500 = 0x00 0xF0 0x3C.
        assert_eq!(
            reject.run(json!(base64(&[0x00, 0xF0, 0x3C]))),
            Ok(json!("6.15"))
        );
        let even = b64(2, Some(4), Rounding::HalfEven);
        assert_eq!(even.run(json!("XeMS")), Ok(json!("615.30")));
        // 61250 at scale 4 is 6.1250: a midpoint, to even. 0x00 0xEF 0x42.
        assert_eq!(
            even.run(json!(base64(&[0x00, 0xEF, 0x42]))),
            Ok(json!("6.12"))
        );
        assert_eq!(
            b64(2, Some(4), Rounding::HalfUp).run(json!(base64(&[0x00, 0xEF, 0x42]))),
            Ok(json!("6.13"))
        );
        let p5 = Conversion::Decimal(DecimalSpec {
            scale: 2,
            precision: Some(5),
            rounding: Rounding::HalfEven,
            input: DecimalInput::Base64,
            input_scale: Some(4),
        });
        assert_eq!(p5.run(json!("XeMS")), Ok(json!("615.30")));
        let e = p5
            .run(json!(base64(&twos_complement(1_000_000_000))))
            .expect_err("precision");
        assert!(e.contains("precision 5"), "{e}");
    }

    #[test]
    fn invalid_base64_says_what_was_expected() {
        let d2 = b64(2, None, Rounding::Reject);
        let e = d2.run(json!("12.50")).expect_err("not base64");
        assert!(e.starts_with("`12.50` is not base64"), "{e}");
        assert!(
            e.contains("expected Kafka Connect Decimal bytes in base64"),
            "{e}"
        );
        let long = format!("{}!", "A".repeat(100));
        let e = d2.run(json!(long)).expect_err("not base64");
        assert!(e.starts_with(&format!("`{}…`", "A".repeat(40))), "{e}");
        assert!(d2.run(json!("XeMSX")).is_err(), "a dangling base64 digit");
        assert!(d2.run(json!("XeMS=")).is_err(), "bad padding");
        assert!(
            d2.run(json!("Xe-S")).is_err(),
            "the URL-safe alphabet is not Connect's"
        );
        assert!(d2.run(json!(true)).is_err());
    }

    #[test]
    fn base64_values_beyond_a_decimal_are_errors() {
        let d0 = b64(0, None, Rounding::Reject);
        // 17 bytes.
        let mut big = vec![0x01];
        big.extend([0x00; 16]);
        let e = d0.run(json!(base64(&big))).expect_err("17 bytes");
        assert!(e.contains("integer of 17 bytes"), "{e}");
        assert!(e.contains("28 digits"), "{e}");
        // 16 bytes, but past 96 bits: 2^96.
        let mut over = [0x00; 16];
        over[3] = 0x01;
        let e = d0.run(json!(base64(&over))).expect_err("2^96");
        assert!(e.contains("28 digits"), "{e}");
        // -2^96 too.
        let mut under = [0xFF; 13];
        under[1..].fill(0x00);
        let e = d0.run(json!(base64(&under))).expect_err("-2^96");
        assert!(e.contains("28 digits"), "{e}");
        // Within 96 bits but not within the target scale: an error of the text path's kind.
        let e = b64(20, Some(0), Rounding::Reject)
            .run(json!(base64(&twos_complement(123_456_789_012))))
            .expect_err("too many digits");
        assert!(e.contains("too many digits"), "{e}");
    }

    #[test]
    fn base64_decimals_still_read_json_numbers_as_numbers() {
        // decimal.handling.mode=double: the value itself, whatever input_scale says.
        let d2 = b64(2, Some(4), Rounding::Reject);
        assert_eq!(d2.run(json!(1234.5)), Ok(json!("1234.50")));
        assert_eq!(d2.run(json!(7)), Ok(json!("7.00")));
        assert!(
            d2.run(json!(1.234)).is_err(),
            "rounding: reject still holds"
        );
        assert_eq!(d2.run(Value::Null), Ok(Value::Null));
    }

    #[test]
    fn base64_strings_are_never_taken_as_converted() {
        let d2 = b64(2, None, Rounding::Reject);
        let d0 = b64(0, None, Rounding::Reject);
        // Canonical decimals for the text path, and valid base64 too.
        assert!(dec(0, Rounding::Reject).is_identity(&json!("1234")));
        assert!(!d0.is_identity(&json!("1234")));
        assert_eq!(
            d0.run(json!("1234")),
            Ok(json!("-2658824")),
            "0xD7 0x6D 0xF8"
        );
        assert!(!d2.is_identity(&json!("12.34")));
        assert!(!d2.is_identity(&json!("XeMS")));
    }

    proptest::proptest! {
        /// A base64 Connect decimal converts exactly as the same decimal written as text.
        #[test]
        fn base64_decimals_convert_like_the_same_text(
            mantissa in proptest::num::i64::ANY,
            input_scale in 0_u32..=28,
            scale in 0_u32..=28,
            rounding in proptest::sample::select(vec![
                Rounding::Reject, Rounding::HalfEven, Rounding::HalfUp,
            ]),
            sign_bytes in 0_usize..3,
            padded in proptest::bool::ANY,
        ) {
            let mut bytes = vec![if mantissa < 0 { 0xFF } else { 0x00 }; sign_bytes];
            bytes.extend(twos_complement(mantissa));
            let mut encoded = base64(&bytes);
            if !padded {
                encoded = encoded.trim_end_matches('=').to_owned();
            }
            let text = Decimal::new(mantissa, input_scale).to_string();
            let from_base64 = b64(scale, Some(input_scale), rounding).run(json!(encoded));
            let from_text = dec(scale, rounding).run(json!(text));
            proptest::prop_assert_eq!(from_base64, from_text);
        }
    }

    #[test]
    fn decimal_strings_convert_to_other_numbers() {
        assert_eq!(Conversion::Double.run(json!("1234.50")), Ok(json!(1234.5)));
        assert!(Conversion::Long.run(json!("1234.50")).is_err());
    }

    #[test]
    fn booleans_accept_the_documented_spellings() {
        for t in [
            json!(true),
            json!(1),
            json!("TRUE"),
            json!("yes"),
            json!(" Y "),
            json!("on"),
            json!("1"),
            json!("t"),
        ] {
            assert_eq!(Conversion::Bool.run(t.clone()), Ok(json!(true)), "{t}");
        }
        for f in [
            json!(false),
            json!(0),
            json!("False"),
            json!("no"),
            json!("N"),
            json!("off"),
            json!("0"),
            json!("f"),
        ] {
            assert_eq!(Conversion::Bool.run(f.clone()), Ok(json!(false)), "{f}");
        }
        assert!(Conversion::Bool.run(json!(2)).is_err());
        assert!(Conversion::Bool.run(json!("maybe")).is_err());
        assert_eq!(Conversion::String.run(json!(false)), Ok(json!("false")));
    }

    #[test]
    fn null_stays_null_for_every_type() {
        for c in [
            Conversion::String,
            Conversion::Int,
            Conversion::Long,
            Conversion::Double,
            Conversion::Bool,
            dec(2, Rounding::Reject),
        ] {
            assert_eq!(c.run(Value::Null), Ok(Value::Null), "{}", c.name());
        }
    }
}
