//! The loop that drives the stages, batch after batch: poll ─► rebalance ─► prepare ─►
//! transact and commit ─► the state write, beside the next poll and prepare; on a transient
//! failure, abort, rewind and back off.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use autoglm_core::chain;
use autoglm_state::{RocksBackend, VersionGuard};
use rdkafka::consumer::Consumer as _;
use tracing::Instrument as _;

use super::commit::abort;
use super::poll::{Limits, Member, Polled, Wait, closing_age, micros, poll_batch, rewind};
use super::{BatchError, Pipeline, RunError, RunOptions, RunSummary, Transient};
use crate::acks::AckingProducer;
use crate::group::Changes;
use crate::metrics::Stage;
use crate::throttle::{Throttle, Throttling, resume_on_time};
use crate::traces;

impl Pipeline {
    /// The poll loop: batch after batch until cancelled, idle for `exit_when_idle`, or a
    /// fatal error.
    pub(super) async fn consume(
        &self,
        consumer: &Arc<Member>,
        producer: &mut Arc<AckingProducer>,
        guard: &mut VersionGuard<RocksBackend>,
        options: &RunOptions,
    ) -> Result<RunSummary, RunError> {
        let exactly_once = self.config.exactly_once();
        let limits = Limits {
            flush: Duration::from_millis(self.config.event_queue.flush_interval_ms),
            records: self.config.commit.max_records,
            bytes: self.config.commit.max_bytes,
        };
        let mut summary = RunSummary::default();
        let mut last_record = Instant::now();
        let mut failures = Failures::default();
        let mut fences = Fences::default();
        let mut tally = self.metrics.tally();
        // How old a batch's first record is when the batch closes (`closing_age`), and what the
        // last batches took from closing to their commit. In microseconds: an atomic, because
        // the loop's future must be `Send`.
        let close_age = AtomicU64::new(micros(limits.flush));
        let mut lead = Duration::ZERO;
        let throttling = Arc::new(Throttling::new(
            Throttle::new(self.config.routes.iter().map(|r| r.rate_limit)),
            Arc::clone(&self.routes),
            self.metrics.clone(),
        ));
        // Paused routes resume on time, while this loop is busy with a transaction too.
        let _resumer = (!throttling.is_off()).then(|| {
            let stop = options.shutdown.child_token();
            tokio::spawn(resume_on_time(
                Arc::clone(&throttling),
                Arc::clone(consumer),
                stop.clone(),
            ));
            stop.drop_guard()
        });
        let poll = async |into: &mut Polled, wait, changes: &mut Changes| {
            let shutdown = &options.shutdown;
            let limits = Limits {
                flush: Duration::from_micros(close_age.load(Ordering::Relaxed)),
                ..limits
            };
            poll_batch(consumer, into, wait, limits, shutdown, changes, &throttling).await
        };
        // The next batch: records polled, the first of them maybe prepared already. And the
        // records polled beyond it, if any.
        let mut next = Polled::default();
        let mut later = Polled::default();
        // The group changes of the polls beside the last state write.
        let mut filled = None;
        loop {
            self.metrics.beat();
            if options.shutdown.is_cancelled() {
                break;
            }
            // Records polled ahead are input: never idle with them in hand.
            if let Some(idle) = options.exit_when_idle
                && next.batch.is_empty()
                && later.batch.is_empty()
                && last_record.elapsed() >= idle
            {
                tracing::info!(idle_secs = idle.as_secs(), "no input for a while; stopping");
                break;
            }
            // Polls run only here and beside the state write, with no transaction open: a
            // revocation never meets one (see `group`).
            let changes = match filled.take() {
                Some(changes) => changes,
                None => {
                    let mut changes = Changes::default();
                    poll(&mut next, Wait::Cadence, &mut changes).await?;
                    changes
                }
            };
            // A newly assigned partition may hold input, and its restore (which may wait for a
            // stalled owner's transaction, up to 25 s) is not idleness: the idle clock starts
            // again once the partitions are ready. An instance that took a stalled one's
            // partitions once stopped right after their restore, with their input unread.
            let assigned = !changes.assigned.is_empty();
            summary.restored += self.follow_group(consumer, guard, changes).await?;
            if assigned {
                last_record = Instant::now();
            }
            let mut current = std::mem::take(&mut next);
            next = std::mem::take(&mut later);
            if current.batch.is_empty() {
                continue;
            }
            self.prepare_rest(&mut current);
            // What the consumer holds already is the batch after this one. It is prepared
            // while this one's records are acknowledged, when the cores would idle.
            let mut changes = Changes::default();
            poll(&mut next, Wait::Never, &mut changes).await?;
            current.retain_owned(&changes.revoked);
            summary.restored += self.follow_group(consumer, guard, changes).await?;
            if current.batch.is_empty() {
                continue;
            }
            last_record = Instant::now();
            let Polled {
                batch,
                prepared,
                started,
                closed,
                ..
            } = current;
            if let (Some(started), Some(closed)) = (started, closed) {
                self.metrics.stage(Stage::Fill, closed - started);
                self.metrics.stage(Stage::Queue, closed.elapsed());
            }
            // Span::none() and no record spans unless traces are exported.
            let transaction = self.traces.transaction(&batch, &self.routes, exactly_once);
            let mut spans = self.traces.records(&transaction, SystemTime::now());
            match self
                .process(
                    &batch,
                    prepared,
                    &mut next,
                    consumer,
                    producer,
                    guard,
                    exactly_once,
                    &mut tally,
                    &mut spans,
                )
                .instrument(transaction.clone())
                .await
            {
                Ok((batch_summary, checkpoints)) => {
                    traces::committed(&transaction, &batch_summary);
                    spans.finish("committed", None);
                    drop(transaction);
                    summary.add_committed(&batch_summary);
                    self.metrics.committed(&mut tally, started);
                    if let Some(closed) = closed {
                        lead = (lead * 3 + closed.elapsed()) / 4;
                        let age = closing_age(limits.flush, lead);
                        close_age.store(micros(age), Ordering::Relaxed);
                    }
                    failures = Failures::default();
                    // Kafka has committed: now, and only now, the state follows. The next batch
                    // is filled and prepared meanwhile. `join!` polls the write first, so it is
                    // on its way before the prepare takes the cores. This batch's records go
                    // first: three batches at once would raise the peak memory.
                    drop(batch);
                    let write = async {
                        let started = Instant::now();
                        let written = guard.commit(checkpoints).await;
                        (written, started.elapsed())
                    };
                    let ((written, writing), polled) = tokio::join!(write, async {
                        let mut changes = Changes::default();
                        poll(&mut next, Wait::Cadence, &mut changes).await?;
                        self.prepare_rest(&mut next);
                        // The batch after it, taken now rather than when the next one starts.
                        let mut after = Changes::default();
                        poll(&mut later, Wait::Never, &mut after).await?;
                        // Only what this second poll revoked. A partition the first poll
                        // revoked was dropped from `next` then, and if it was assigned again,
                        // what `next` holds of it since was read from its committed offset.
                        // Dropping that too skipped those records, and the batch after
                        // committed offsets past them: a session timeout that revoked and
                        // re-assigned a partition within one poll lost 236 records in a chaos
                        // run.
                        next.retain_owned(&after.revoked);
                        changes.merge(after);
                        Ok::<_, RunError>(changes)
                    });
                    if let Err(e) = written {
                        guard.abort();
                        return Err(e.into());
                    }
                    self.metrics.stage(Stage::StateWrite, writing);
                    fail::fail_point!("after_state_write");
                    filled = Some(polled?);
                }
                Err(failure) => {
                    let (outcome, reason) = match &failure {
                        BatchError::Fatal(e) => ("failed", chain(e).to_string()),
                        BatchError::Transient(Transient(reason)) => ("aborted", reason.clone()),
                    };
                    traces::failed(&transaction, outcome, &reason);
                    spans.finish(outcome, Some(&reason));
                    guard.abort();
                    // A transient failure aborts the transaction and retries the batch. So does
                    // a fenced producer, with a new one: the broker ended its transaction (a
                    // minute away from the broker ends it so). Any other error stops the run.
                    let ended = match failure {
                        BatchError::Transient(_) if exactly_once => abort(producer).await,
                        BatchError::Transient(_) => Ok(()),
                        BatchError::Fatal(e) => Err(e),
                    };
                    if let Err(error) = ended {
                        if !fences.may_renew(&error) {
                            return Err(error);
                        }
                        tracing::warn!(error = %chain(&error), "producer fenced; making a new one, then retrying the batch");
                        let fenced =
                            std::mem::replace(producer, self.producer(&options.shutdown).await?);
                        // Closing a producer blocks (it flushes, then joins its threads).
                        tokio::task::spawn_blocking(move || drop(fenced));
                        summary.new_producers += 1;
                        // The state catches up with the changelog: whatever the fenced
                        // producer's last commit did, the changelog says, and the store follows.
                        let owned = Changes::owning(consumer.context().owned());
                        summary.restored += self.follow_group(consumer, guard, owned).await?;
                    }
                    // The records polled ahead too: their partitions may not be in this batch.
                    rewind(
                        consumer,
                        batch.iter().chain(&next.batch).chain(&later.batch),
                    )?;
                    next = Polled::default();
                    later = Polled::default();
                    drop(transaction);
                    summary.retries += 1;
                    self.metrics.aborted(&mut tally);
                    let wait = failures.next(self, &reason);
                    tokio::select! {
                        () = options.shutdown.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                    // The rewound records are input: the idle clock starts again. (A backoff
                    // as long as `exit_when_idle` once stopped the run before they came back.)
                    last_record = Instant::now();
                }
            }
        }
        tracing::info!(?summary, "pipeline stopped");
        Ok(summary)
    }
}

/// How long after making a new producer a second fence stops the run: that many fences say
/// another instance runs with this transactional id (the same `kafka.instance_id`), and making
/// producers in turn, the two would fence each other for ever.
const FENCE_WINDOW: Duration = Duration::from_secs(300);

/// When the last fenced producer was made again.
#[derive(Debug, Default)]
struct Fences {
    renewed: Option<Instant>,
}

impl Fences {
    /// Whether `error` is a fence the run may answer with a new producer: the first one, or
    /// one [`FENCE_WINDOW`] after the last.
    fn may_renew(&mut self, error: &RunError) -> bool {
        if !error.is_fenced() {
            return false;
        }
        if let Some(renewed) = self.renewed
            && renewed.elapsed() < FENCE_WINDOW
        {
            tracing::error!(
                since_secs = renewed.elapsed().as_secs(),
                "fenced again soon after the last new producer: is another instance running with this kafka.instance_id?"
            );
            return false;
        }
        self.renewed = Some(Instant::now());
        true
    }
}

/// Consecutive failed batches: the backoff and the "still failing" alarm.
#[derive(Debug, Default)]
struct Failures {
    attempt: u32,
    last_alarm: Option<Instant>,
}

impl Failures {
    /// Counts one more failure, logs it and returns how long to wait.
    fn next(&mut self, pipeline: &Pipeline, reason: &str) -> Duration {
        self.attempt += 1;
        let attempt = self.attempt;
        let wait = pipeline.backoff(attempt);
        if attempt <= pipeline.config.retry_attempts() {
            tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, %reason, "batch failed; aborted, rewound, retrying");
        } else if self
            .last_alarm
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.last_alarm = Some(Instant::now());
            tracing::error!(attempt, %reason, "still failing after the configured attempts; waiting, not skipping");
        }
        wait
    }
}
