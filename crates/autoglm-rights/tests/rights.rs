//! KIP-430 rights against the local stack (`deploy/local/stack.sh`): topics are created as the
//! super user over PLAINTEXT, then described as `User:autoglm` over SASL_SSL / SCRAM-SHA-512,
//! whose prefixed ACLs are: topics `in.` READ+DESCRIBE, `out.` WRITE+DESCRIBE, `dlq.`
//! WRITE+DESCRIBE, `sec.` READ+WRITE+DESCRIBE+CREATE; groups `sec.` READ+DESCRIBE; transactional
//! ids `sec.g.` WRITE+DESCRIBE.
//!
//! Addresses come from `AUTOGLM_KAFKA_BOOTSTRAP` (PLAINTEXT, default `127.0.0.1:39092`),
//! `AUTOGLM_KAFKA_SCRAM` (default `127.0.0.1:39096`) and `AUTOGLM_TLS_CA` (default the stack's
//! `.stack/security/ca.pem`). Without a broker the tests fail; they never skip.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use autoglm_rights::{Operation, Rights, RightsError, group_rights, topic_rights};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

const TIMEOUT: Duration = Duration::from_secs(30);

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The super user (User:ANONYMOUS) over PLAINTEXT.
fn plaintext() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set(
        "bootstrap.servers",
        setting("AUTOGLM_KAFKA_BOOTSTRAP", "127.0.0.1:39092"),
    );
    config
}

/// User:autoglm over SASL_SSL with SCRAM-SHA-512, authenticating with `password` and trusting
/// the CA at `ca`.
fn scram_with(password: &str, ca: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set(
            "bootstrap.servers",
            setting("AUTOGLM_KAFKA_SCRAM", "127.0.0.1:39096"),
        )
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanisms", "SCRAM-SHA-512")
        .set("sasl.username", "autoglm")
        .set("sasl.password", password)
        .set("ssl.ca.location", ca);
    config
}

fn stack_ca() -> String {
    setting(
        "AUTOGLM_TLS_CA",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../.stack/security/ca.pem"),
    )
}

fn scram() -> ClientConfig {
    scram_with("autoglm-secret", &stack_ca())
}

/// A name no other run uses: `prefix<uuid>`.
fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// The topics of this run, created once (over PLAINTEXT) for all tests.
#[derive(Debug)]
struct Topics {
    input: String,
    output: String,
    nowrite: String,
}

fn topics() -> &'static Topics {
    static TOPICS: OnceLock<Topics> = OnceLock::new();
    TOPICS.get_or_init(|| {
        let topics = Topics {
            input: unique("in.rights-"),
            output: unique("out.rights-"),
            nowrite: unique("nowrite.rights-"),
        };
        create_topics(&[&topics.input, &topics.output, &topics.nowrite]);
        topics
    })
}

fn create_topics(names: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = plaintext().create().expect("admin client");
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, 1, TopicReplication::Fixed(1)))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let results = runtime
        .block_on(
            admin.create_topics(
                &new_topics,
                &AdminOptions::new()
                    .request_timeout(Some(TIMEOUT))
                    .operation_timeout(Some(TIMEOUT)),
            ),
        )
        .expect("create_topics request: is the local stack's broker up?");
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("create topic {name}: {code}"));
    }

    // The broker's metadata cache may lag the controller for a moment: wait until the super user
    // sees every topic.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let rights = topic_rights(&plaintext(), names, TIMEOUT).expect("topic rights (PLAINTEXT)");
        if rights.iter().all(|rights| rights.error.is_none()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "topics never appeared: {rights:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn one(mut rights: Vec<Rights>, name: &str) -> Rights {
    assert_eq!(rights.len(), 1, "{rights:#?}");
    let rights = rights.remove(0);
    assert_eq!(rights.name, name);
    rights
}

#[test]
fn the_in_topic_allows_read_and_describe_but_not_write() {
    let topic = &topics().input;
    let rights = one(
        topic_rights(&scram(), &[topic], TIMEOUT).expect("topic rights"),
        topic,
    );
    eprintln!("{rights:?}");
    assert_eq!(rights.error, None);
    assert!(rights.allows(Operation::Read), "{rights:?}");
    assert!(rights.allows(Operation::Describe), "{rights:?}");
    assert!(!rights.allows(Operation::Write), "{rights:?}");
    assert!(!rights.allows(Operation::Create), "{rights:?}");
    assert!(!rights.allows(Operation::Delete), "{rights:?}");
}

#[test]
fn the_out_topic_allows_write_but_not_read() {
    let topic = &topics().output;
    let rights = one(
        topic_rights(&scram(), &[topic], TIMEOUT).expect("topic rights"),
        topic,
    );
    eprintln!("{rights:?}");
    assert_eq!(rights.error, None);
    assert!(rights.allows(Operation::Write), "{rights:?}");
    assert!(rights.allows(Operation::Describe), "{rights:?}");
    assert!(!rights.allows(Operation::Read), "{rights:?}");
}

#[test]
fn a_topic_without_acls_is_refused() {
    let topic = &topics().nowrite;
    let rights = one(
        topic_rights(&scram(), &[topic], TIMEOUT).expect("topic rights"),
        topic,
    );
    eprintln!("{rights:?}");
    match &rights.error {
        Some((code, message)) => {
            assert_eq!(
                *code,
                RDKafkaErrorCode::TopicAuthorizationFailed,
                "{message}"
            );
            assert_eq!(message, "Broker: Topic authorization failed");
        }
        None => assert!(rights.operations.is_empty(), "{rights:?}"),
    }
    assert!(rights.operations.is_empty(), "{rights:?}");
    assert!(!rights.allows(Operation::Write));
    assert!(!rights.allows(Operation::Describe));
    assert!(!rights.allows(Operation::Any));
}

