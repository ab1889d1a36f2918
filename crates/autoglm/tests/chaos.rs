//! The chaos test: records copied through several instances of the real binary while they are
//! killed, restarted, added and removed and the broker is bounced, then checked against an
//! independent oracle.
//!
//! Sizes come from the environment (`make chaos` sets them; the defaults are the short run that
//! `make test` includes):
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `CHAOS_RECORDS` | 100000 | input records |
//! | `CHAOS_KEYS` | 2000 | distinct keys |
//! | `CHAOS_PARTITIONS` | 6 | input (and changelog) partitions |
//! | `CHAOS_KILLS` | 10 | at least this many `kill -9` of an instance |
//! | `CHAOS_SEED` | 1 | seeds the input and the fault schedule |
//!
//! Faults, one tick every 3–10 s: each tick kills a random instance with SIGKILL and restarts
//! it; tick 2 and 6 also restart one cleanly (SIGTERM), tick 3 adds a fourth instance and tick
//! 7 removes it, tick 4 kills the broker with SIGKILL and starts it, tick 8 stops and starts it
//! cleanly, and on tick 5 an instance is restarted with a crash point that aborts it inside a
//! transaction that has produced output (random kills alone may all land between
//! transactions). Stalls and partitions, which leave a live instance behind that wakes into a
//! group that moved on:
//! - tick 9 and 13 stop an instance (SIGSTOP, its heartbeats too) for 12 s (past its session)
//!   and 22 s (past the transaction timeout too), then continue it (SIGCONT);
//! - tick 11 restarts one with a stop point that stops it inside an open transaction with
//!   output (`AUTOGLM_STOP_AT=after_produce:3`), continued 22 s later;
//! - tick 10 and 12 cut one instance's broker connections (every instance reaches the broker
//!   through a proxy, `KafkaCuts`) for 15 s and 5 s.
//!
//! An instance that exits on its own (a fatal error during a broker bounce, fenced after a
//! stall) is started again, as a supervisor would, and counted. At the end a fresh instance
//! with an empty store rebuilds the whole state from the changelog, and the report gives its
//! time.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use autoglm_demo::read_uncommitted;
use autoglm_state::{KvBackend, RocksBackend, RocksOptions, StateEntry, route_prefix};
use autoglm_tests::{KafkaCuts, kafka_tool, repo_root, stack};
use common::{Job, check, expected, input, number, signal, terminate, until_stopped};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// Fault ticks at least (the schedule in the module doc).
const TICKS: usize = 13;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn checker_passes_the_oracle_itself() {
    let want = BTreeMap::from([("1".to_owned(), vec!["1".into(), "3".into(), "3†".into()])]);
    assert!(check(&want, &want).clean());
}

#[test]
fn checker_catches_a_duplicated_record() {
    let want = BTreeMap::from([("1".to_owned(), vec!["1".into(), "3".into()])]);
    let got = BTreeMap::from([("1".to_owned(), vec!["1".into(), "3".into(), "3".into()])]);
    assert_eq!(check(&want, &got).duplicates, 1);
}

#[test]
fn checker_catches_a_missing_record() {
    let want = BTreeMap::from([
        ("1".to_owned(), vec!["1".into(), "3".into()]),
        ("2".to_owned(), vec!["5".into()]),
    ]);
    let got = BTreeMap::from([("1".to_owned(), vec!["1".into(), "3".into()])]);
    assert_eq!(check(&want, &got).missing, 1);
}

#[test]
fn checker_catches_a_stale_overwrite() {
    let want = BTreeMap::from([("1".to_owned(), vec!["1".into(), "3".into()])]);
    // Version 2 was stale (the oracle dropped it) and arrived after 3.
    let got = BTreeMap::from([("1".to_owned(), vec!["1".into(), "3".into(), "2".into()])]);
    let verdict = check(&want, &got);
    assert_eq!((verdict.stale, verdict.unexpected), (1, 1));
    // A late update resurrecting a deleted row.
    let want = BTreeMap::from([("1".to_owned(), vec!["4".into(), "4†".into()])]);
    let got = BTreeMap::from([("1".to_owned(), vec!["4".into(), "4†".into(), "4".into()])]);
    assert!(!check(&want, &got).clean());
}

