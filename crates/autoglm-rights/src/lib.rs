//! The rights the client's principal holds on topics and consumer groups, as the broker reports
//! them: KIP-430 "authorized operations".
//!
//! # What KIP-430 gives
//!
//! A describe request can ask the broker to add, for each resource it describes, the set of ACL
//! operations the requesting principal is authorized for on that resource. The broker computes
//! the set with its own authorizer (prefixed and literal ACLs, `super.users`, implied operations
//! such as DESCRIBE from READ) at the time of the request, so it is exactly what the principal of
//! *this* connection may do — no ACL listing rights (DESCRIBE on CLUSTER) are needed. librdkafka
//! exposes it through `rd_kafka_DescribeTopics` (a Metadata request with
//! `IncludeTopicAuthorizedOperations`) and `rd_kafka_DescribeConsumerGroups` (ConsumerGroupDescribe,
//! falling back to the classic DescribeGroups) with
//! `rd_kafka_AdminOptions_set_include_authorized_operations`; the `rdkafka` crate wraps neither,
//! so [`topic_rights`] and [`group_rights`] do.
//!
//! # Its limits
//!
//! - **Only resources the principal may DESCRIBE are described.** Without DESCRIBE the broker
//!   answers `TOPIC_AUTHORIZATION_FAILED` / `GROUP_AUTHORIZATION_FAILED` for that resource and no
//!   operation set: "no rights at all" and "rights but not DESCRIBE" look the same. Such a
//!   resource comes back as [`Rights`] with [`Rights::error`] set and no operations.
//! - **A topic must exist.** For a topic the principal may describe but that does not exist, the
//!   broker answers `UNKNOWN_TOPIC_OR_PARTITION` and no operations (auto-creation is never
//!   triggered; without DESCRIBE it is `TOPIC_AUTHORIZATION_FAILED`, existing or not), so the
//!   rights on a topic cannot be checked before it is created.
//! - **A consumer group need not exist.** For a group id nobody has used, the broker (Kafka 4.1,
//!   classic DescribeGroups after ConsumerGroupDescribe's `GROUP_ID_NOT_FOUND`) describes a group in
//!   state `Dead`, without error, *with* the principal's operations on that group id — so the
//!   rights on a group can be checked before the processor first joins it.
//! - **Transactional ids are not covered.** KIP-430 has no describe request for transactional
//!   ids, so WRITE/DESCRIBE on a `transactional.id` can only be found out by using it
//!   (`InitProducerId` failing with `TRANSACTIONAL_ID_AUTHORIZATION_FAILED`). Cluster rights
//!   (e.g. IDEMPOTENT_WRITE, CREATE on the cluster) are not reported here either.
//! - **It is a snapshot.** ACLs changed after the request are not reflected.
//!
//! # Use
//!
//! Both functions block (one short-lived librdkafka client per call, up to `timeout`); run them
//! in `spawn_blocking`. The [`ClientConfig`] must carry everything librdkafka needs to connect and
//! authenticate on its own (bootstrap servers, `security.protocol`, SASL incl. OIDC, TLS): the
//! call uses its own client context, so a context-provided OAUTHBEARER token is not available.
//! An authentication or TLS failure ends the call at once with [`RightsError::Request`] instead
//! of waiting for the timeout.
//!
//! # Safety
//!
//! This is the workspace's only crate with `unsafe` code: each block is a single call into
//! librdkafka's C API or a read of memory it owns, with a `// SAFETY:` comment. Everything
//! librdkafka hands back is copied into owned Rust values before the event that owns it is
//! destroyed; the objects the caller must destroy (queue, admin options, topic collection,
//! result event, the error from setting an option) are owned by RAII guards borrowing the client.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int};
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka_sys as rd;
use rdkafka_sys::rd_kafka_AclOperation_t as RawOperation;

/// The longest request timeout librdkafka accepts (`rd_kafka_AdminOptions_set_request_timeout`).
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long one wait on the result queue lasts before the client's own events (logs, errors)
/// are served again.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// A Kafka ACL operation (KIP-430), from librdkafka's `rd_kafka_AclOperation_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// An operation this librdkafka does not know.
    Unknown,
    /// Matches any operation (ACL filters only; never reported as authorized).
    Any,
    /// Every operation.
    All,
    /// READ: consume a topic, join/commit in a group.
    Read,
    /// WRITE: produce to a topic, use a transactional id.
    Write,
    /// CREATE: create a topic.
    Create,
    /// DELETE: delete a topic or group, delete records.
    Delete,
    /// ALTER: create partitions, alter a topic.
    Alter,
    /// DESCRIBE: see the resource in metadata and describe requests.
    Describe,
    /// CLUSTER_ACTION: inter-broker requests.
    ClusterAction,
    /// DESCRIBE_CONFIGS: read the resource's configuration.
    DescribeConfigs,
    /// ALTER_CONFIGS: change the resource's configuration.
    AlterConfigs,
    /// IDEMPOTENT_WRITE: idempotent produce (a cluster operation).
    IdempotentWrite,
}

