//! Per-route rate limits: the origin document's per-service maximum QPS.
//!
//! ```text
//!   a record of route r is polled ──► r's GCRA limiter (governor) has a cell? ── yes ──► go on
//!                                                  │ no
//!                                                  ▼
//!        pause r's assigned partitions (librdkafka stops fetching them; the others go on),
//!        owe the cell for the record in hand, and resume when the limiter has one again
//! ```
//!
//! Only the limited route's partitions stop: the consumer as a whole keeps polling, so a route
//! beside it is not slowed. A record already polled is never dropped or put back: it is kept,
//! and the cell it needs is paid at the resume. The time a route spends paused is counted in
//! `autoglm_route_throttled_seconds_total`.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use autoglm_config::RateLimit;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, ConsumerContext};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::route::RouteRuntime;

/// The throttle of a running pipeline, with what it acts on: the routes' partitions (paused and
/// resumed through the consumer) and the metrics. Shared by the loop, which counts polled
/// records and pauses, and [`resume_on_time`], which resumes.
pub(crate) struct Throttling {
    throttle: Mutex<Throttle>,
    routes: Arc<[RouteRuntime]>,
    metrics: Metrics,
    /// Wakes [`resume_on_time`] when a route pauses.
    paused: Notify,
}

impl Throttling {
    pub(crate) fn new(throttle: Throttle, routes: Arc<[RouteRuntime]>, metrics: Metrics) -> Self {
        Throttling {
            throttle: Mutex::new(throttle),
            routes,
            metrics,
            paused: Notify::new(),
        }
    }

    /// Whether no route is limited (then nothing is ever paused).
    pub(crate) fn is_off(&self) -> bool {
        self.throttle.lock().map_or(true, |t| t.is_empty())
    }

    /// Counts a polled record of `topic`; pauses its route's partitions when the route is out
    /// of cells.
    pub(crate) fn polled<X: ConsumerContext>(&self, consumer: &impl Consumer<X>, topic: &str) {
        let Some(route) = self.routes.iter().position(|r| r.matches(topic)) else {
            return;
        };
        let Ok(mut throttle) = self.throttle.lock() else {
            return;
        };
        if throttle.take(route, Instant::now()) {
            // Under the lock, so that a resume cannot slip in between: a resume that ran before
            // this pause would leave the partitions paused for good while the throttle takes the
            // route for running (a soak run stopped on "no input" that way).
            self.act(consumer, route, true);
            drop(throttle);
            self.paused.notify_one();
        }
    }

    /// Resumes the routes whose pause is over; returns when the next one is due.
    pub(crate) fn resume_due<X: ConsumerContext>(
        &self,
        consumer: &impl Consumer<X>,
    ) -> Option<Instant> {
        let mut throttle = self.throttle.lock().ok()?;
        let due = throttle.resume_due(Instant::now());
        for (route, paused) in due.resume {
            self.metrics.throttled(route, paused);
            self.act(consumer, route, false);
        }
        due.next
    }

    /// Pauses or resumes the assigned partitions of `route`; only with the throttle locked, so
    /// that the consumer's state follows the throttle's in the same order.
    fn act<X: ConsumerContext>(&self, consumer: &impl Consumer<X>, route: usize, pause: bool) {
        let Some(matcher) = self.routes.get(route) else {
            return;
        };
        let mut partitions = TopicPartitionList::new();
        if let Ok(assignment) = consumer.assignment() {
            for element in assignment.elements() {
                if matcher.matches(element.topic()) {
                    partitions.add_partition(element.topic(), element.partition());
                }
            }
        }
        if partitions.count() == 0 {
            return;
        }
        let result = if pause {
            consumer.pause(&partitions)
        } else {
            consumer.resume(&partitions)
        };
        if let Err(e) = result {
            tracing::warn!(route = %matcher.name, pause, error = %e, "rate limit: cannot pause or resume the route's partitions");
        }
    }
}

/// Resumes paused routes when their limiter has room again, until `stop`: on time, however long
/// the processing loop is busy with a transaction (the loop resumes them too, when it polls).
/// A resume that waits for the loop lets the limiter's burst fill up and overflow: a route
/// limited to 400 records/s with a burst of 100 ran at 194 that way.
pub(crate) async fn resume_on_time<X, C>(
    throttling: Arc<Throttling>,
    consumer: Arc<C>,
    stop: tokio_util::sync::CancellationToken,
) where
    X: ConsumerContext,
    C: Consumer<X> + Send + Sync + 'static,
{
    loop {
        let next = throttling.resume_due(&*consumer);
        let wait = next.map_or(Duration::from_secs(1), |next| {
            next.saturating_duration_since(Instant::now())
        });
        tokio::select! {
            () = stop.cancelled() => return,
            () = throttling.paused.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

impl std::fmt::Debug for Throttling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttling").finish_non_exhaustive()
    }
}

/// The limits of every route, indexed like the routes.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    routes: Vec<Option<Limit>>,
}

