//! `autoglm-demo`: prepares the CRM → ERP demo, produces its change stream, shows the results.

use std::time::Duration;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// (Re)create the demo topics and forget the demo group's offsets.
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