impl Operation {
    /// The operation's name as Kafka spells it: `READ`, `WRITE`, `DESCRIBE_CONFIGS`, …
    pub const fn name(self) -> &'static str {
        match self {
            Operation::Unknown => "UNKNOWN",
            Operation::Any => "ANY",
            Operation::All => "ALL",
            Operation::Read => "READ",
            Operation::Write => "WRITE",
            Operation::Create => "CREATE",
            Operation::Delete => "DELETE",
            Operation::Alter => "ALTER",
            Operation::Describe => "DESCRIBE",
            Operation::ClusterAction => "CLUSTER_ACTION",
            Operation::DescribeConfigs => "DESCRIBE_CONFIGS",
            Operation::AlterConfigs => "ALTER_CONFIGS",
            Operation::IdempotentWrite => "IDEMPOTENT_WRITE",
        }
    }

    /// The operation for librdkafka's raw `rd_kafka_AclOperation_t` value; a value this build
    /// does not know is [`Operation::Unknown`].
    fn from_raw(raw: u32) -> Operation {
        const fn raw_of(operation: RawOperation) -> u32 {
            operation as u32
        }
        const READ: u32 = raw_of(RawOperation::RD_KAFKA_ACL_OPERATION_READ);
        const ANY: u32 = raw_of(RawOperation::RD_KAFKA_ACL_OPERATION_ANY);
        const ALL: u32 = raw_of(RawOperation::RD_KAFKA_ACL_OPERATION_ALL);
        const WRITE: u32 = raw_of(RawOperation::RD_KAFKA_ACL_OPERATION_WRITE);
        const CREATE: u32 = raw_of(RawOperation::RD_KAFKA_ACL_OPERATION_CREATE);
        const DELETE: u32 = raw_of(RawOperation::RD_KAFKA_ACL_OPERATION_DELETE);
        const ALTER: u32 = raw_of(RawOperation::RD_KAFKA_ACL_OPERATION_ALTER);
        const DESCRIBE: u32 = raw_of(RawOperation::RD_KAFKA_ACL_OPERATION_DESCRIBE);
        const CLUSTER_ACTION: u32 = raw_of(RawOperation::RD_KAFKA_ACL_OPERATION_CLUSTER_ACTION);
        const DESCRIBE_CONFIGS: u32 = raw_of(RawOperation::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS);
        const ALTER_CONFIGS: u32 = raw_of(RawOperation::RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS);
        const IDEMPOTENT_WRITE: u32 = raw_of(RawOperation::RD_KAFKA_ACL_OPERATION_IDEMPOTENT_WRITE);
        match raw {
            ANY => Operation::Any,
            ALL => Operation::All,
            READ => Operation::Read,
            WRITE => Operation::Write,
            CREATE => Operation::Create,
            DELETE => Operation::Delete,
            ALTER => Operation::Alter,
            DESCRIBE => Operation::Describe,
            CLUSTER_ACTION => Operation::ClusterAction,
            DESCRIBE_CONFIGS => Operation::DescribeConfigs,
            ALTER_CONFIGS => Operation::AlterConfigs,
            IDEMPOTENT_WRITE => Operation::IdempotentWrite,
            _ => Operation::Unknown,
        }
    }

    /// Whether holding `self` grants `wanted`, as Kafka's authorizer decides: ALL grants every
    /// operation; READ, WRITE, DELETE and ALTER grant DESCRIBE; ALTER_CONFIGS grants
    /// DESCRIBE_CONFIGS.
    fn grants(self, wanted: Operation) -> bool {
        match self {
            Operation::Unknown | Operation::Any => false,
            Operation::All => !matches!(wanted, Operation::Unknown | Operation::Any),
            granted if granted == wanted => true,
            Operation::Read | Operation::Write | Operation::Delete | Operation::Alter => {
                wanted == Operation::Describe
            }
            Operation::AlterConfigs => wanted == Operation::DescribeConfigs,
            _ => false,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The principal's rights on one topic or consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    /// The topic name or group id, as asked for.
    pub name: String,
    /// The broker's error for this resource (e.g. "Broker: Topic authorization failed",
    /// "Broker: Unknown topic or partition"), if any; the resource then has no operations.
    pub error: Option<(RDKafkaErrorCode, String)>,
    /// The operations the principal is authorized for, as the broker reported them (the
    /// authorizer's implications included), in librdkafka's order; empty when the broker gave
    /// none.
    pub operations: Vec<Operation>,
}

impl Rights {
    /// Whether the principal may perform `op` on this resource: `op` itself was reported, or an
    /// operation that implies it (ALL implies every operation; READ, WRITE, DELETE and ALTER imply
    /// DESCRIBE; ALTER_CONFIGS implies DESCRIBE_CONFIGS). [`Operation::Any`] asks whether any
    /// operation at all is allowed; [`Operation::Unknown`] is never allowed.
    pub fn allows(&self, op: Operation) -> bool {
        match op {
            Operation::Unknown => false,
            Operation::Any => self
                .operations
                .iter()
                .any(|granted| !matches!(granted, Operation::Unknown | Operation::Any)),
            wanted => self.operations.iter().any(|granted| granted.grants(wanted)),
        }
    }
}

/// Why the rights could not be found out (a per-resource refusal is not an error here: it is in
/// [`Rights::error`]).
#[derive(Debug, thiserror::Error)]
pub enum RightsError {
    /// The librdkafka client could not be created (e.g. an invalid or unknown property).
    #[error("cannot create the Kafka client for the rights check: {0}")]
    Client(#[source] KafkaError),
    /// The request as a whole failed: invalid arguments, an authentication or TLS failure, or an
    /// error from librdkafka or the broker for the whole request.
    #[error("rights check failed: {message} ({code:?})")]
    Request {
        /// librdkafka's or the broker's error code.
        code: RDKafkaErrorCode,
        /// The error's description.
        message: String,
    },
    /// No answer within the timeout (e.g. no broker reachable).
    #[error("rights check: no answer from the brokers within the timeout")]
    TimedOut,
}

/// The principal's rights on each of `topics`, in the order asked for (a name asked for twice is
/// described once and reported twice). An empty list makes no request.
///
/// `config` is used as a producer's; `timeout` bounds the whole call (at most one hour).
pub fn topic_rights(
    config: &ClientConfig,
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<Rights>, RightsError> {
    describe(config, topics, timeout, Resource::Topic)
}

/// The principal's rights on each of the consumer `groups`, in the order asked for (a group asked
/// for twice is described once and reported twice). An empty list makes no request.
///
/// `config` is used as a producer's; `timeout` bounds the whole call (at most one hour).
pub fn group_rights(
    config: &ClientConfig,
    groups: &[&str],
    timeout: Duration,
) -> Result<Vec<Rights>, RightsError> {
    describe(config, groups, timeout, Resource::Group)
}

/// What is described.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Topic,
    Group,
}

impl Resource {
    fn noun(self) -> &'static str {
        match self {
            Resource::Topic => "topic",
            Resource::Group => "group",
        }
    }

    fn admin_op(self) -> rd::rd_kafka_admin_op_t {
        match self {
            Resource::Topic => rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            Resource::Group => rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS,
        }
    }

    fn event_type(self) -> rd::rd_kafka_event_type_t {
        match self {
            Resource::Topic => rd::RD_KAFKA_EVENT_DESCRIBETOPICS_RESULT,
            Resource::Group => rd::RD_KAFKA_EVENT_DESCRIBECONSUMERGROUPS_RESULT,
        }
    }
}

fn describe(
    config: &ClientConfig,
    names: &[&str],
    timeout: Duration,
    resource: Resource,
) -> Result<Vec<Rights>, RightsError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let timeout = timeout.min(MAX_TIMEOUT);
    let deadline = Instant::now() + timeout;

    // librdkafka refuses duplicates: ask for each name once, report it as often as asked.
    let mut distinct: Vec<CString> = Vec::with_capacity(names.len());
    for name in names {
        let c_name = CString::new(*name).map_err(|_| RightsError::Request {
            code: RDKafkaErrorCode::InvalidArgument,
            message: format!("{} name {name:?} contains a NUL byte", resource.noun()),
        })?;
        if !distinct.contains(&c_name) {
            distinct.push(c_name);
        }
    }
    let mut c_names: Vec<*const c_char> = distinct.iter().map(|name| name.as_ptr()).collect();

    // Declared first, dropped last: the client outlives the queue, options and event below.
    let client: BaseProducer<Watch> = config
        .create_with_context(Watch::default())
        .map_err(RightsError::Client)?;
    let queue = Queue::new(&client)?;
    let options = AdminOptions::new(&client, resource.admin_op(), timeout)?;
    let rk = client.client().native_ptr();
    match resource {
        Resource::Topic => {
            let topics = TopicCollection::of_names(&mut c_names)?;
            // SAFETY: `rk` is the live client, `topics`, `options` and `queue` are live objects
            // created for it; librdkafka copies the names and options into the request, and the
            // queue is reference-counted by the request, so none must outlive this call.
            unsafe {
                rd::rd_kafka_DescribeTopics(
                    rk,
                    topics.ptr.as_ptr(),
                    options.ptr.as_ptr(),
                    queue.ptr.as_ptr(),
                );
            }
        }
        Resource::Group => {
            // SAFETY: as above; `c_names` holds `c_names.len()` pointers to NUL-terminated strings
            // (`distinct`, alive here), which librdkafka duplicates before returning.
            unsafe {
                rd::rd_kafka_DescribeConsumerGroups(
                    rk,
                    c_names.as_mut_ptr(),
                    c_names.len(),
                    options.ptr.as_ptr(),
                    queue.ptr.as_ptr(),
                );
            }
        }
    }

    let event = wait(&client, &queue, deadline, resource.event_type())?;
    let described = match resource {
        Resource::Topic => read_topics(&event)?,
        Resource::Group => read_groups(&event)?,
    };
    // A resource the request gave up on (librdkafka's own timeout) was not answered.
    if described.iter().any(|rights| {
        matches!(&rights.error, Some((code, _)) if *code == RDKafkaErrorCode::OperationTimedOut)
    }) {
        return Err(RightsError::TimedOut);
    }

    let by_name: HashMap<&str, &Rights> = described
        .iter()
        .map(|rights| (rights.name.as_str(), rights))
        .collect();
    names
        .iter()
        .map(|name| {
            by_name
                .get(name)
                .map(|rights| (*rights).clone())
                .ok_or_else(|| RightsError::Request {
                    code: RDKafkaErrorCode::Fail,
                    message: format!("the answer does not describe {} {name:?}", resource.noun()),
                })
        })
        .collect()
}