#[derive(Debug)]
struct Limit {
    limiter: DefaultDirectRateLimiter,
    /// Cells owed for records taken while the limiter had none.
    debt: u32,
    /// Since when, and until when, the route is paused.
    paused: Option<(Instant, Instant)>,
}

/// What [`Throttle::resume_due`] found.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Due {
    /// Routes to resume now, with how long each was paused.
    pub(crate) resume: Vec<(usize, Duration)>,
    /// When the next paused route may resume.
    pub(crate) next: Option<Instant>,
}

impl Throttle {
    /// Limits for routes in config order (`None`: unlimited).
    pub(crate) fn new(limits: impl IntoIterator<Item = Option<RateLimit>>) -> Throttle {
        let routes = limits
            .into_iter()
            .map(|limit| {
                let limit = limit?;
                let rate = NonZeroU32::new(limit.records_per_second)?;
                let burst = NonZeroU32::new(limit.burst()).unwrap_or(rate);
                Some(Limit {
                    limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
                    debt: 0,
                    paused: None,
                })
            })
            .collect();
        Throttle { routes }
    }

    /// Whether no route is limited.
    pub(crate) fn is_empty(&self) -> bool {
        self.routes.iter().all(Option::is_none)
    }

    /// Counts one polled record of `route`. `true`: the route is out of cells and must pause
    /// (again: records fetched before a pause may still arrive).
    pub(crate) fn take(&mut self, route: usize, now: Instant) -> bool {
        let Some(Some(limit)) = self.routes.get_mut(route) else {
            return false;
        };
        match limit.paused {
            // Fetched before the pause took hold: owe its cell too, and stay paused (the resume
            // pays the debt before it lets the route go).
            Some(_) => {
                limit.debt = limit.debt.saturating_add(1);
                true
            }
            None => match limit.limiter.check() {
                Ok(()) => false,
                Err(not_until) => {
                    limit.debt = 1;
                    limit.paused = Some((now, now + wait(&not_until)));
                    true
                }
            },
        }
    }

    /// Pays the debts that can be paid by `now`, and says which routes may run again.
    pub(crate) fn resume_due(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        let mut next = |until: Instant| {
            due.next = Some(due.next.map_or(until, |next: Instant| next.min(until)));
        };
        let mut resume = Vec::new();
        for (route, limit) in self.routes.iter_mut().enumerate() {
            let Some(limit) = limit else { continue };
            let Some((since, until)) = limit.paused else {
                continue;
            };
            if until > now {
                next(until);
                continue;
            }
            let mut owed_until = None;
            while limit.debt > 0 {
                match limit.limiter.check() {
                    Ok(()) => limit.debt -= 1,
                    Err(not_until) => {
                        owed_until = Some(now + wait(&not_until));
                        break;
                    }
                }
            }
            match owed_until {
                None => {
                    limit.paused = None;
                    resume.push((route, now.saturating_duration_since(since)));
                }
                Some(until) => {
                    limit.paused = Some((since, until));
                    next(until);
                }
            }
        }
        due.resume = resume;
        due
    }
}

/// How long until the limiter has a cell again.
fn wait(not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> Duration {
    not_until.wait_time_from(DefaultClock::default().now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(records_per_second: u32, burst: u32) -> Throttle {
        Throttle::new([
            Some(RateLimit {
                records_per_second,
                burst: Some(burst),
            }),
            None,
        ])
    }

    #[test]
    fn a_route_pauses_once_its_burst_is_spent_and_the_unlimited_one_never() {
        let mut throttle = limited(10, 5);
        let now = Instant::now();
        for _ in 0..5 {
            assert!(!throttle.take(0, now));
        }
        assert!(throttle.take(0, now), "the sixth record exceeds the burst");
        for _ in 0..1000 {
            assert!(!throttle.take(1, now), "route 1 has no limit");
        }
        let due = throttle.resume_due(now);
        assert!(due.resume.is_empty());
        let next = due.next.expect("a resume time");
        // One cell every 100 ms.
        assert!(
            next > now && next <= now + Duration::from_millis(110),
            "{next:?}"
        );
    }

    #[test]
    fn the_record_taken_while_paused_is_paid_for_at_the_resume() {
        let mut throttle = limited(20, 1);
        let start = Instant::now();
        let mut admitted = 0u32;
        // Feed records as fast as the throttle lets them through, for 500 ms of real time.
        while start.elapsed() < Duration::from_millis(500) {
            let now = Instant::now();
            let due = throttle.resume_due(now);
            let paused = throttle.routes[0]
                .as_ref()
                .is_some_and(|l| l.paused.is_some());
            if !paused {
                admitted += 1;
                throttle.take(0, now);
            } else if let Some(next) = due.next {
                std::thread::sleep(next.saturating_duration_since(now));
            }
        }
        // 20 per second for half a second plus the burst of one: about 11; without paying the
        // debt it would be twice that.
        assert!((9..=13).contains(&admitted), "{admitted} records in 500 ms");
    }
}
