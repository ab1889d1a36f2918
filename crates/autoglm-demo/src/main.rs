//! `autoglm-demo`: prepares the CRM → ERP demo, makes its changes, shows the results.
//!
//! `make demo` runs the real chain: `cdc-setup` (table, snapshot rows, topics, the Debezium
//! connector), `cdc-changes` (live writes), `autoglm run`, then `compare` (the ERP topic next to
//! the table). `setup`, `produce` and `show` run the synthetic Avro stream instead.

use std::time::Duration;

use autoglm_demo::connect::{Connect, Converter, DebeziumSource};
use autoglm_demo::crm::Crm;
use autoglm_kafka::ClientSettings;
use clap::{Parser, Subcommand};
use schema_registry_converter::async_impl::schema_registry::SrSettings;

#[derive(Debug, Parser)]
#[command(name = "autoglm-demo", about = "The CRM → ERP demo of Open-AutoGLM")]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(long, env = "AUTOGLM_KAFKA_BOOTSTRAP")]
    bootstrap_servers: String,
    /// Schema Registry (Confluent API) URL.
    #[arg(long, env = "AUTOGLM_SCHEMA_REGISTRY_URL")]
    schema_registry_url: String,
    /// The CRM database.
    #[arg(
        long,
        env = "AUTOGLM_POSTGRES_URL",
        default_value = "postgresql://autoglm@127.0.0.1:35432/crm"
    )]
    postgres_url: String,
    /// The CRM database as Kafka Connect reaches it, when that differs (Connect in a container).
    #[arg(long, env = "AUTOGLM_CONNECT_POSTGRES_URL")]
    connect_postgres_url: Option<String>,
    /// Kafka Connect's REST API.
    #[arg(
        long,
        env = "AUTOGLM_CONNECT_URL",
        default_value = "http://127.0.0.1:38083"
    )]
    connect_url: String,
    #[command(subcommand)]
    command: Command,
}

/// The demo's Debezium connector, its topic prefix and the processor's group.
const CONNECTOR: &str = "crm-customers";
const TOPIC_PREFIX: &str = "crm";
const GROUP: &str = "autoglm-demo";

#[derive(Debug, Subcommand)]
enum Command {
    /// Real CDC: recreate the CRM table with its snapshot rows, the topics, and the Debezium
    /// connector (which snapshots the rows), and forget the processor's offsets.
    CdcSetup,
    /// Real CDC: insert, update (two writers racing), and delete rows in the CRM table.
    CdcChanges,
    /// Print the ERP topic's latest record per key next to `SELECT * FROM customers`; fails if
    /// they disagree.
    Compare,
    /// Synthetic stream: (re)create the demo topics and forget the demo group's offsets.
    Setup,
    /// Produce the CRM change stream to crm.customers.
    Produce,
    /// Print erp.customers and the DLQ, read `read_committed`.
    Show,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = ClientSettings::new(&cli.bootstrap_servers).with_client_id("autoglm-demo");
    let registry = SrSettings::new(cli.schema_registry_url.clone());
    match cli.command {
        Command::CdcSetup => cdc_setup(&cli, &settings).await?,
        Command::CdcChanges => {
            println!("\nlive changes to the CRM table:");
            let (notes, records) = autoglm_demo::crm::demo_changes(&cli.postgres_url).await?;
            for note in notes {
                println!("  {note}");
            }
            let topic = source(&cli).topic();
            let snapshot = autoglm_demo::crm::SNAPSHOT_ROWS.len() as i64;
            let total = autoglm_demo::wait_for_records(
                &settings,
                &topic,
                snapshot + records,
                Duration::from_secs(60),
            )
            .await?;
            println!("Debezium captured them: {total} records in {topic}");
        }
        Command::Compare => compare(&cli, &settings, registry).await?,
        Command::Setup => {
            autoglm_demo::delete_group(&settings, "autoglm-demo").await?;
            autoglm_demo::recreate_topics(
                &settings,
                &[
                    "crm.customers",
                    "erp.customers",
                    "crm.customers.dlq",
                    "autoglm-demo-customers-changelog",
                ],
                3,
            )
            .await?;
            println!("demo topics ready: crm.customers → erp.customers (DLQ crm.customers.dlq)");
        }
        Command::Produce => {
            let records = autoglm_demo::scenario();
            autoglm_demo::produce(&settings, registry, "crm.customers", &records).await?;
            println!(
                "produced {} CRM change events to crm.customers:",
                records.len()
            );
            for r in &records {
                println!("  key {:<10} {}", r.key.to_string(), r.note);
            }
        }
        Command::Show => {
            let quiet = Duration::from_secs(3);
            let aligned = autoglm_demo::read_committed(
                &settings,
                Some(registry.clone()),
                "erp.customers",
                quiet,
            )
            .await?;
            println!(
                "\nerp.customers (read_committed): {} records",
                aligned.len()
            );
            for r in &aligned {
                let value = r
                    .value
                    .as_ref()
                    .map_or("<tombstone: deleted>".to_owned(), ToString::to_string);
                println!(
                    "  p{} @{:<3} key {:<3} v{:<7} op {}  {value}",
                    r.partition,
                    r.offset,
                    r.key,
                    r.headers.get("autoglm.version").map_or("", String::as_str),
                    r.headers.get("autoglm.op").map_or("", String::as_str),
                );
            }
            let dead =
                autoglm_demo::read_committed(&settings, None, "crm.customers.dlq", quiet).await?;
            println!(
                "\ncrm.customers.dlq (read_committed): {} records",
                dead.len()
            );
            for r in &dead {
                println!("  key {}:", r.key);
                for (k, v) in r.headers.iter().filter(|(k, _)| k.starts_with("autoglm.")) {
                    println!("      {k} = {v}");
                }
            }
        }
    }
    Ok(())
}