#[test]
fn the_super_user_may_do_everything_on_a_topic() {
    let topic = &topics().nowrite;
    let rights = one(
        topic_rights(&plaintext(), &[topic], TIMEOUT).expect("topic rights"),
        topic,
    );
    eprintln!("{rights:?}");
    assert_eq!(rights.error, None);
    for op in [
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Describe,
        Operation::DescribeConfigs,
        Operation::AlterConfigs,
    ] {
        assert!(rights.allows(op), "{op}: {rights:?}");
    }
}

#[test]
fn results_follow_the_input_order_and_repeat_duplicates() {
    let t = topics();
    let asked = [
        t.nowrite.as_str(),
        t.output.as_str(),
        t.input.as_str(),
        t.output.as_str(),
    ];
    let rights = topic_rights(&scram(), &asked, TIMEOUT).expect("topic rights");
    let names: Vec<&str> = rights.iter().map(|rights| rights.name.as_str()).collect();
    assert_eq!(names, asked);
    assert!(rights[0].error.is_some(), "{:?}", rights[0]);
    assert!(rights[1].allows(Operation::Write) && !rights[1].allows(Operation::Read));
    assert!(rights[2].allows(Operation::Read) && !rights[2].allows(Operation::Write));
    assert_eq!(rights[1], rights[3]);
}

#[test]
fn a_missing_topic_has_no_operations() {
    // Inside the `in.` grant (DESCRIBE), but never created: the broker says it does not exist.
    let described = unique("in.rights-missing-");
    // Outside every grant, never created: the broker does not say whether it exists.
    let hidden = unique("nowrite.rights-missing-");
    let rights = topic_rights(&scram(), &[&described, &hidden], TIMEOUT).expect("topic rights");
    eprintln!("{rights:#?}");
    for (rights, expected) in rights.iter().zip([
        RDKafkaErrorCode::UnknownTopicOrPartition,
        RDKafkaErrorCode::TopicAuthorizationFailed,
    ]) {
        let (code, message) = rights.error.as_ref().expect("an error for a missing topic");
        assert_eq!(*code, expected, "{}: {message}", rights.name);
        assert!(rights.operations.is_empty(), "{rights:?}");
    }
}

#[test]
fn a_granted_group_allows_read_before_it_exists() {
    let group = unique("sec.g.rights-");
    let rights = one(
        group_rights(&scram(), &[&group], TIMEOUT).expect("group rights"),
        &group,
    );
    eprintln!("{rights:?}");
    assert_eq!(rights.error, None);
    assert!(rights.allows(Operation::Read), "{rights:?}");
    assert!(rights.allows(Operation::Describe), "{rights:?}");
    assert!(!rights.allows(Operation::Delete), "{rights:?}");
}

#[test]
fn another_group_is_refused() {
    let group = unique("other-");
    let rights = one(
        group_rights(&scram(), &[&group], TIMEOUT).expect("group rights"),
        &group,
    );
    eprintln!("{rights:?}");
    assert!(!rights.allows(Operation::Read), "{rights:?}");
    assert!(!rights.allows(Operation::Describe), "{rights:?}");
    if let Some((code, message)) = &rights.error {
        assert_eq!(
            *code,
            RDKafkaErrorCode::GroupAuthorizationFailed,
            "{message}"
        );
    }
}

#[test]
fn groups_follow_the_input_order() {
    let granted = unique("sec.g.rights-");
    let other = unique("other-");
    let asked = [other.as_str(), granted.as_str(), other.as_str()];
    let rights = group_rights(&scram(), &asked, TIMEOUT).expect("group rights");
    eprintln!("{rights:#?}");
    let names: Vec<&str> = rights.iter().map(|rights| rights.name.as_str()).collect();
    assert_eq!(names, asked);
    assert!(!rights[0].allows(Operation::Read));
    assert!(rights[1].allows(Operation::Read));
    assert_eq!(rights[0], rights[2]);
}

#[test]
fn a_wrong_password_fails_without_waiting_for_the_timeout() {
    let started = Instant::now();
    let result = topic_rights(
        &scram_with("not-the-password", &stack_ca()),
        &[&topics().input],
        TIMEOUT,
    );
    eprintln!("{result:?} after {:?}", started.elapsed());
    assert!(
        matches!(
            result,
            Err(RightsError::Request {
                code: RDKafkaErrorCode::Authentication,
                ..
            })
        ),
        "{result:?}"
    );
    assert!(started.elapsed() < TIMEOUT / 2, "{:?}", started.elapsed());
}

#[test]
fn an_untrusted_broker_certificate_fails_without_waiting_for_the_timeout() {
    // A CA that did not sign the broker's certificate.
    let other_ca = stack_ca().replace("ca.pem", "other-ca.pem");
    let started = Instant::now();
    let result = group_rights(
        &scram_with("autoglm-secret", &other_ca),
        &["sec.g.rights-tls"],
        TIMEOUT,
    );
    eprintln!("{result:?} after {:?}", started.elapsed());
    assert!(
        matches!(
            result,
            Err(RightsError::Request {
                code: RDKafkaErrorCode::SSL,
                ..
            })
        ),
        "{result:?}"
    );
    assert!(started.elapsed() < TIMEOUT / 2, "{:?}", started.elapsed());
}

#[test]
fn an_unreachable_broker_times_out() {
    let mut config = ClientConfig::new();
    // Nothing listens on port 1.
    config.set("bootstrap.servers", "127.0.0.1:1");
    let started = Instant::now();
    let result = group_rights(&config, &["sec.g.nobody"], Duration::from_secs(2));
    eprintln!("{result:?} after {:?}", started.elapsed());
    assert!(matches!(result, Err(RightsError::TimedOut)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
