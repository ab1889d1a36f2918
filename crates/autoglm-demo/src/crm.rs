//! The CRM side of the demo as a real database: the `customers` table in PostgreSQL, with the
//! origin document's optimistic lock (a `version` column every writer bumps), and the writes
//! `make demo` and the end-to-end tests make to it.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde_json::{Value as Json, json};
use tokio_postgres::{Client, NoTls};

/// The CRM table. `REPLICA IDENTITY FULL` makes PostgreSQL log the whole old row of an update or
/// a delete, so Debezium's `before` carries the `version` a delete is ordered by.
pub const CREATE_TABLE: &str = "
    CREATE TABLE customers (
        id            bigint PRIMARY KEY,
        usr_name      text NOT NULL,
        email         text,
        tax_id        text,
        credit_limit  numeric(12, 2),
        password_hash text,
        region        text,
        updated_at    timestamp(3) NOT NULL DEFAULT now(),
        version       bigint NOT NULL
    );
    ALTER TABLE customers REPLICA IDENTITY FULL;";

/// A connection to the CRM database.
#[derive(Debug)]
pub struct Crm {
    client: Client,
}

impl Crm {
    /// Connects to `url` (`postgresql://user@host:port/db`).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {url}"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "postgres connection ended");
            }
        });
        Ok(Self { client })
    }

    /// The raw client, for statements of a test's own.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Drops and creates the `customers` table.
    pub async fn recreate_table(&self) -> anyhow::Result<()> {
        self.client
            .batch_execute("DROP TABLE IF EXISTS customers;")
            .await?;
        self.client
            .batch_execute(CREATE_TABLE)
            .await
            .context("creating the customers table")
    }

    /// Drops a replication slot and a publication a connector left behind, if any.
    pub async fn drop_replication(&self, slot: &str, publication: &str) -> anyhow::Result<()> {
        self.client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE slot_name = $1 AND NOT active",
                &[&slot],
            )
            .await
            .with_context(|| format!("dropping replication slot {slot}"))?;
        self.client
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {publication}"))
            .await?;
        Ok(())
    }

    /// Inserts a customer at version 1.
    pub async fn insert(&self, id: i64, name: &str, credit: &str) -> anyhow::Result<()> {
        self.client
            .execute(
                "INSERT INTO customers
                   (id, usr_name, email, tax_id, credit_limit, password_hash, region, version)
                 VALUES ($1, $2, $3, $4, $5::text::numeric, 'x9f…', 'cn-east', 1)",
                &[
                    &id,
                    &name,
                    &format!("{name}@crm.example"),
                    &format!("91310000MA1K{id:06}"),
                    &credit,
                ],
            )
            .await
            .with_context(|| format!("inserting customer {id}"))?;
        Ok(())
    }

    /// The CRM's optimistic-locking update: it succeeds only if the row is still at `expected`,
    /// and bumps the version. Returns whether this writer won.
    pub async fn update_if(
        client: &Client,
        id: i64,
        expected: i64,
        credit: &str,
    ) -> anyhow::Result<bool> {
        let n = client
            .execute(
                "UPDATE customers SET credit_limit = $3::text::numeric, version = version + 1,
                        updated_at = now()
                 WHERE id = $1 AND version = $2",
                &[&id, &expected, &credit],
            )
            .await
            .with_context(|| format!("updating customer {id}"))?;
        Ok(n == 1)
    }

    /// The row's current version, if it exists.
    pub async fn version(&self, id: i64) -> anyhow::Result<Option<i64>> {
        let row = self
            .client
            .query_opt("SELECT version FROM customers WHERE id = $1", &[&id])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Deletes a customer.
    pub async fn delete(&self, id: i64) -> anyhow::Result<()> {
        self.client
            .execute("DELETE FROM customers WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    /// Every row, keyed by id, as JSON in the columns' text form (`credit_limit` as a decimal
    /// string, `updated_at` in epoch milliseconds).
    pub async fn rows(&self) -> anyhow::Result<BTreeMap<i64, Json>> {
        let rows = self
            .client
            .query(
                "SELECT id, usr_name, email, tax_id, credit_limit::text,
                        (extract(epoch from updated_at) * 1000)::bigint, version
                 FROM customers ORDER BY id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let id: i64 = r.get(0);
                let row = json!({
                    "id": id,
                    "user_name": r.get::<_, String>(1),
                    "email_address": r.get::<_, Option<String>>(2),
                    "tax_id": r.get::<_, Option<String>>(3),
                    "credit_limit": r.get::<_, Option<String>>(4),
                    "updated_at": r.get::<_, i64>(5),
                    "version": r.get::<_, i64>(6),
                });
                (id, row)
            })
            .collect())
    }
}

/// The rows in the table before the connector starts: Debezium's initial snapshot reads them
/// (`op=r`).
pub const SNAPSHOT_ROWS: [(i64, &str, &str); 5] = [
    (1, "zhang_wei", "50000.00"),
    (2, "li_na", "12000.50"),
    (3, "wang_fang", "880.00"),
    (4, "liu_yang", "0.00"),
    (5, "chen_jie", "250000.00"),
];

/// The demo's live changes, made after the snapshot: inserts, updates, two writers racing on
/// the same rows under the optimistic lock, and deletes. Returns a line per change, and how
/// many records Debezium writes for them (a delete writes two: the event and a tombstone).
pub async fn demo_changes(url: &str) -> anyhow::Result<(Vec<String>, i64)> {
    let crm = Crm::connect(url).await?;
    let mut notes = Vec::new();
    for (id, name, credit) in [(6, "zhao_lei", "3000.00"), (7, "sun_li", "42.42")] {
        crm.insert(id, name, credit).await?;
        notes.push(format!("insert   id {id} ({name}) at version 1"));
    }
    Crm::update_if(crm.client(), 2, 1, "15000.00").await?;
    notes.push("update   id 2: credit 12000.50 → 15000.00, version 1 → 2".to_owned());
    // Two CRM writers read the same row at the same version and both try to write it. The
    // optimistic lock lets exactly one through; the other's UPDATE matches no row.
    let (a, b) = (Crm::connect(url).await?, Crm::connect(url).await?);
    for id in [1, 3, 6] {
        let seen = crm.version(id).await?.context("row vanished")?;
        let credit_a = format!("{}.11", 1000 + id);
        let credit_b = format!("{}.22", 2000 + id);
        let (won_a, won_b) = tokio::try_join!(
            Crm::update_if(a.client(), id, seen, &credit_a),
            Crm::update_if(b.client(), id, seen, &credit_b),
        )?;
        let winner = match (won_a, won_b) {
            (true, false) => format!("writer A won ({credit_a}); B lost on version"),
            (false, true) => format!("writer B won ({credit_b}); A lost on version"),
            other => anyhow::bail!("the optimistic lock let {other:?} through on id {id}"),
        };
        notes.push(format!("race     id {id} at version {seen}: {winner}"));
    }
    Crm::update_if(crm.client(), 7, 1, "4242.00").await?;
    Crm::update_if(crm.client(), 7, 2, "4343.00").await?;
    notes.push("update   id 7 twice: version 1 → 3".to_owned());
    for id in [4, 5] {
        crm.delete(id).await?;
        notes.push(format!("delete   id {id}"));
    }
    // 2 inserts, 1 update, 3 races (one write each), 2 updates, 2 deletes (and tombstones).
    Ok((notes, 2 + 1 + 3 + 2 + 2 * 2))
}
