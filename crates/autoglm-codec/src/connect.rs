//! Kafka Connect JSON (`{"schema": …, "payload": …}`): unwrap the payload and, guided by the Connect
//! schema, turn `org.apache.kafka.connect.data.Decimal` (base64 bytes) and
//! `io.debezium.data.VariableScaleDecimal` into decimal strings.

use base64::Engine as _;
use num_bigint::BigInt;
use serde_json::Value as Json;

use crate::avro_json::format_decimal;

const DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";
const VARIABLE_SCALE_DECIMAL: &str = "io.debezium.data.VariableScaleDecimal";

/// If `value` is a Connect `schema`/`payload` wrapper, the converted payload; otherwise `value`.
pub(crate) fn unwrap(value: Json) -> Json {
    match value {
        Json::Object(mut map)
            if map.len() == 2 && map.contains_key("schema") && map.contains_key("payload") =>
        {
            let payload = map.remove("payload").unwrap_or(Json::Null);
            let schema = map.remove("schema").unwrap_or(Json::Null);
            convert(payload, &schema)
        }
        other => other,
    }
}

fn convert(value: Json, schema: &Json) -> Json {
    match schema.get("name").and_then(Json::as_str) {
        Some(DECIMAL) => {
            let scale = schema
                .pointer("/parameters/scale")
                .and_then(Json::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            return decimal_from_base64(&value, scale).unwrap_or(value);
        }
        Some(VARIABLE_SCALE_DECIMAL) => {
            let scale = value.get("scale").and_then(Json::as_u64);
            let bytes = value.get("value");
            if let (Some(scale), Some(bytes)) = (scale, bytes)
                && let Some(d) = usize::try_from(scale)
                    .ok()
                    .and_then(|scale| decimal_from_base64(bytes, scale))
            {
                return d;
            }
            return value;
        }
        _ => {}
    }
    match (value, schema.get("type").and_then(Json::as_str)) {
        (Json::Object(mut map), Some("struct")) => {
            if let Some(fields) = schema.get("fields").and_then(Json::as_array) {
                for field in fields {
                    let Some(name) = field.get("field").and_then(Json::as_str) else {
                        continue;
                    };
                    if let Some(v) = map.get_mut(name) {
                        *v = convert(v.take(), field);
                    }
                }
            }
            Json::Object(map)
        }
        (Json::Array(items), Some("array")) => match schema.get("items") {
            Some(item_schema) => {
                Json::Array(items.into_iter().map(|v| convert(v, item_schema)).collect())
            }
            None => Json::Array(items),
        },
        (other, _) => other,
    }
}

fn decimal_from_base64(value: &Json, scale: usize) -> Option<Json> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str()?)
        .ok()?;
    let unscaled = BigInt::from_signed_bytes_be(&bytes);
    Some(Json::String(format_decimal(&unscaled, scale)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn connect_decimals_become_strings() {
        let wrapped = json!({
            "schema": {"type": "struct", "fields": [
                {"type": "struct", "field": "after", "optional": true, "fields": [
                    {"type": "int64", "field": "id"},
                    {"type": "bytes", "field": "credit", "name": DECIMAL,
                     "parameters": {"scale": "2"}}
                ]}
            ]},
            "payload": {"after": {"id": 1, "credit": "MDk="}}
        });
        assert_eq!(
            unwrap(wrapped),
            json!({"after": {"id": 1, "credit": "123.45"}})
        );
    }

    #[test]
    fn plain_json_is_left_alone() {
        let plain = json!({"after": {"id": 1}, "op": "c"});
        assert_eq!(unwrap(plain.clone()), plain);
    }
}
