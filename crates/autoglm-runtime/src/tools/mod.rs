//! Operator tools beside the pipeline: the dead-letter topics ([`dlq`]: `autoglm dlq list |
//! show | replay`) and the state store ([`state`]: `autoglm state get | stats`).
//!
//! ```text
//!  autoglm dlq list|show ──► DLQ topic, read_committed, assigned partitions, nothing committed
//!  autoglm dlq replay    ──► DLQ topic ─(one transaction per batch)─► source topic + replay group offsets
//!  autoglm state get|stats ─► RocksDB secondary instance (read only) + changelog end offsets
//! ```
//!
//! None of them writes state: the state of a partition belongs to the running instance that
//! owns the partition. A replay goes back through the route like any input record, and the
//! route's version guard decides. The state tools open the store read-only beside a running
//! `autoglm run`.
//!
//! Failure behaviour: every failure is a [`ToolError`]; the tools stop at the first one and
//! say what they did until then (a replay's committed batches stay committed, its open one is
//! aborted, and the next replay resumes after the last commit).

pub mod dlq;
pub mod state;

use std::time::Duration;

use autoglm_kafka::ClientSettings;
use autoglm_state::StateError;
use comfy_table::{ContentArrangement, Table, presets};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use crate::pipeline::Pipeline;
use crate::route::RouteRuntime;

/// How long one broker request of a tool may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a tool stopped.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The command line asks for something the config or the input does not allow (an
    /// unknown route, a malformed filter, key or record reference).
    #[error("{0}")]
    Usage(String),
    /// A Kafka call failed.
    #[error("kafka: {what}")]
    Kafka {
        /// What the tool was doing.
        what: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The state store could not be read.
    #[error("state store")]
    State(#[from] StateError),
    /// What was asked for is not there.
    #[error("{0}")]
    NotFound(String),
    /// A replay could not deliver a record; its transaction was aborted.
    #[error("replay: {0}")]
    Replay(String),
    /// A read made no progress (the broker stopped answering fetches).
    #[error("{0}")]
    Stalled(String),
    /// A blocking task of the tool died.
    #[error("blocking task: {0}")]
    Task(String),
}

/// Adds what the tool was doing to a Kafka error.
pub(crate) fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> ToolError {
    let what = what.into();
    move |source| ToolError::Kafka { what, source }
}

/// Runs a blocking tool step (librdkafka and RocksDB calls) off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(
    step: impl FnOnce() -> Result<T, ToolError> + Send + 'static,
) -> Result<T, ToolError> {
    tokio::task::spawn_blocking(step)
        .await
        .map_err(|e| ToolError::Task(e.to_string()))?
}

/// The route named `name`, or a usage error that lists the config's routes.
pub(crate) fn route<'p>(pipeline: &'p Pipeline, name: &str) -> Result<&'p RouteRuntime, ToolError> {
    pipeline
        .routes()
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = pipeline.routes().iter().map(|r| r.name.as_str()).collect();
            ToolError::Usage(format!(
                "no route {name:?} in the config (routes: {})",
                names.join(", ")
            ))
        })
}

/// A consumer that reads committed records only and never commits on its own; in `group`, when
/// given (assigning partitions needs one), else in no group at all (metadata and end offsets).
pub(crate) fn reader_config(settings: &ClientSettings, group: Option<&str>) -> ClientConfig {
    let mut config = settings.client_config();
    config
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    if let Some(group) = group {
        config.set("group.id", group);
    }
    config
}

/// The partitions of `topic`, in order; an error if the topic does not exist.
pub(crate) fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, ToolError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(kafka(format!("metadata of {topic}")))?;
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    let mut partitions: Vec<i32> = found
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(ToolError::NotFound(format!("topic {topic} does not exist")));
    }
    partitions.sort_unstable();
    Ok(partitions)
}

/// A borderless table: a header line, then a line per row, columns two spaces apart.
pub(crate) fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header);
    table
}

/// The table as text, each line ending in a newline.
pub(crate) fn render(table: &mut Table) -> String {
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let mut out = table.trim_fmt();
    out.push('\n');
    out
}

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    let Ok(ms) = u64::try_from(ms) else {
        return format!("{ms} ms before the epoch");
    };
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339_in_utc() {
        assert_eq!(rfc3339_ms(1_748_772_000_123), "2025-06-01T10:00:00.123Z");
        assert_eq!(rfc3339_ms(-5), "-5 ms before the epoch");
    }
}
