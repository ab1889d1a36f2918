//! What a replay commits for each DLQ partition: the replay group's offset and, in its commit
//! metadata, the ranges above it that were replayed.
//!
//! ```text
//!  offsets   0    1    2    3    4    5
//!  records   a    b    a    b    a    commit marker (the committed end is 6)
//!  replay --where rule=a:  leaves 1, 3; sends 0, 2, 4
//!  committed: offset 1, metadata "autoglm-replay/1 2,4"   (1 and 3 stay reachable)
//!  replay --where rule=b:  reads from 1: sends 1, 3; 2 and 4 replayed before
//!  committed: offset 6, metadata "autoglm-replay/1"
//! ```
//!
//! A [`Cursor`] follows one partition through a run: [`Cursor::pass`] for a record replayed (or
//! passed over for good), [`Cursor::leave`] for one left for a later run, and [`Cursor::mark`]
//! is what to commit now. The ranges an earlier run committed above what this run has read
//! still hold, mid-way and after an early stop. The metadata is bounded by [`METADATA_MAX`]:
//! [`Cursor::can_pass`] says when a partition must stop for this run.

/// Longest commit metadata a replay writes; the broker refuses more than
/// `offset.metadata.max.bytes` (4096 by default).
pub const METADATA_MAX: usize = 3000;
/// The replay marks' format tag, the start of their commit metadata.
const MARK_FORMAT: &str = "autoglm-replay/1";

/// What a replay commits for one DLQ partition: every record below `next` is dealt with, and
/// so are the records in the `done` ranges above it (inclusive, ascending, disjoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The committed offset: the first record left for a later replay, or the end.
    pub next: i64,
    /// Offset ranges above `next` that were replayed (or passed over for good).
    pub done: Vec<(i64, i64)>,
}

impl Mark {
    /// A partition no replay has committed for: from `start` (the log start).
    pub fn start(start: i64) -> Mark {
        Mark {
            next: start,
            done: Vec::new(),
        }
    }

    /// The mark committed as offset `next` with `metadata`. Metadata a replay did not write
    /// (an offset reset by an admin tool) holds no ranges.
    pub fn parse(next: i64, metadata: &str) -> Mark {
        let ranges = metadata
            .strip_prefix(MARK_FORMAT)
            .map(str::trim)
            .filter(|rest| !rest.is_empty());
        let mut done = Vec::new();
        if let Some(ranges) = ranges {
            for piece in ranges.split(',') {
                let range = match piece.split_once('-') {
                    Some((a, b)) => a.parse().ok().zip(b.parse().ok()),
                    None => piece.parse().ok().map(|a| (a, a)),
                };
                match range {
                    Some((a, b)) if a <= b && a > next => done.push((a, b)),
                    Some(_) => {}
                    // Not written by a replay: trust none of it.
                    None => return Mark::start(next),
                }
            }
        }
        Mark { next, done }.normalized()
    }

    /// The commit metadata: the format tag and the ranges.
    pub fn metadata(&self) -> String {
        let mut out = MARK_FORMAT.to_owned();
        for (i, &(a, b)) in self.done.iter().enumerate() {
            out.push(if i == 0 { ' ' } else { ',' });
            if a == b {
                out.push_str(&a.to_string());
            } else {
                out.push_str(&format!("{a}-{b}"));
            }
        }
        out
    }

    /// Whether the record at `offset` was dealt with.
    pub fn contains(&self, offset: i64) -> bool {
        offset < self.next
            || self
                .done
                .binary_search_by(|&(a, b)| {
                    if b < offset {
                        std::cmp::Ordering::Less
                    } else if a > offset {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Equal
                    }
                })
                .is_ok()
    }

    /// The mark with nothing below `low` (the log start: retention removed the records below
    /// it).
    pub(super) fn at_least(mut self, low: i64) -> Mark {
        self.next = self.next.max(low);
        self.normalized()
    }

