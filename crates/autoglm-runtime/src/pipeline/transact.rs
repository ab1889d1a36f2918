//! Stage 3, transact: one prepared batch in one Kafka transaction (or one offset commit, at
//! least once). Its steps, in order, each a method of [`Transaction`]:
//!
//! 0. before the transaction begins, the records whose writer schema is not fetched yet are
//!    decoded, waiting for the registry (once per schema id);
//! 1. sort: each prepared record forwarded (pass-through), counted (tombstone, truncate),
//!    dead-lettered, or kept as work, in input order; a transient or fatal registry answer
//!    fails the batch;
//! 2. guard: the version guard decides every kept record at once (one `multi_get`; later
//!    records of a key see earlier ones);
//! 3. emit: the accepted records' outputs, in input order; a row a target cannot encode, or an
//!    output larger than its topic takes (the `sizes` module), is dead-lettered for that target;
//! 4. send: the outputs and the accepted state entries (to the changelog), on all cores;
//! 5. acks: every record acknowledged, while the next batch is prepared;
//! 6. commit (the `commit` module): the input offsets, in the transaction.
//!
//! Data flow: [`Prepared`] records ─► [`Work`] ─► guard decisions ─► [`Outgoing`] records ─►
//! the producer ─► the changelog checkpoints, for the state write that follows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use autoglm_codec::CodecError;
use autoglm_core::{Classify, ErrorClass};
use autoglm_state::{BatchOutcome, Decision, GuardInput, RocksBackend, VersionGuard};
use foldhash::HashMapExt as _;
use rayon::prelude::*;
use rdkafka::message::{Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::Producer;

use super::output::{ChangelogEntry, Outgoing, Output};
use super::poll::{Member, Polled};
use super::prepare::{Mapped, Prepared, Work};
use super::{BatchError, Pipeline, RunError, RunSummary, Transient, now_ms};
use crate::acks::AckingProducer;
use crate::metrics::{Stage, Tally};
use crate::traces::{Decided, RecordSpans};

/// Changelog checkpoints: `(topic, partition, next offset)`.
pub(super) type Checkpoints = Vec<(String, i32, i64)>;

/// Which changelog partition each accepted state key goes to: its route, and its input
/// record's partition.
type ChangelogPartitions<'w> = foldhash::HashMap<&'w [u8], (usize, i32)>;

impl Pipeline {
    /// Processes one prepared batch in one transaction (or one offset commit, at least once),
    /// and prepares the rest of `next` while the broker acknowledges the batch's records.
    /// Returns, once Kafka committed, the changelog checkpoints for the state write that
    /// follows ([`VersionGuard::commit`]).
    #[allow(
        clippy::too_many_arguments,
        reason = "the clients and the state of one consume loop"
    )]
    pub(super) async fn process(
        &self,
        batch: &[OwnedMessage],
        prepared: Vec<Prepared>,
        next: &mut Polled,
        consumer: &Arc<Member>,
        producer: &Arc<AckingProducer>,
        guard: &mut VersionGuard<RocksBackend>,
        exactly_once: bool,
        tally: &mut Tally,
        spans: &mut RecordSpans,
    ) -> Result<(RunSummary, Checkpoints), BatchError> {
        let started = Instant::now();
        // Before the transaction: a registry that is slow to answer must not hold it open past
        // transaction.timeout.ms (two 10 s lookups would, and the producer would be fenced).
        let prepared = self.decode_waiting(batch, prepared).await;
        if exactly_once {
            producer.begin_transaction()?;
        }
        fail::fail_point!("before_produce");
        let mut txn = Transaction {
            pipeline: self,
            batch,
            out: Output::new(producer, self.size_limits()),
            summary: RunSummary {
                records: batch.len() as u64,
                ..RunSummary::default()
            },
            tally,
            spans,
        };

        let mut work = txn.sort(prepared)?;
        let guarded_at = Instant::now();
        let outcome = guard.process(&guard_inputs(&work), now_ms()).await?;
        let decided_at = Instant::now();
        let mapped: Vec<Option<Mapped>> = work.iter_mut().map(|w| w.mapped.take()).collect();
        let (outgoing, partitions) = txn.emit(&work, mapped, &outcome).await?;
        let pending = guard.pending_writes();
        txn.send(&outgoing, changelog_entries(&pending, &partitions))?;
        drop(outgoing);

        // Every record acknowledged before the commit, and the changelog's offsets known. The
        // wait matters for speed too: rust-rdkafka's commit_transaction flushes first, and its
        // flush polls in 100 ms steps while anything is in flight, which made every transaction
        // last at least 100 ms. With nothing in flight the commit starts at once.
        let sent_at = Instant::now();
        let (acked, preparing) = tokio::join!(txn.out.wait_all(), async {
            let started = Instant::now();
            self.prepare_rest(next);
            started.elapsed()
        });
        // Per route and partition, then per changelog partition: what the offsets' marks say.
        let checkpoints: Checkpoints = (acked?.into_iter())
            .map(|((route, p), o)| (self.routes[route].changelog_topic.clone(), p, o))
            .collect();
        (self.marks).note_ends(checkpoints.iter().map(|(t, p, o)| ((t.clone(), *p), *o)));
        if exactly_once {
            drain_delivery_reports(producer).await;
        }
        fail::fail_point!("after_produce");
        let produced = Instant::now();
        self.commit_offsets(batch, consumer, producer, exactly_once)
            .await?;
        let committed = produced.elapsed();
        for (stage, took) in [
            (Stage::Route, guarded_at - started),
            (Stage::Guard, decided_at - guarded_at),
            (Stage::Send, sent_at - decided_at),
            (Stage::Acks, produced - sent_at),
            (Stage::Commit, committed),
        ] {
            self.metrics.stage(stage, took);
        }
        let summary = txn.summary;
        tracing::debug!(
            records = summary.records,
            process_ms = (produced - started).as_secs_f64() * 1e3,
            route_ms = (guarded_at - started).as_secs_f64() * 1e3,
            guard_ms = (decided_at - guarded_at).as_secs_f64() * 1e3,
            send_ms = (sent_at - decided_at).as_secs_f64() * 1e3,
            acks_ms = (produced - sent_at).as_secs_f64() * 1e3,
            next_prepare_ms = preparing.as_secs_f64() * 1e3,
            commit_ms = committed.as_secs_f64() * 1e3,
            "batch committed"
        );
        Ok((summary, checkpoints))
    }
}