/// Waits for the result event on `queue` until `deadline`, serving the client's own events
/// (logs, errors) in between.
fn wait<'q>(
    client: &BaseProducer<Watch>,
    queue: &'q Queue<'_>,
    deadline: Instant,
    expected: rd::rd_kafka_event_type_t,
) -> Result<Event<'q>, RightsError> {
    loop {
        client.poll(Duration::from_millis(1));
        if let Some((code, message)) = client.context().failure() {
            return Err(RightsError::Request { code, message });
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(RightsError::TimedOut);
        }
        let Some(event) = queue.poll((deadline - now).min(POLL_SLICE)) else {
            continue;
        };
        if event.kind() != expected {
            // Nothing else is sent to this private queue; ignore it should it happen.
            continue;
        }
        return match event.error() {
            None => Ok(event),
            Some((RDKafkaErrorCode::OperationTimedOut, _)) => Err(RightsError::TimedOut),
            Some((code, message)) => Err(RightsError::Request { code, message }),
        };
    }
}

fn read_topics(event: &Event<'_>) -> Result<Vec<Rights>, RightsError> {
    // SAFETY: `event` is a live event of type DESCRIBETOPICS_RESULT (checked in `wait`); the
    // result is NULL for any other type.
    let result = unsafe { rd::rd_kafka_event_DescribeTopics_result(event.ptr.as_ptr()) };
    if result.is_null() {
        return Err(not_a_result("DescribeTopics"));
    }
    let mut count = 0;
    // SAFETY: `result` is the event's live DescribeTopics result; the array (of `count`
    // descriptions) is owned by it.
    let topics = unsafe { rd::rd_kafka_DescribeTopics_result_topics(result, &mut count) };
    // SAFETY: `topics` points at `count` description pointers owned by `event`.
    let topics = unsafe { owned_by(event, topics.cast_const(), count) };
    Ok(topics
        .iter()
        .map(|&topic| {
            let mut count = 0;
            // SAFETY: `topic` is a live description owned by `event`; the name, error and
            // operations it returns are owned by the description, read before `event` is
            // destroyed (`read_rights` copies them), and NULL when absent.
            unsafe {
                read_rights(
                    event,
                    rd::rd_kafka_TopicDescription_name(topic),
                    rd::rd_kafka_TopicDescription_error(topic),
                    rd::rd_kafka_TopicDescription_authorized_operations(topic, &mut count),
                    count,
                )
            }
        })
        .collect())
}