fn source(cli: &Cli) -> DebeziumSource {
    DebeziumSource {
        postgres_url: cli
            .connect_postgres_url
            .clone()
            .unwrap_or_else(|| cli.postgres_url.clone()),
        topic_prefix: TOPIC_PREFIX.to_owned(),
        converter: Converter::JsonWithSchema,
        decimal_handling_mode: "precise",
        time_precision_mode: "adaptive",
        registry_v2_url: cli
            .schema_registry_url
            .replace("/apis/ccompat/v7", "/apis/registry/v2"),
        partitions: 3,
    }
}

async fn cdc_setup(cli: &Cli, settings: &ClientSettings) -> anyhow::Result<()> {
    let source = source(cli);
    let connect = Connect::new(&cli.connect_url);
    connect.remove(CONNECTOR).await?;
    let crm = Crm::connect(&cli.postgres_url).await?;
    crm.drop_replication(&source.slot(), &source.publication())
        .await?;
    crm.recreate_table().await?;
    for (id, name, credit) in autoglm_demo::crm::SNAPSHOT_ROWS {
        crm.insert(id, name, credit).await?;
    }
    println!(
        "CRM table customers created with {} rows (the snapshot)",
        autoglm_demo::crm::SNAPSHOT_ROWS.len()
    );
    autoglm_demo::delete_group(settings, GROUP).await?;
    let topic = source.topic();
    autoglm_demo::recreate_topics(
        settings,
        &[
            &topic,
            "erp.customers",
            "crm.customers.dlq",
            "autoglm-demo-customers-changelog",
        ],
        3,
    )
    .await?;
    connect.put(CONNECTOR, &source.config()?).await?;
    println!(
        "Debezium connector {CONNECTOR} running: PostgreSQL public.customers → {topic} \
         (JSON with the schema wrapper, decimal.handling.mode=precise, time.precision.mode=adaptive)"
    );
    Ok(())
}

async fn compare(cli: &Cli, settings: &ClientSettings, registry: SrSettings) -> anyhow::Result<()> {
    let quiet = Duration::from_secs(3);
    let erp =
        autoglm_demo::read_committed(settings, Some(registry), "erp.customers", quiet).await?;
    let erp = autoglm_demo::latest(&erp)?;
    let table = Crm::connect(&cli.postgres_url).await?.rows().await?;
    println!(
        "\nSELECT * FROM customers (CRM, mapped)  |  erp.customers (latest per key, read_committed)"
    );
    let ids: std::collections::BTreeSet<i64> = erp.keys().chain(table.keys()).copied().collect();
    let mut disagree = 0;
    for id in ids {
        let (crm_row, erp_row) = (table.get(&id), erp.get(&id));
        let same = crm_row == erp_row;
        disagree += usize::from(!same);
        let show = |row: Option<&serde_json::Value>| {
            row.map_or("(absent)".to_owned(), |r| {
                format!(
                    "{:<10} v{:<2} credit {:>10}",
                    r["user_name"].as_str().unwrap_or("?"),
                    r["version"],
                    r["credit_limit"].as_str().unwrap_or("null")
                )
            })
        };
        println!(
            "  id {id:<3} {:<36} | {:<36} {}",
            show(crm_row),
            show(erp_row),
            if same { "agree" } else { "DIFFER" }
        );
        if !same {
            println!(
                "      crm: {}\n      erp: {}",
                json_or_absent(crm_row),
                json_or_absent(erp_row)
            );
        }
    }
    let dead = autoglm_demo::read_committed(settings, None, "crm.customers.dlq", quiet).await?;
    println!("\ncrm.customers.dlq: {} records", dead.len());
    for r in &dead {
        println!(
            "  key {}: {}",
            r.key,
            r.headers
                .get("autoglm.error.message")
                .map_or("", String::as_str)
        );
    }
    anyhow::ensure!(
        disagree == 0,
        "{disagree} keys differ between the CRM table and erp.customers"
    );
    println!(
        "\nthe CRM table and erp.customers agree on all {} rows",
        table.len()
    );
    Ok(())
}

fn json_or_absent(row: Option<&serde_json::Value>) -> String {
    row.map_or("(absent)".to_owned(), ToString::to_string)
}