    /// Ranges in order, touching ones merged, none below `next` and none starting at it
    /// (`next` moves past those).
    fn normalized(mut self) -> Mark {
        self.done.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(self.done.len());
        for (a, b) in self.done {
            match merged.last_mut() {
                Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged.retain(|&(_, b)| b >= self.next);
        while let Some(&(a, b)) = merged.first()
            && a <= self.next
        {
            self.next = self.next.max(b + 1);
            merged.remove(0);
        }
        self.done = merged;
        self
    }

    /// The mark's dealt-with ranges as text (`12-15,18`), empty without any.
    pub(super) fn ranges(&self) -> String {
        self.metadata()
            .strip_prefix(MARK_FORMAT)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

/// The digits of `n` as text.
fn digits(n: i64) -> usize {
    n.to_string().len()
}

/// The text length of the range `a-b` (or `a`).
fn piece_len(a: i64, b: i64) -> usize {
    if a == b {
        digits(a)
    } else {
        digits(a) + 1 + digits(b)
    }
}

/// One DLQ partition's progress in a replay: what it read, replayed and left.
#[derive(Debug, Clone)]
pub struct Cursor {
    /// As committed when the replay began.
    pub(super) start: Mark,
    /// The partition's committed end (its last stable offset) when the replay began.
    pub(super) end: i64,
    /// The next offset to read.
    pub(super) read_to: i64,
    /// The first record left for a later replay.
    pending_from: Option<i64>,
    /// Dealt-with ranges above `pending_from`.
    done: Vec<(i64, i64)>,
    /// A record was left since the last dealt-with one.
    gap: bool,
    /// The length of the metadata of [`Cursor::mark`], without the ranges of `start` above
    /// `read_to`.
    metadata_len: usize,
    /// `start.done[i..]`'s encoded length, each range with its separator, for each `i`.
    start_tail: Vec<usize>,
    /// Read to its end, or stopped.
    finished: bool,
}

impl Cursor {
    /// A partition whose committed mark is `start` and whose committed end is `end`.
    pub fn new(start: Mark, end: i64) -> Cursor {
        let mut start_tail = vec![0; start.done.len() + 1];
        for (i, &(a, b)) in start.done.iter().enumerate().rev() {
            start_tail[i] = start_tail[i + 1] + 1 + piece_len(a, b);
        }
        Cursor {
            read_to: start.next,
            finished: start.next >= end,
            start,
            end,
            pending_from: None,
            done: Vec::new(),
            gap: false,
            metadata_len: MARK_FORMAT.len(),
            start_tail,
        }
    }

    /// The encoded length of the ranges of `start` at and above `from` (the first one cut to
    /// start there): what a stop at `from` keeps of them.
    fn start_tail_len(&self, from: i64) -> usize {
        let i = self.start.done.partition_point(|&(_, b)| b < from);
        match self.start.done.get(i) {
            Some(&(a, b)) => 1 + piece_len(a.max(from), b) + self.start_tail[i + 1],
            None => 0,
        }
    }

    /// Whether an earlier replay dealt with the record at `offset`.
    pub fn replayed_before(&self, offset: i64) -> bool {
        self.start.contains(offset)
    }

    /// The metadata length once the record at `offset` is dealt with.
    fn metadata_len_after(&self, offset: i64) -> usize {
        if self.pending_from.is_none() {
            return self.metadata_len;
        }
        match self.done.last() {
            Some(&(a, b)) if !self.gap => {
                self.metadata_len - piece_len(a, b) + piece_len(a, offset)
            }
            // A new range, after a space or a comma.
            _ => self.metadata_len + 1 + digits(offset),
        }
    }

    /// Whether the record at `offset` can be dealt with in this run (its range fits the
    /// commit metadata).
    pub fn can_pass(&self, offset: i64) -> bool {
        // A stop at the next record keeps the ranges of `start` above it too.
        self.metadata_len_after(offset) + self.start_tail_len(offset + 1) <= METADATA_MAX
    }

    /// The record at `offset` was replayed, or is passed over for good.
    pub fn pass(&mut self, offset: i64) {
        self.metadata_len = self.metadata_len_after(offset);
        self.read_to = offset + 1;
        if self.pending_from.is_none() {
            return;
        }
        match self.done.last_mut() {
            Some(last) if !self.gap => last.1 = offset,
            _ => self.done.push((offset, offset)),
        }
        self.gap = false;
    }

    /// The record at `offset` is left for a later replay (the filter passed over it).
    pub fn leave(&mut self, offset: i64) {
        self.read_to = offset + 1;
        self.pending_from.get_or_insert(offset);
        self.gap = true;
    }

    /// The consumer's position passed `position` (transaction markers included).
    pub fn advance(&mut self, position: i64) {
        if self.finished {
            return;
        }
        self.read_to = self.read_to.max(position);
        if self.read_to >= self.end {
            self.finished = true;
        }
    }

    /// Nothing more of this partition in this run.
    pub fn stop(&mut self) {
        self.finished = true;
    }

    /// Whether this run is done with the partition.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The mark to commit now.
    pub fn mark(&self) -> Mark {
        let mut done = self.done.clone();
        // What an earlier replay did above what this one read still holds (mid-way, or
        // stopped early).
        let at = self.read_to;
        done.extend(
            self.start
                .done
                .iter()
                .filter(|&&(_, b)| b >= at)
                .map(|&(a, b)| (a.max(at), b)),
        );
        Mark {
            next: self.pending_from.unwrap_or(self.read_to),
            done,
        }
        .normalized()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_through_the_commit_metadata() {
        let mark = Mark {
            next: 10,
            done: vec![(12, 15), (18, 18)],
        };
        assert_eq!(mark.metadata(), "autoglm-replay/1 12-15,18");
        assert_eq!(Mark::parse(10, &mark.metadata()), mark);
        assert_eq!(Mark::parse(10, "autoglm-replay/1"), Mark::start(10));
        // Metadata no replay wrote (an admin tool's reset) holds no ranges.
        assert_eq!(Mark::parse(10, ""), Mark::start(10));
        assert_eq!(Mark::parse(10, "autoglm-replay/1 12-x"), Mark::start(10));
        assert!(mark.contains(9) && mark.contains(13) && mark.contains(18));
        assert!(!mark.contains(10) && !mark.contains(16) && !mark.contains(19));
        // Retention removed the records below 13: the range from there on is below the mark.
        assert_eq!(
            mark.clone().at_least(13),
            Mark {
                next: 16,
                done: vec![(18, 18)]
            }
        );
        assert_eq!(mark.clone().at_least(5), mark);
    }

    /// Runs one replay over `records` (offset, rule) of a partition ending at `end`, taking
    /// `rule` only: what each cursor step does for a record.
    fn run(start: Mark, end: i64, records: &[(i64, &str)], rule: &str) -> (Mark, Vec<i64>) {
        let mut cursor = Cursor::new(start, end);
        let mut replayed = Vec::new();
        let from = cursor.read_to;
        for &(offset, r) in records.iter().filter(|(o, _)| *o >= from) {
            if cursor.replayed_before(offset) {
                cursor.pass(offset);
            } else if r == rule {
                replayed.push(offset);
                cursor.pass(offset);
            } else {
                cursor.leave(offset);
            }
        }
        cursor.advance(end);
        assert!(cursor.is_finished());
        (cursor.mark(), replayed)
    }

    #[test]
    fn a_replay_with_one_filter_leaves_the_others_records_reachable_and_none_twice() {
        // Offsets 0..10 alternate rules a and b; 10 is a commit marker.
        let records: Vec<(i64, &str)> = (0..10)
            .map(|o| (o, if o % 2 == 0 { "a" } else { "b" }))
            .collect();
        let (mark, replayed) = run(Mark::start(0), 11, &records, "a");
        assert_eq!(replayed, [0, 2, 4, 6, 8]);
        assert_eq!(
            mark,
            Mark {
                next: 1,
                done: vec![(2, 2), (4, 4), (6, 6), (8, 8)]
            }
        );
        // The same filter again takes nothing.
        let (again, replayed) = run(mark.clone(), 11, &records, "a");
        assert!(replayed.is_empty());
        assert_eq!(again, mark);
        // The other filter reaches the rest, and the partition is done: the mark is its end.
        let (done, replayed) = run(mark, 11, &records, "b");
        assert_eq!(replayed, [1, 3, 5, 7, 9]);
        assert_eq!(done, Mark::start(11));
        let (_, replayed) = run(done, 11, &records, "b");
        assert!(replayed.is_empty());
    }

    #[test]
    fn a_replay_stops_a_partition_before_its_marks_outgrow_the_metadata() {
        let mut cursor = Cursor::new(Mark::start(0), 1_000_000);
        let mut offset = 0;
        cursor.leave(offset);
        loop {
            offset += 2;
            if !cursor.can_pass(offset) {
                break;
            }
            cursor.pass(offset);
            offset += 1;
            cursor.leave(offset);
        }
        assert!(cursor.mark().metadata().len() <= METADATA_MAX);
        assert!(cursor.mark().metadata().len() > METADATA_MAX - 20);
        // Extending the last range never needs room a new one would.
        let mut cursor = Cursor::new(Mark::start(0), 10);
        cursor.leave(0);
        cursor.pass(1);
        assert!(cursor.can_pass(2));
        cursor.pass(2);
        assert_eq!(cursor.mark().metadata(), "autoglm-replay/1 1-2");
    }

    #[test]
    fn a_mark_mid_way_keeps_what_an_earlier_replay_did_above_what_this_one_read() {
        let start = Mark {
            next: 0,
            done: vec![(3, 3), (5, 6)],
        };
        let mut cursor = Cursor::new(start.clone(), 10);
        assert_eq!(cursor.mark(), start, "nothing read: the mark as committed");
        cursor.leave(0);
        cursor.pass(1);
        assert_eq!(
            cursor.mark(),
            Mark {
                next: 0,
                done: vec![(1, 1), (3, 3), (5, 6)]
            }
        );
        assert_eq!(
            Mark::parse(0, "autoglm-replay/1 3,4-6").done,
            [(3, 6)],
            "touching ranges merge"
        );
    }

    #[test]
    fn a_partition_stopped_early_keeps_what_an_earlier_replay_did_above_the_stop() {
        let start = Mark {
            next: 0,
            done: vec![(2, 5), (8, 8)],
        };
        // Record 0 left, 1 replayed now, 2 replayed before, then a stop at 3.
        let mut cursor = Cursor::new(start.clone(), 20);
        cursor.leave(0);
        cursor.pass(1);
        assert!(cursor.replayed_before(2));
        cursor.pass(2);
        cursor.stop();
        assert_eq!(
            cursor.mark(),
            Mark {
                next: 0,
                done: vec![(1, 5), (8, 8)]
            }
        );
        // Nothing left below the stop: the mark moves up to it, and past a range there.
        let mut clean = Cursor::new(start, 20);
        clean.pass(0);
        clean.pass(1);
        clean.stop();
        assert_eq!(
            clean.mark(),
            Mark {
                next: 6,
                done: vec![(8, 8)]
            }
        );
        // The ranges a stop keeps count against the metadata's size.
        let many: Vec<(i64, i64)> = (0..400)
            .map(|i| (1_000_000 + 2 * i, 1_000_000 + 2 * i))
            .collect();
        let mut full = Cursor::new(
            Mark {
                next: 0,
                done: many,
            },
            2_000_000,
        );
        full.leave(0);
        assert!(full.start_tail_len(6) > METADATA_MAX);
        assert!(!full.can_pass(5));
    }
}