fn read_groups(event: &Event<'_>) -> Result<Vec<Rights>, RightsError> {
    // SAFETY: `event` is a live event of type DESCRIBECONSUMERGROUPS_RESULT (checked in `wait`);
    // the result is NULL for any other type.
    let result = unsafe { rd::rd_kafka_event_DescribeConsumerGroups_result(event.ptr.as_ptr()) };
    if result.is_null() {
        return Err(not_a_result("DescribeConsumerGroups"));
    }
    let mut count = 0;
    // SAFETY: `result` is the event's live DescribeConsumerGroups result; the array (of `count`
    // descriptions) is owned by it.
    let groups = unsafe { rd::rd_kafka_DescribeConsumerGroups_result_groups(result, &mut count) };
    // SAFETY: `groups` points at `count` description pointers owned by `event`.
    let groups = unsafe { owned_by(event, groups.cast_const(), count) };
    Ok(groups
        .iter()
        .map(|&group| {
            let mut count = 0;
            // SAFETY: as for topics: `group` is a live description owned by `event`, and so is
            // what its accessors return (NULL when absent).
            unsafe {
                read_rights(
                    event,
                    rd::rd_kafka_ConsumerGroupDescription_group_id(group),
                    rd::rd_kafka_ConsumerGroupDescription_error(group),
                    rd::rd_kafka_ConsumerGroupDescription_authorized_operations(group, &mut count),
                    count,
                )
            }
        })
        .collect())
}

