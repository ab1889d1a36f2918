// Customer 4242's CRM row as `autoglm-bench`'s workload writes it, and as the decoder gives it
// back from Avro: decimals as strings of their scale, the date in epoch days, the timestamps in
// ms and the micro-timestamp in µs. The codec and mapping benchmarks both `include!` this file,
// so that they measure the same record.

/// 2026-11-25T09:46:40Z in ms: the rows' "now".
const T0_MS: i64 = 1_795_600_000_000;

/// Customer 4242's row at `version`. (Qualified paths: the including files import different
/// names.)
#[allow(unused_qualifications)]
fn customer_row(version: i64) -> serde_json::Value {
    serde_json::json!({
        "id": 4242, "usr_name": "customer 0004242 of the east region",
        "Email": "customer.4242@example.com", "phone": "+86 138 0000 4242",
        "tax_id": "91310000MA1F004242", "credit_limit": "5242.42",
        "balance": format!("{}.{:02}", 4242 * 37 + version * 101, version),
        "discount_rate": "0.4249", "city": "Shanghai",
        "password_hash": "$2b$12$KIXQ4vGQ0e3a5f1c9b7d2e8f4a6c0b1d3e5f7a9c2b4d6e8f0a1c3e5b7d9f1a",
        "region": "cn-east", "birth_date": 7892, "created_at": T0_MS - 86_400_000 * 242,
        "updated_at": T0_MS + version * 60_000,
        "last_login_at": (T0_MS + version * 60_000 - 5_000) * 1000, "version": version
    })
}