/// A `name=value` number of a log line (0 when absent).
fn field(line: &str, name: &str) -> u64 {
    line.split(&format!("{name}="))
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn stack_sh(args: &[&str]) {
    let status = Command::new("bash")
        .arg(repo_root().join("deploy/local/stack.sh"))
        .args(args)
        .status()
        .expect("stack.sh");
    assert!(status.success(), "stack.sh {args:?} failed");
}

/// The running instances and what happened to them.
struct Fleet<'j> {
    job: &'j Job,
    /// Every instance reaches the broker through it.
    cuts: &'j KafkaCuts,
    running: BTreeMap<usize, Child>,
    runs: usize,
    kills: usize,
    clean_restarts: usize,
    unexpected_exits: usize,
    /// Stopped (SIGSTOP) instances and when to continue them.
    stopped: BTreeMap<usize, Instant>,
    /// Cut-off instances and when to heal them.
    cut: BTreeMap<usize, Instant>,
    stops: usize,
    cuts_made: usize,
}

/// A failed assertion must not leave instances running: they stay in the group, poll the broker
/// and take CPU from whatever runs next (a later `make bench` measured four of them).
impl Drop for Fleet<'_> {
    fn drop(&mut self) {
        for child in self.running.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl<'j> Fleet<'j> {
    fn start(&mut self, instance: usize) {
        self.start_with(instance, &[]);
    }

    fn start_with(&mut self, instance: usize, env: &[(&str, &str)]) {
        let proxy = self.cuts.addr().to_string();
        let mut all = vec![("AUTOGLM__KAFKA__BOOTSTRAP_SERVERS", proxy.as_str())];
        all.extend_from_slice(env);
        let child = self
            .job
            .start_instance_with(self.runs, instance, 3_600, &all);
        self.runs += 1;
        self.running.insert(instance, child);
    }

    /// Instances that are neither stopped nor cut off.
    fn healthy(&self) -> Vec<usize> {
        self.running
            .keys()
            .copied()
            .filter(|id| !self.stopped.contains_key(id) && !self.cut.contains_key(id))
            .collect()
    }

    /// Stops `instance` (SIGSTOP) for `secs`.
    fn stall(&mut self, instance: usize, secs: u64) {
        if let Some(child) = self.running.get(&instance) {
            signal(child, "-STOP");
            self.stopped
                .insert(instance, Instant::now() + Duration::from_secs(secs));
            self.stops += 1;
        }
    }

    /// Cuts `instance`'s broker connections for `secs`.
    fn partition(&mut self, instance: usize, secs: u64) {
        self.cuts.cut(&format!("autoglm-{instance}"));
        self.cut
            .insert(instance, Instant::now() + Duration::from_secs(secs));
        self.cuts_made += 1;
    }

    /// Continues the stopped instances and heals the cuts that are due.
    fn wake(&mut self) {
        let now = Instant::now();
        let due = |at: &Instant| *at <= now;
        let stopped: Vec<usize> = self
            .stopped
            .iter()
            .filter(|(_, at)| due(at))
            .map(|(id, _)| *id)
            .collect();
        for id in stopped {
            self.stopped.remove(&id);
            if let Some(child) = self.running.get(&id) {
                signal(child, "-CONT");
            }
        }
        let cut: Vec<usize> = self
            .cut
            .iter()
            .filter(|(_, at)| due(at))
            .map(|(id, _)| *id)
            .collect();
        for id in cut {
            self.cut.remove(&id);
            self.cuts.heal(&format!("autoglm-{id}"));
        }
    }

    fn kill(&mut self, instance: usize) {
        self.stopped.remove(&instance);
        if let Some(mut child) = self.running.remove(&instance) {
            let _ = child.kill();
            let _ = child.wait();
            self.kills += 1;
        }
    }

    fn stop(&mut self, instance: usize) {
        if self.stopped.remove(&instance).is_some()
            && let Some(child) = self.running.get(&instance)
        {
            signal(child, "-CONT");
        }
        if let Some(mut child) = self.running.remove(&instance) {
            terminate(&mut child);
        }
    }

    /// Starts again every instance that exited on its own.
    fn supervise(&mut self) {
        let exited: Vec<usize> = self
            .running
            .iter_mut()
            .filter_map(|(id, child)| child.try_wait().ok().flatten().map(|_| *id))
            .collect();
        for instance in exited {
            self.running.remove(&instance);
            self.unexpected_exits += 1;
            self.start(instance);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_copies_every_accepted_version_exactly_once() {
    let records: usize = env_or("CHAOS_RECORDS", 100_000);
    let keys: u64 = env_or("CHAOS_KEYS", 2_000);
    let partitions: i32 = env_or("CHAOS_PARTITIONS", 6);
    let min_kills: usize = env_or("CHAOS_KILLS", 10);
    let seed: u64 = env_or("CHAOS_SEED", 1);
    let started = Instant::now();

    let stack = stack().await;
    let job = Job::with_partitions(&stack, "flush_interval_ms: 100", 2_000, partitions).await;
    let cuts = KafkaCuts::for_stack().await;
    let input = input(seed, records, keys, true);
    let fed = AtomicBool::new(false);

    // The input arrives over the expected length of the fault schedule (ticks of 6.5 s on
    // average), so that kills meet a flowing stream and open transactions.
    let feed = async {
        let expected_ms = 6_500 * min_kills.max(TICKS) as u64;
        let pace = Duration::from_millis(expected_ms / (input.len() / 1_000).max(1) as u64);
        for chunk in input.chunks(1_000) {
            let sent = Instant::now();
            job.produce(chunk).await;
            tokio::time::sleep(pace.saturating_sub(sent.elapsed())).await;
        }
        fed.store(true, Ordering::SeqCst);
    };
    let mut fleet = Fleet {
        job: &job,
        cuts: &cuts,
        running: BTreeMap::new(),
        runs: 0,
        kills: 0,
        clean_restarts: 0,
        unexpected_exits: 0,
        stopped: BTreeMap::new(),
        cut: BTreeMap::new(),
        stops: 0,
        cuts_made: 0,
    };
    let mut bounces = Vec::new();
    let chaos = async {
        let mut rng = fastrand::Rng::with_seed(seed);
        for instance in 0..3 {
            fleet.start(instance);
        }
        let mut tick = 0;
        while !fed.load(Ordering::SeqCst) || fleet.kills < min_kills || tick < TICKS {
            tokio::time::sleep(Duration::from_millis(rng.u64(3_000..10_000))).await;
            tick += 1;
            fleet.wake();
            fleet.supervise();
            // Faults land on healthy instances: a stopped or cut-off one keeps its stall.
            let ids = fleet.healthy();
            if ids.is_empty() {
                continue;
            }
            let victim = ids[rng.usize(0..ids.len())];
            fleet.kill(victim);
            fleet.start(victim);
            let other = ids[rng.usize(0..ids.len())];
            match tick {
                2 | 6 => {
                    fleet.stop(other);
                    fleet.start(other);
                    fleet.clean_restarts += 1;
                }
                3 => fleet.start(3),
                5 => {
                    // A kill that certainly meets an open transaction with output in it: the
                    // instance aborts itself (no cleanup) right after producing its second
                    // batch; the supervisor starts it again.
                    fleet.kill(other);
                    fleet.start_with(other, &[("AUTOGLM_CRASH_AT", "after_produce:2")]);
                }
                7 => fleet.stop(3),
                4 => {
                    stack_sh(&["bounce-kafka", "hard"]);
                    bounces.push("hard");
                }
                8 => {
                    stack_sh(&["bounce-kafka", "clean"]);
                    bounces.push("clean");
                }
                9 => fleet.stall(other, 12),
                13 => fleet.stall(other, 22),
                10 => fleet.partition(other, 15),
                12 => fleet.partition(other, 5),
                11 => {
                    // A stall that certainly meets an open transaction with output in it.
                    fleet.kill(other);
                    fleet.start_with(other, &[("AUTOGLM_STOP_AT", "after_produce:3")]);
                    until_stopped(&fleet.running[&other], &job.log(fleet.runs - 1)).await;
                    fleet
                        .stopped
                        .insert(other, Instant::now() + Duration::from_secs(22));
                    fleet.stops += 1;
                }
                _ => {}
            }
        }
        // The last stalls run their course; an instance fenced when it woke is started again.
        while !fleet.stopped.is_empty() || !fleet.cut.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            fleet.wake();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        fleet.supervise();
    };
    tokio::join!(feed, chaos);
    let fault_secs = started.elapsed().as_secs();

    // Drain: stop everyone cleanly, then let the three instances finish the input.
    let ids: Vec<usize> = fleet.running.keys().copied().collect();
    for id in ids {
        fleet.stop(id);
    }
    let drains: Vec<(usize, Child)> = (0..3)
        .map(|instance| {
            let run = fleet.runs + instance;
            (run, job.start_instance(run, instance, 25))
        })
        .collect();
    for (run, child) in drains {
        let status = job.exit_of(child, run).await;
        assert!(status.success(), "a draining instance failed: {status}");
    }

    // 1. The target against the oracle.
    let want = expected(&input);
    let (got, count) = job.output().await;
    let verdict = check(&want, &got);

    // 2. No transaction of this group is left open.
    let listing = kafka_tool(
        "org.apache.kafka.tools.TransactionsCommand",
        &["--bootstrap-server", &stack.bootstrap, "list"],
    );
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let ours: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with(&format!("{}-", job.group)))
        .collect();
    let open: Vec<&&str> = ours
        .iter()
        .filter(|l| l.contains("Ongoing") || l.contains("Prepare"))
        .collect();

    // 3. The group's committed offsets are the input's end offsets.
    let probe: BaseConsumer = stack
        .kafka()
        .client_config()
        .set("group.id", &job.group)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(&job.source, partition);
    }
    let committed = probe
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    let mut lagging = Vec::new();
    for element in committed.elements() {
        let (_, end) = probe
            .fetch_watermarks(&job.source, element.partition(), Duration::from_secs(10))
            .expect("watermarks");
        if element.offset() != Offset::Offset(end) {
            lagging.push((element.partition(), element.offset(), end));
        }
    }

    // 4. The instances' stores agree with the output: per key, the newest stored version is
    // the last one written, and no store holds a newer one.
    let mut stored: BTreeMap<String, (i64, bool)> = BTreeMap::new();
    for instance in 0..4 {
        let dir = job.dir().join(format!("state-{instance}"));
        if !dir.exists() {
            continue;
        }
        let backend = RocksBackend::open(&dir, RocksOptions::default()).expect("open store");
        let prefix = route_prefix("accounts");
        let mut after = None;
        loop {
            let page = backend
                .scan_prefix(prefix.clone(), after.clone(), 10_000)
                .await
                .expect("scan");
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, value) in &page {
                let entry = StateEntry::decode(value).expect("entry");
                let ids: Vec<serde_json::Value> =
                    serde_json::from_slice(&key[prefix.len()..]).expect("entity key");
                let version = (entry.version.0[0] ^ (1 << 63)) as i64;
                let slot = stored
                    .entry(ids[0].to_string())
                    .or_insert((i64::MIN, false));
                *slot = (*slot).max((version, entry.deleted));
            }
        }
        backend.close().await.expect("close store");
    }
    let disagreeing = got
        .iter()
        .filter(|(key, entries)| {
            let last = entries.last().expect("non-empty");
            stored.get(*key) != Some(&(number(last), last.ends_with('†')))
        })
        .count();

    // 5. Kills met open transactions: their aborted records are visible read_uncommitted.
    let everything = read_uncommitted(job.kafka(), None, &job.target, Duration::from_secs(3))
        .await
        .expect("read uncommitted");

    // 6. A store lost for good: a fresh instance alone rebuilds every partition from the
    // changelog (the whole changelog, not a tail).
    let fresh = fleet.runs + 3;
    let rebuild = job.start_instance(fresh, 9, 20);
    let _ = job.exit_of(rebuild, fresh).await;
    let rebuild_log = std::fs::read_to_string(job.log(fresh)).unwrap_or_default();
    let rebuilt = rebuild_log
        .lines()
        .filter(|l| l.contains("state restored"))
        .map(|line| (field(line, "records"), field(line, "elapsed_ms")))
        .fold((0, 0), |(r, ms), (r2, ms2)| (r + r2, ms + ms2));

    let mut rebalances = 0;
    let mut restores: Vec<(u64, u64)> = Vec::new();
    for run in 0..fleet.runs + 3 {
        let log = std::fs::read_to_string(job.log(run)).unwrap_or_default();
        rebalances += log.matches("partitions assigned").count();
        for line in log.lines().filter(|l| l.contains("state restored")) {
            restores.push((field(line, "records"), field(line, "elapsed_ms")));
        }
    }
    let slowest = restores
        .iter()
        .max_by_key(|(_, ms)| *ms)
        .copied()
        .unwrap_or((0, 0));
    println!(
        "chaos: {records} records over {keys} keys and {partitions} partitions, seed {seed}\n\
         chaos: {fault_secs} s of faults, {} s in all; {} kills (SIGKILL), {} clean restarts, \
         1 instance added and removed, broker bounces {bounces:?}, {} stalls (SIGSTOP), {} cuts ({} connections stalled), \
         {} exits restarted (the crash point; fenced after a stall)\n\
         chaos: {rebalances} assignments, {} restores (slowest: {} records in {} ms); \
         a fresh store rebuilt {} state entries ({} keys) in {} ms\n\
         chaos: output {count} records, expected {}; duplicates {}, losses {}, stale overwrites {}, \
         unexpected {}; open transactions {}; lagging partitions {}; store disagreements {}; \
         aborted records seen read_uncommitted {}",
        started.elapsed().as_secs(),
        fleet.kills,
        fleet.clean_restarts,
        fleet.stops,
        fleet.cuts_made,
        cuts.stalled(),
        fleet.unexpected_exits,
        restores.len(),
        slowest.0,
        slowest.1,
        rebuilt.0,
        stored.len(),
        rebuilt.1,
        want.values().map(Vec::len).sum::<usize>(),
        verdict.duplicates,
        verdict.missing,
        verdict.stale,
        verdict.unexpected,
        open.len(),
        lagging.len(),
        disagreeing,
        everything.len().saturating_sub(count),
    );

    assert!(verdict.clean(), "{verdict:?}");
    assert!(
        cuts.stalled() > 0,
        "the cuts stalled no connection: nothing was cut"
    );
    assert!(fleet.kills >= min_kills);
    assert!(
        !ours.is_empty(),
        "no transactional id of the group listed:\n{listing}"
    );
    assert!(open.is_empty(), "open transactions: {open:?}");
    assert!(
        lagging.is_empty(),
        "committed offsets behind the input end: {lagging:?}"
    );
    assert_eq!(disagreeing, 0, "stores disagree with the output");
    assert!(
        everything.len() > count,
        "no kill met an open transaction (the abort path never ran)"
    );
}