fn not_a_result(request: &str) -> RightsError {
    RightsError::Request {
        code: RDKafkaErrorCode::Fail,
        message: format!("librdkafka returned no {request} result"),
    }
}

/// Copies one description out of librdkafka's memory.
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string, `error` NULL or a live `rd_kafka_error_t`, and
/// `operations` NULL or an array of `count` operations, all owned by `event`.
unsafe fn read_rights(
    event: &Event<'_>,
    name: *const c_char,
    error: *const rd::rd_kafka_error_t,
    operations: *const rd::rd_kafka_AclOperation_t,
    count: usize,
) -> Rights {
    // SAFETY: per this function's contract. The operations are read as the `u32`s they are
    // (`rd_kafka_AclOperation_t` is `repr(u32)`), so a value unknown to this build is no UB.
    let (name, error, operations) = unsafe {
        (
            owned_string(name),
            NonNull::new(error.cast_mut()).map(|error| read_error(error)),
            owned_by(event, operations.cast::<u32>(), count),
        )
    };
    Rights {
        name,
        error: error.filter(|(code, _)| *code != RDKafkaErrorCode::NoError),
        operations: operations
            .iter()
            .copied()
            .map(Operation::from_raw)
            .collect(),
    }
}

/// The array of `count` elements at `ptr`, borrowed for as long as `event` (which owns it).
///
/// # Safety
///
/// `ptr` is NULL or points at `count` initialized elements owned by `event`.
unsafe fn owned_by<'e, T>(_event: &'e Event<'_>, ptr: *const T, count: usize) -> &'e [T] {
    if ptr.is_null() || count == 0 {
        &[]
    } else {
        // SAFETY: per this function's contract; `event` is not destroyed while it is borrowed.
        unsafe { std::slice::from_raw_parts(ptr, count) }
    }
}

/// An owned copy of a C string ("" for NULL).
///
/// # Safety
///
/// `ptr` is NULL or a valid NUL-terminated string.
unsafe fn owned_string(ptr: *const c_char) -> String {
    if ptr.is_null() {
        String::new()
    } else {
        // SAFETY: per this function's contract.
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned()
    }
}

/// The code and description of a librdkafka error object (not destroyed).
///
/// # Safety
///
/// `error` is a live `rd_kafka_error_t`.
unsafe fn read_error(error: NonNull<rd::rd_kafka_error_t>) -> (RDKafkaErrorCode, String) {
    // SAFETY: per this function's contract; the string is owned by `error` and copied at once.
    unsafe {
        (
            rd::rd_kafka_error_code(error.as_ptr()).into(),
            owned_string(rd::rd_kafka_error_string(error.as_ptr())),
        )
    }
}

