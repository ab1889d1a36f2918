//! Delivery reports, counted per batch.
//!
//! rust-rdkafka's `FutureProducer` gives every record a oneshot channel and a boxed sender, and
//! a batch then awaited one future per record. Here the producer's context counts a batch's
//! reports as the producer's polling thread hands them over. It keeps the first failure and the
//! changelog's highest offset per partition, and wakes the batch once every record is in.
//!
//! Each record carries its batch's number in its delivery opaque (a plain integer, no
//! allocation). A report of an earlier batch — one that failed and was aborted — is ignored.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use tokio::sync::Notify;

/// The processor's producer: its delivery reports are counted by [`Acks`].
pub(crate) type AckingProducer = ThreadedProducer<Acks>;

/// Changelog checkpoints of a batch: `(route, partition)` → the offset after the highest one
/// written.
pub(crate) type Written = HashMap<(usize, i32), i64>;

/// What a produced record is, for its delivery report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An output, dead-letter or audit record: only its success counts.
    Output,
    /// A state entry to the changelog of route `.0`: its offset is a checkpoint.
    Changelog(usize),
}

/// A batch's number, stamped on the delivery opaque of each of its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u32);

// The opaque packs the batch number in the high half of a 64-bit integer.
const _: () = assert!(usize::BITS == 64, "delivery opaques pack two 32-bit halves");

impl Ticket {
    /// The delivery opaque of a record of this batch.
    pub(crate) fn opaque(self, kind: Kind) -> usize {
        let code = match kind {
            Kind::Output => 0,
            Kind::Changelog(route) => route + 1,
        };
        ((self.0 as usize) << 32) | code
    }

    fn of(opaque: usize) -> (Ticket, Kind) {
        let batch = u32::try_from(opaque >> 32).unwrap_or(u32::MAX);
        let kind = match opaque & 0xffff_ffff {
            0 => Kind::Output,
            code => Kind::Changelog(code - 1),
        };
        (Ticket(batch), kind)
    }
}

/// The producer context that counts delivery reports; see the module doc.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    state: Mutex<State>,
    done: Notify,
}

#[derive(Debug, Default)]
struct State {
    batch: u32,
    acked: usize,
    /// Set when the batch's last record is sent.
    expected: Option<usize>,
    failed: Option<Undelivered>,
    written: Written,
}

/// A record the broker did not take, and its topic.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Undelivered {
    pub(crate) error: KafkaError,
    pub(crate) topic: String,
}

impl Acks {
    /// Starts counting a new batch; reports of earlier batches are ignored from now on.
    pub(crate) fn begin(&self) -> Ticket {
        let mut state = self.lock();
        let batch = state.batch.wrapping_add(1);
        *state = State {
            batch,
            ..State::default()
        };
        Ticket(batch)
    }

    /// Waits until the `sent` records of the current batch are all acknowledged, and returns
    /// its changelog checkpoints; or the first failure among them.
    pub(crate) async fn wait(&self, sent: usize) -> Result<Written, Undelivered> {
        self.lock().expected = Some(sent);
        loop {
            // Registered before the check: a report in between still wakes this wait.
            let notified = self.done.notified();
            {
                let mut state = self.lock();
                if let Some(e) = state.failed.take() {
                    return Err(e);
                }
                if state.acked >= sent {
                    return Ok(std::mem::take(&mut state.written));
                }
            }
            notified.await;
        }
    }

    /// Counts one report: `Ok((partition, offset))` for a record written there.
    fn report(&self, opaque: usize, outcome: Result<(i32, i64), (&KafkaError, &str)>) {
        let (ticket, kind) = Ticket::of(opaque);
        let mut state = self.lock();
        if ticket.0 != state.batch {
            return;
        }
        state.acked += 1;
        match (outcome, kind) {
            (Ok((partition, offset)), Kind::Changelog(route)) => {
                let next = state
                    .written
                    .entry((route, partition))
                    .or_insert(offset + 1);
                *next = (*next).max(offset + 1);
            }
            (Ok(_), Kind::Output) => {}
            (Err((error, topic)), _) => {
                state.failed.get_or_insert_with(|| Undelivered {
                    error: error.clone(),
                    topic: topic.to_owned(),
                });
            }
        }
        if state.failed.is_some() || state.expected == Some(state.acked) {
            self.done.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        match result {
            Ok(message) => self.report(opaque, Ok((message.partition(), message.offset()))),
            Err((e, message)) => self.report(opaque, Err((e, message.topic()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    #[test]
    fn opaques_carry_the_batch_and_the_kind() {
        for kind in [Kind::Output, Kind::Changelog(0), Kind::Changelog(7)] {
            for batch in [0, 1, u32::MAX] {
                assert_eq!(
                    Ticket::of(Ticket(batch).opaque(kind)),
                    (Ticket(batch), kind)
                );
            }
        }
    }

    #[tokio::test]
    async fn a_batch_waits_for_every_report_and_keeps_the_highest_changelog_offsets() {
        let acks = Acks::default();
        let ticket = acks.begin();
        acks.report(ticket.opaque(Kind::Changelog(1)), Ok((0, 41)));
        acks.report(ticket.opaque(Kind::Output), Ok((3, 9)));
        let waiting = acks.wait(4);
        tokio::pin!(waiting);
        // Two of four: still waiting.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut waiting)
                .await
                .is_err()
        );
        acks.report(ticket.opaque(Kind::Changelog(1)), Ok((0, 40)));
        acks.report(ticket.opaque(Kind::Changelog(2)), Ok((0, 5)));
        let written = waiting.await.expect("all acknowledged");
        assert_eq!(written, Written::from([((1, 0), 42), ((2, 0), 6)]));
    }

    #[tokio::test]
    async fn a_failure_ends_the_wait_and_earlier_batches_do_not_count() {
        let acks = Acks::default();
        let old = acks.begin();
        let ticket = acks.begin();
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        // A report of the aborted batch, even a failure, is not this batch's.
        acks.report(old.opaque(Kind::Output), Err((&timed_out, "t")));
        acks.report(old.opaque(Kind::Output), Ok((0, 1)));
        acks.report(ticket.opaque(Kind::Output), Ok((0, 2)));
        acks.report(ticket.opaque(Kind::Output), Err((&timed_out, "t")));
        let failed = acks.wait(3).await.expect_err("a record failed");
        assert_eq!(failed.error, timed_out);
        assert_eq!(failed.topic, "t");

        // Nothing sent: nothing to wait for.
        acks.begin();
        assert_eq!(acks.wait(0).await.expect("empty"), Written::new());
    }
}
