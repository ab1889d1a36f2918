//! `autoglm`: the command-line entry point. Parsing and wiring only; the work lives in the
//! library crates.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use autoglm_kafka::ClientSettings;
use clap::{Parser, Subcommand};
use schema_registry_converter::async_impl::schema_registry::{SrSettings, get_all_subjects};

#[derive(Debug, Parser)]
#[command(
    name = "autoglm",
    version,
    about = "Open-AutoGLM: a Kafka-native CDC sync processor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that the Kafka cluster and the Schema Registry answer; exit non-zero if either does not.
    Check {
        /// Kafka bootstrap servers, `host:port[,host:port…]`.
        #[arg(long, env = "AUTOGLM_KAFKA_BOOTSTRAP")]
        bootstrap_servers: String,
        /// Base URL of a Confluent-compatible Schema Registry API.
        #[arg(long, env = "AUTOGLM_SCHEMA_REGISTRY_URL")]
        schema_registry_url: String,
        /// How long each service may take to answer.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check {
            bootstrap_servers,
            schema_registry_url,
            timeout_secs,
        } => {
            check(
                &bootstrap_servers,
                &schema_registry_url,
                Duration::from_secs(timeout_secs),
            )
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn check(bootstrap: &str, registry_url: &str, timeout: Duration) -> anyhow::Result<()> {
    let settings = ClientSettings::new(bootstrap).with_client_id("autoglm-check");
    let cluster = autoglm_kafka::probe(&settings, timeout)
        .await
        .with_context(|| format!("kafka at {bootstrap} did not answer"))?;
    println!(
        "kafka     ok  {bootstrap}: brokers [{}], {} topics",
        cluster.brokers.join(", "),
        cluster.topic_count
    );
    let sr = SrSettings::new_builder(registry_url.to_owned())
        .set_timeout(timeout)
        .build()
        .with_context(|| format!("schema registry url {registry_url} is not usable"))?;
    let subjects = get_all_subjects(&sr)
        .await
        .with_context(|| format!("schema registry at {registry_url} did not answer"))?;
    println!("registry  ok  {registry_url}: {} subjects", subjects.len());
    Ok(())
}