/// The rights check's client context: logs the client's errors and keeps the first one that
/// will not go away by waiting (authentication, TLS), which ends the call.
#[derive(Debug, Default)]
struct Watch {
    failure: Mutex<Option<(RDKafkaErrorCode, String)>>,
}

impl Watch {
    fn failure(&self) -> Option<(RDKafkaErrorCode, String)> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ClientContext for Watch {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "librdkafka error during the rights check");
        if let Some(code @ (RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL)) =
            error.rdkafka_error_code()
        {
            self.failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_with(|| (code, reason.to_owned()));
        }
    }
}

impl ProducerContext for Watch {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// A result queue of its own (`rd_kafka_queue_new`), destroyed on drop; it cannot outlive the
/// client `'c`.
struct Queue<'c> {
    ptr: NonNull<rd::rd_kafka_queue_t>,
    _client: PhantomData<&'c BaseProducer<Watch>>,
}

impl<'c> Queue<'c> {
    fn new(client: &'c BaseProducer<Watch>) -> Result<Self, RightsError> {
        // SAFETY: the client's `rd_kafka_t` is live for `'c`.
        let ptr = unsafe { rd::rd_kafka_queue_new(client.client().native_ptr()) };
        let ptr = NonNull::new(ptr).ok_or_else(|| RightsError::Request {
            code: RDKafkaErrorCode::Fail,
            message: "librdkafka could not create a queue".to_owned(),
        })?;
        Ok(Queue {
            ptr,
            _client: PhantomData,
        })
    }

    /// The next event, waiting up to `timeout`.
    fn poll(&self, timeout: Duration) -> Option<Event<'_>> {
        let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: the queue is live; the event returned (if any) is the caller's to destroy,
        // which `Event` does.
        let ptr = unsafe { rd::rd_kafka_queue_poll(self.ptr.as_ptr(), timeout_ms) };
        NonNull::new(ptr).map(|ptr| Event {
            ptr,
            _queue: PhantomData,
        })
    }
}

impl Drop for Queue<'_> {
    fn drop(&mut self) {
        // SAFETY: created by `rd_kafka_queue_new`, destroyed once; a request still outstanding
        // holds its own reference to the queue.
        unsafe { rd::rd_kafka_queue_destroy(self.ptr.as_ptr()) }
    }
}

impl fmt::Debug for Queue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Queue").field(&self.ptr).finish()
    }
}

/// An event polled from a [`Queue`], destroyed on drop (with the results it owns).
struct Event<'q> {
    ptr: NonNull<rd::rd_kafka_event_t>,
    _queue: PhantomData<&'q Queue<'q>>,
}

impl Event<'_> {
    fn kind(&self) -> rd::rd_kafka_event_type_t {
        // SAFETY: the event is live.
        unsafe { rd::rd_kafka_event_type(self.ptr.as_ptr()) }
    }

    /// The request-level error, if any.
    fn error(&self) -> Option<(RDKafkaErrorCode, String)> {
        // SAFETY: the event is live.
        let code: RDKafkaErrorCode = unsafe { rd::rd_kafka_event_error(self.ptr.as_ptr()) }.into();
        if code == RDKafkaErrorCode::NoError {
            return None;
        }
        // SAFETY: the event is live; its error string (NULL or owned by the event) is copied.
        let message = unsafe { owned_string(rd::rd_kafka_event_error_string(self.ptr.as_ptr())) };
        Some((code, message))
    }
}

impl Drop for Event<'_> {
    fn drop(&mut self) {
        // SAFETY: returned by `rd_kafka_queue_poll`, destroyed once; nothing borrowed from it
        // outlives `self` (`owned_by` ties the borrows to it).
        unsafe { rd::rd_kafka_event_destroy(self.ptr.as_ptr()) }
    }
}

impl fmt::Debug for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Event").field(&self.ptr).finish()
    }
}

/// Admin options (`rd_kafka_AdminOptions_new`) asking for the authorized operations, destroyed on
/// drop; they cannot outlive the client `'c`.
struct AdminOptions<'c> {
    ptr: NonNull<rd::rd_kafka_AdminOptions_t>,
    _client: PhantomData<&'c BaseProducer<Watch>>,
}