/// One batch's transaction under way: the records, what was produced so far, and the counts.
struct Transaction<'b> {
    pipeline: &'b Pipeline,
    batch: &'b [OwnedMessage],
    out: Output<'b>,
    summary: RunSummary,
    tally: &'b mut Tally,
    spans: &'b mut RecordSpans,
}

impl<'b> Transaction<'b> {
    /// Step 1: in input order, forwards, counts or dead-letters each prepared record, and
    /// returns the rest, for the guard. Poison goes to the DLQ right away.
    fn sort(&mut self, prepared: Vec<Prepared>) -> Result<Vec<Work>, BatchError> {
        let pipeline = self.pipeline;
        let mut work = Vec::with_capacity(self.batch.len());
        for (at, prepared) in prepared.into_iter().enumerate() {
            let msg = &self.batch[at];
            match prepared {
                // A missing schema is left only behind a record that fails the batch.
                Prepared::Unrouted | Prepared::SchemaMissing(_) => {}
                Prepared::PassThrough(route_index) => {
                    self.tally.input(route_index);
                    let route = &pipeline.routes[route_index];
                    self.out
                        .forward(route.targets[0].topic(), msg, OwnedHeaders::new())?;
                    self.summary.emitted += 1;
                    self.tally.emitted(route_index, 0);
                }
                Prepared::Tombstone(route_index) => {
                    self.tally.input(route_index);
                    self.spans
                        .record(msg, &pipeline.routes[route_index], Decided::Tombstone);
                    self.summary.tombstones += 1;
                    self.tally.tombstone(route_index);
                }
                Prepared::Truncate(route_index) => {
                    self.tally.input(route_index);
                    let route = &pipeline.routes[route_index];
                    tracing::warn!(route = %route.name, "truncate events are not propagated");
                }
                Prepared::Transient(reason) => {
                    return Err(BatchError::Transient(Transient(reason)));
                }
                Prepared::Fatal(e) => return Err(BatchError::Fatal(RunError::Registry(e))),
                Prepared::DeadLetter(route_index, poison) => {
                    self.tally.input(route_index);
                    let route = &pipeline.routes[route_index];
                    let trace = self.spans.record(
                        msg,
                        route,
                        Decided::DeadLettered {
                            class: poison.class.as_str(),
                            rule: &poison.rule,
                            message: &poison.message,
                        },
                    );
                    self.out.dead_letter(
                        route,
                        msg,
                        &poison.class,
                        &poison.message,
                        &poison.rule,
                        &poison.field,
                        trace.as_deref(),
                    )?;
                    self.summary.dead_lettered += 1;
                    self.tally.dead_letter(route_index, poison.class);
                }
                Prepared::Work(mut w) => {
                    w.at = at;
                    self.tally.input(w.route);
                    work.push(w);
                }
            }
        }
        Ok(work)
    }

