//! The rights a config needs on the cluster, and whether its principal holds them.
//!
//! ```text
//!   routes ─► needs: READ  source topics (a `topic_pattern` is not checked: it names no topic)
//!                    WRITE targets, DLQ and audit topics
//!                    READ + WRITE the changelogs (CREATE when missing: run creates them)
//!                    READ the group, DESCRIBE `<group_id>-restore` (the state restore's group)
//!          ─► KIP-430 authorized operations (autoglm-rights) ─► granted / missing / unknown
//! ```
//!
//! `autoglm check` prints every finding; `autoglm run` stops before it reads or writes anything
//! when a right is missing, naming it. Not checkable here, so checked by using it: WRITE on the
//! transactional id (`init_transactions`, before any read) and CREATE for a missing changelog.

use std::fmt;
use std::time::Duration;

use autoglm_config::Config;
use autoglm_kafka::ClientSettings;
use autoglm_rights::{Operation, Rights};
use rdkafka::types::RDKafkaErrorCode;

use crate::route::RouteRuntime;

/// A resource kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Topic => "topic",
            Resource::Group => "group",
        })
    }
}

/// One right the config needs.
#[derive(Debug, Clone)]
pub struct Need {
    /// Topic or group.
    pub resource: Resource,
    /// Its name.
    pub name: String,
    /// The operation.
    pub operation: Operation,
    /// What the processor does with it, e.g. `source of route customers`.
    pub why: String,
}

/// What the broker said about a [`Need`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The principal holds the right.
    Granted,
    /// It does not; the broker's words, if it gave any.
    Missing(String),
    /// It cannot be told (a topic that does not exist yet); why.
    Unknown(String),
}

/// A need and its verdict.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The right.
    pub need: Need,
    /// Held or not.
    pub verdict: Verdict,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Need {
            resource,
            name,
            operation,
            why,
        } = &self.need;
        match &self.verdict {
            Verdict::Granted => write!(f, "ok       {operation} on {resource} {name:?} ({why})"),
            Verdict::Missing(reason) => write!(
                f,
                "MISSING  {operation} on {resource} {name:?} ({why}){}",
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(": {reason}")
                }
            ),
            Verdict::Unknown(reason) => {
                write!(
                    f,
                    "unknown  {operation} on {resource} {name:?} ({why}): {reason}"
                )
            }
        }
    }
}

/// The rights `config`'s routes need.
pub(crate) fn needs(config: &Config, routes: &[RouteRuntime]) -> Vec<Need> {
    let mut needs = Vec::new();
    let mut need = |resource, name: &str, operation, why: String| {
        needs.push(Need {
            resource,
            name: name.to_owned(),
            operation,
            why,
        });
    };
    for (route, compiled) in config.routes.iter().zip(routes) {
        let of = |what: &str| format!("{what} of route {}", route.name);
        if let Some(topic) = &route.source.topic {
            need(Resource::Topic, topic, Operation::Read, of("source"));
        }
        for target in &route.targets {
            need(
                Resource::Topic,
                &target.topic,
                Operation::Write,
                of("target"),
            );
        }
        need(
            Resource::Topic,
            &route.dlq_topic,
            Operation::Write,
            of("dead-letter topic"),
        );
        if let Some(audit) = &route.audit_topic {
            need(Resource::Topic, audit, Operation::Write, of("audit topic"));
        }
        for operation in [Operation::Read, Operation::Write] {
            need(
                Resource::Topic,
                &compiled.changelog_topic,
                operation,
                of("state changelog"),
            );
        }
    }
    let group = &config.kafka.group_id;
    need(
        Resource::Group,
        group,
        Operation::Read,
        "the consumer group".to_owned(),
    );
    need(
        Resource::Group,
        &format!("{group}-restore"),
        Operation::Describe,
        "the state restore's group, which never commits".to_owned(),
    );
    needs
}

/// Asks the broker about every need.
pub(crate) async fn check(
    settings: &ClientSettings,
    needs: Vec<Need>,
    timeout: Duration,
) -> Result<Vec<Finding>, autoglm_rights::RightsError> {
    let names = |resource: Resource| -> Vec<String> {
        let mut names: Vec<String> = needs
            .iter()
            .filter(|n| n.resource == resource)
            .map(|n| n.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let (topics, groups) = (names(Resource::Topic), names(Resource::Group));
    let config = settings.client_config();
    let (topic_rights, group_rights) = tokio::task::spawn_blocking(move || {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        Ok::<_, autoglm_rights::RightsError>((
            autoglm_rights::topic_rights(&config, &topics, timeout)?,
            autoglm_rights::group_rights(&config, &groups, timeout)?,
        ))
    })
    .await
    .map_err(|_| autoglm_rights::RightsError::TimedOut)??;
    Ok(needs
        .into_iter()
        .map(|need| {
            let rights = match need.resource {
                Resource::Topic => &topic_rights,
                Resource::Group => &group_rights,
            };
            let verdict = rights.iter().find(|r| r.name == need.name).map_or_else(
                || Verdict::Unknown("the broker did not describe it".to_owned()),
                |r| verdict(&need, r),
            );
            Finding { need, verdict }
        })
        .collect())
}

fn verdict(need: &Need, rights: &Rights) -> Verdict {
    match &rights.error {
        // A broker without an authorizer (or one older than KIP-430) reports no operations.
        None if rights.operations.is_empty() => {
            Verdict::Unknown("the broker reported no authorized operations".to_owned())
        }
        None if rights.allows(need.operation) => Verdict::Granted,
        None => Verdict::Missing(String::new()),
        Some((RDKafkaErrorCode::UnknownTopicOrPartition, _)) => {
            let hint = if need.why.starts_with("state changelog") {
                "it does not exist yet: run creates it, which needs CREATE on it"
            } else {
                "it does not exist"
            };
            Verdict::Unknown(hint.to_owned())
        }
        Some((_, message)) => Verdict::Missing(message.clone()),
    }
}