impl<'c> AdminOptions<'c> {
    fn new(
        client: &'c BaseProducer<Watch>,
        op: rd::rd_kafka_admin_op_t,
        timeout: Duration,
    ) -> Result<Self, RightsError> {
        // SAFETY: the client's `rd_kafka_t` is live for `'c`.
        let ptr = unsafe { rd::rd_kafka_AdminOptions_new(client.client().native_ptr(), op) };
        let options = AdminOptions {
            ptr: NonNull::new(ptr).ok_or_else(|| RightsError::Request {
                code: RDKafkaErrorCode::Fail,
                message: "librdkafka could not create admin options".to_owned(),
            })?,
            _client: PhantomData,
        };

        // SAFETY: the options are live; the error returned (NULL on success) is ours to destroy.
        let error = unsafe { rd::rd_kafka_AdminOptions_set_include_authorized_operations(ptr, 1) };
        if let Some(error) = NonNull::new(error) {
            // SAFETY: `error` is live until destroyed right after being read.
            let (code, message) = unsafe {
                let read = read_error(error);
                rd::rd_kafka_error_destroy(error.as_ptr());
                read
            };
            return Err(RightsError::Request { code, message });
        }

        let timeout_ms = c_int::try_from(timeout.as_millis().max(1)).unwrap_or(c_int::MAX);
        let mut errstr = [0 as c_char; 512];
        // SAFETY: the options are live and `errstr` is a writable buffer of the given size.
        let code = unsafe {
            rd::rd_kafka_AdminOptions_set_request_timeout(
                ptr,
                timeout_ms,
                errstr.as_mut_ptr(),
                errstr.len(),
            )
        };
        let code = RDKafkaErrorCode::from(code);
        if code != RDKafkaErrorCode::NoError {
            let message: Vec<u8> = errstr
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            return Err(RightsError::Request {
                code,
                message: String::from_utf8_lossy(&message).into_owned(),
            });
        }
        Ok(options)
    }
}

impl Drop for AdminOptions<'_> {
    fn drop(&mut self) {
        // SAFETY: created by `rd_kafka_AdminOptions_new`, destroyed once; requests keep copies.
        unsafe { rd::rd_kafka_AdminOptions_destroy(self.ptr.as_ptr()) }
    }
}

impl fmt::Debug for AdminOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AdminOptions").field(&self.ptr).finish()
    }
}

/// The topic names to describe (`rd_kafka_TopicCollection_of_topic_names`), destroyed on drop.
struct TopicCollection {
    ptr: NonNull<rd::rd_kafka_TopicCollection_t>,
}

impl TopicCollection {
    fn of_names(names: &mut [*const c_char]) -> Result<Self, RightsError> {
        // SAFETY: `names` holds `names.len()` pointers to live NUL-terminated strings, which
        // librdkafka duplicates (it does not write through the array).
        let ptr =
            unsafe { rd::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), names.len()) };
        NonNull::new(ptr)
            .map(|ptr| TopicCollection { ptr })
            .ok_or_else(|| RightsError::Request {
                code: RDKafkaErrorCode::Fail,
                message: "librdkafka could not create a topic collection".to_owned(),
            })
    }
}

impl Drop for TopicCollection {
    fn drop(&mut self) {
        // SAFETY: created by `rd_kafka_TopicCollection_of_topic_names`, destroyed once; the
        // request keeps its own copy of the names.
        unsafe { rd::rd_kafka_TopicCollection_destroy(self.ptr.as_ptr()) }
    }
}