    /// Step 3: the output records of the accepted work, in input order, with the changelog
    /// partition of each accepted state key. A dropped record is counted (and audited, if its
    /// route says so); a row a target cannot encode is dead-lettered for that target.
    async fn emit<'w>(
        &mut self,
        work: &'w [Work],
        mapped: Vec<Option<Mapped>>,
        outcome: &BatchOutcome,
    ) -> Result<(Vec<Outgoing<'w>>, ChangelogPartitions<'w>), BatchError>
    where
        'b: 'w,
    {
        let pipeline = self.pipeline;
        let mut partitions = ChangelogPartitions::with_capacity(work.len());
        let mut outgoing = Vec::with_capacity(work.len());
        for (((w, decision), version), mapped) in work
            .iter()
            .zip(&outcome.decisions)
            .zip(&outcome.versions)
            .zip(mapped)
        {
            let msg = &self.batch[w.at];
            let route = &pipeline.routes[w.route];
            // An unversioned delete takes the version of the row it deletes.
            let version = version.map_or_else(String::new, |v| route.version_label(v));
            self.tally.decision(w.route, *decision);
            if *decision != Decision::Accept {
                self.spans.record(
                    msg,
                    route,
                    Decided::Dropped {
                        decision: decision.as_str(),
                        version: &version,
                    },
                );
                self.summary.dropped += 1;
                if let Some(audit) = &route.audit_topic {
                    self.out.audit(audit, msg, decision.as_str(), &version)?;
                }
                continue;
            }
            partitions.insert(&w.state_key, (w.route, msg.partition()));
            let trace = self
                .spans
                .record(msg, route, Decided::Accepted { version: &version });
            let encoded: Vec<Option<Result<Vec<u8>, CodecError>>> = match mapped {
                Some(Mapped::Encoded(encoded)) => encoded.into_iter().map(Some).collect(),
                Some(Mapped::Row(row)) => {
                    let mut encoded = Vec::with_capacity(route.targets.len());
                    for target in &route.targets {
                        encoded.push(Some(target.encode(&row).await));
                    }
                    encoded
                }
                // A delete written as a tombstone.
                None => route.targets.iter().map(|_| None).collect(),
            };
            for ((t, target), encoded) in route.targets.iter().enumerate().zip(encoded) {
                let payload = match encoded {
                    Some(Ok(bytes)) => Some(bytes),
                    Some(Err(e)) if e.class() == ErrorClass::Transient => {
                        return Err(BatchError::Transient(Transient(format!("encode: {e}"))));
                    }
                    Some(Err(e)) => {
                        let message = e.to_string();
                        self.spans
                            .dead_lettered_last(target.topic(), e.class().as_str(), &message);
                        self.out.dead_letter(
                            route,
                            msg,
                            &e.class(),
                            &message,
                            "encode",
                            target.topic(),
                            trace.as_deref(),
                        )?;
                        self.summary.dead_lettered += 1;
                        self.tally.dead_letter(w.route, e.class());
                        continue;
                    }
                    None => None,
                };
                let output = Outgoing {
                    topic: target.topic(),
                    key: &w.output_key,
                    payload,
                    source: msg,
                    op: w.event.op.as_str(),
                    version: version.clone(),
                    lineage: route.lineage_headers,
                    trace: trace.clone(),
                };
                if let Some(message) = output.too_large(&self.out.limits) {
                    let class = ErrorClass::Poison;
                    self.spans
                        .dead_lettered_last(target.topic(), class.as_str(), &message);
                    self.out.dead_letter(
                        route,
                        msg,
                        &class,
                        &message,
                        "size",
                        target.topic(),
                        trace.as_deref(),
                    )?;
                    self.summary.dead_lettered += 1;
                    self.tally.dead_letter(w.route, class);
                    continue;
                }
                outgoing.push(output);
                self.summary.emitted += 1;
                self.tally.emitted(w.route, t);
            }
        }
        Ok((outgoing, partitions))
    }

    /// Step 4: the output records and the batch's changelog entries (in the same
    /// transaction), sent on all cores. Each key's records go out from one thread, in input
    /// order: a key's records share a partition, and only their order matters there.
    fn send(
        &mut self,
        outgoing: &[Outgoing<'_>],
        entries: Vec<ChangelogEntry<'_>>,
    ) -> Result<(), BatchError> {
        let routes = &self.pipeline.routes;
        let producer = self.out.producer;
        let ticket = self.out.ticket;
        let shards = rayon::current_num_threads().max(1);
        let sent = (0..shards)
            .into_par_iter()
            .map(|shard| {
                let mut sent = 0;
                for o in outgoing.iter().filter(|o| shard_of(o.key, shards) == shard) {
                    o.send(producer, ticket)?;
                    sent += 1;
                }
                for c in entries.iter().filter(|c| shard_of(c.key, shards) == shard) {
                    c.send(producer, &routes[c.route], ticket)?;
                    sent += 1;
                }
                Ok::<usize, BatchError>(sent)
            })
            .try_reduce(|| 0, |a, b| Ok(a + b))?;
        self.out.sent += sent;
        Ok(())
    }
}