impl fmt::Debug for TopicCollection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TopicCollection").field(&self.ptr).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rights(operations: &[Operation]) -> Rights {
        Rights {
            name: "t".to_owned(),
            error: None,
            operations: operations.to_vec(),
        }
    }

    #[test]
    fn operations_display_as_kafka_names() {
        assert_eq!(Operation::Read.to_string(), "READ");
        assert_eq!(Operation::DescribeConfigs.to_string(), "DESCRIBE_CONFIGS");
        assert_eq!(Operation::IdempotentWrite.to_string(), "IDEMPOTENT_WRITE");
        assert_eq!(Operation::ClusterAction.to_string(), "CLUSTER_ACTION");
    }

    #[test]
    fn raw_operations_map_to_operations() {
        for (raw, op) in [
            (
                RawOperation::RD_KAFKA_ACL_OPERATION_UNKNOWN,
                Operation::Unknown,
            ),
            (RawOperation::RD_KAFKA_ACL_OPERATION_ANY, Operation::Any),
            (RawOperation::RD_KAFKA_ACL_OPERATION_ALL, Operation::All),
            (RawOperation::RD_KAFKA_ACL_OPERATION_READ, Operation::Read),
            (RawOperation::RD_KAFKA_ACL_OPERATION_WRITE, Operation::Write),
            (
                RawOperation::RD_KAFKA_ACL_OPERATION_CREATE,
                Operation::Create,
            ),
            (
                RawOperation::RD_KAFKA_ACL_OPERATION_DELETE,
                Operation::Delete,
            ),
            (RawOperation::RD_KAFKA_ACL_OPERATION_ALTER, Operation::Alter),
            (
                RawOperation::RD_KAFKA_ACL_OPERATION_DESCRIBE,
                Operation::Describe,
            ),
            (
                RawOperation::RD_KAFKA_ACL_OPERATION_CLUSTER_ACTION,
                Operation::ClusterAction,
            ),
            (
                RawOperation::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS,
                Operation::DescribeConfigs,
            ),
            (
                RawOperation::RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS,
                Operation::AlterConfigs,
            ),
            (
                RawOperation::RD_KAFKA_ACL_OPERATION_IDEMPOTENT_WRITE,
                Operation::IdempotentWrite,
            ),
        ] {
            assert_eq!(Operation::from_raw(raw as u32), op, "{raw:?}");
        }
        assert_eq!(Operation::from_raw(13), Operation::Unknown);
        assert_eq!(Operation::from_raw(u32::MAX), Operation::Unknown);
    }

    #[test]
    fn allows_what_is_reported() {
        let read = rights(&[Operation::Read, Operation::Describe]);
        assert!(read.allows(Operation::Read));
        assert!(read.allows(Operation::Describe));
        assert!(!read.allows(Operation::Write));
        assert!(!read.allows(Operation::DescribeConfigs));
        assert!(read.allows(Operation::Any));
        assert!(!read.allows(Operation::Unknown));
    }

    #[test]
    fn allows_what_kafka_implies() {
        for op in [
            Operation::Read,
            Operation::Write,
            Operation::Delete,
            Operation::Alter,
        ] {
            let rights = rights(&[op]);
            assert!(rights.allows(Operation::Describe), "{op} implies DESCRIBE");
            assert!(
                !rights.allows(Operation::Create),
                "{op} does not imply CREATE"
            );
        }
        assert!(!rights(&[Operation::Create]).allows(Operation::Describe));
        assert!(rights(&[Operation::AlterConfigs]).allows(Operation::DescribeConfigs));
        assert!(!rights(&[Operation::DescribeConfigs]).allows(Operation::AlterConfigs));
        assert!(!rights(&[Operation::Describe]).allows(Operation::Read));

        let all = rights(&[Operation::All]);
        for op in [
            Operation::Read,
            Operation::Write,
            Operation::Create,
            Operation::Delete,
            Operation::Alter,
            Operation::Describe,
            Operation::ClusterAction,
            Operation::DescribeConfigs,
            Operation::AlterConfigs,
            Operation::IdempotentWrite,
            Operation::Any,
        ] {
            assert!(all.allows(op), "ALL implies {op}");
        }
        assert!(!all.allows(Operation::Unknown));
    }

    #[test]
    fn nothing_is_allowed_without_operations() {
        let refused = Rights {
            name: "t".to_owned(),
            error: Some((
                RDKafkaErrorCode::TopicAuthorizationFailed,
                "Broker: Topic authorization failed".to_owned(),
            )),
            operations: Vec::new(),
        };
        assert!(!refused.allows(Operation::Describe));
        assert!(!refused.allows(Operation::Any));
        assert!(!rights(&[Operation::Unknown]).allows(Operation::Any));
    }

    #[test]
    fn empty_input_makes_no_request() {
        // No bootstrap servers at all: a request would fail or time out.
        let config = ClientConfig::new();
        let topics = topic_rights(&config, &[], Duration::from_millis(1));
        assert!(matches!(topics.as_deref(), Ok([])), "{topics:?}");
        let groups = group_rights(&config, &[], Duration::from_millis(1));
        assert!(matches!(groups.as_deref(), Ok([])), "{groups:?}");
    }

    #[test]
    fn a_nul_in_a_name_is_refused_before_connecting() {
        let config = ClientConfig::new();
        let result = topic_rights(&config, &["a\0b"], Duration::from_secs(1));
        assert!(
            matches!(
                result,
                Err(RightsError::Request {
                    code: RDKafkaErrorCode::InvalidArgument,
                    ..
                })
            ),
            "{result:?}"
        );
    }
}