/// Step 2's input: each work record's state key and change, in input order.
fn guard_inputs(work: &[Work]) -> Vec<GuardInput<'_>> {
    work.iter()
        .map(|w| GuardInput {
            key: &w.state_key,
            change: w.change,
            is_snapshot: w.event.is_snapshot(),
        })
        .collect()
}

/// The state entries the guard holds for this batch, each to its changelog partition. An entry
/// with no partition (none of this batch's accepted records wrote it) is not sent.
fn changelog_entries<'e>(
    pending: &'e [(&'e [u8], impl AsRef<[u8]>)],
    partitions: &ChangelogPartitions<'_>,
) -> Vec<ChangelogEntry<'e>> {
    pending
        .iter()
        .filter_map(|(key, entry)| {
            let &(route, partition) = partitions.get(key)?;
            Some(ChangelogEntry {
                route,
                key,
                entry: entry.as_ref(),
                partition,
            })
        })
        .collect()
}

/// The sending thread of `key`, of `shards`: the same for every record of a key.
fn shard_of(key: &[u8], shards: usize) -> usize {
    let hash = std::hash::BuildHasher::hash_one(&foldhash::fast::FixedState::with_seed(0), key);
    (hash % shards as u64) as usize
}

/// Waits (at most a second) until the producer has released every delivery report: a report
/// is counted inside its callback, a moment before librdkafka stops counting the record as in
/// flight.
async fn drain_delivery_reports(producer: &AckingProducer) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_keys_is_spread_over_every_sending_thread() {
        for shards in 1..=8 {
            let mut used = vec![0; shards];
            for n in 0..1_000u32 {
                used[shard_of(&n.to_be_bytes(), shards)] += 1;
            }
            assert!(
                used.iter().all(|&keys| keys > 1_000 / shards / 2),
                "{used:?}"
            );
        }
    }

    #[test]
    fn only_entries_of_accepted_keys_go_to_the_changelog_on_their_input_partition() {
        let pending = [(&b"a"[..], *b"entry a"), (&b"b"[..], *b"entry b")];
        let mut partitions = ChangelogPartitions::new();
        partitions.insert(&b"b"[..], (1, 7));
        let entries = changelog_entries(&pending, &partitions);
        assert_eq!(entries.len(), 1);
        let entry = &entries[0];
        assert_eq!(
            (entry.route, entry.key, entry.entry, entry.partition),
            (1, &b"b"[..], &b"entry b"[..], 7)
        );
    }
}
