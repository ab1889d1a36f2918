//! The real chain converges: random SQL on a PostgreSQL table (inserts, optimistic-lock updates,
//! deletes, transactions of several rows, some rolled back, two writers racing on a row), captured
//! by Debezium in Kafka Connect, synced by `autoglm run`, while the Connect worker is killed
//! (SIGKILL) and restarted, and autoglm is killed (SIGKILL) twice and restarted. At the end a
//! compacted read of the ERP topic equals the table, mapped: the same keys, the same latest
//! versions and values, deleted rows absent, and nothing in the DLQ.
//!
//! Changes are ordered by their position in PostgreSQL's WAL (`version: log_position`).
//!
//! Sizes: `CDC_STEPS` (default 1200) writer steps over `CDC_KEYS` (default 150) keys, by two
//! writers at once; `CDC_SEED` (default 1).

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use autoglm_demo::connect::Converter;
use autoglm_demo::crm::{CREATE_TABLE, Crm};
use autoglm_tests::{cdc_stack, repo_root, stack};
use common::cdc::{Capture, CdcJob};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The demo's route: the ERP row is exactly what [`Crm::rows`] reads from the table.
const MAPPING: &str = "{ rename: { usr_name: user_name, email: email_address }, \
    drop: [password_hash, region], fields: { id: { type: long, required: true }, \
    credit_limit: { type: { decimal: { scale: 2 } } }, \
    updated_at: { type: timestamp, input: { unit: epoch_millis }, output: epoch_millis } } }";

/// One writer's share of the workload. Returns nothing; counts the records Debezium will write
/// (one per changed row, two per deleted row) into `records`.
async fn writer(url: String, seed: u64, steps: u64, keys: i64, records: Arc<AtomicI64>) {
    let crm = Crm::connect(&url).await.expect("writer connects");
    let rival = Crm::connect(&url).await.expect("rival connects");
    let mut rng = fastrand::Rng::with_seed(seed);
    let credit =
        |rng: &mut fastrand::Rng| format!("{}.{:02}", rng.u32(0..100_000), rng.u32(0..100));
    for _ in 0..steps {
        let id = rng.i64(1..=keys);
        match rng.u32(0..100) {
            // Insert, unless the key exists.
            0..25 => {
                let c = credit(&mut rng);
                let n = crm
                    .client()
                    .execute(
                        "INSERT INTO customers
                           (id, usr_name, email, tax_id, credit_limit, password_hash, region, version)
                         VALUES ($1, $2, $3, NULL, $4::text::numeric, 'x', 'cn', 1)
                         ON CONFLICT (id) DO NOTHING",
                        &[&id, &format!("user{id}"), &format!("u{id}@crm.example"), &c],
                    )
                    .await
                    .expect("insert");
                records.fetch_add(n as i64, Ordering::Relaxed);
            }
            // An optimistic-lock update of the version this writer read.
            25..60 => {
                if let Some(seen) = crm.version(id).await.expect("read version") {
                    let c = credit(&mut rng);
                    if Crm::update_if(crm.client(), id, seen, &c)
                        .await
                        .expect("update")
                    {
                        records.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // Two writers race on the same version: the lock lets one through.
            60..70 => {
                if let Some(seen) = crm.version(id).await.expect("read version") {
                    let (a, b) = (credit(&mut rng), credit(&mut rng));
                    let (won_a, won_b) = tokio::try_join!(
                        Crm::update_if(crm.client(), id, seen, &a),
                        Crm::update_if(rival.client(), id, seen, &b),
                    )
                    .expect("race");
                    assert!(
                        !(won_a && won_b),
                        "the optimistic lock let both writers through"
                    );
                    records.fetch_add(i64::from(won_a) + i64::from(won_b), Ordering::Relaxed);
                }
            }
            // Delete (the event and its tombstone).
            70..80 => {
                let n = crm
                    .client()
                    .execute("DELETE FROM customers WHERE id = $1", &[&id])
                    .await
                    .expect("delete");
                records.fetch_add(2 * n as i64, Ordering::Relaxed);
            }
            // A transaction of several rows; one in five rolls back.
            _ => {
                let commit = rng.u32(0..5) != 0;
                let ids: Vec<i64> = (0..rng.u32(2..5)).map(|_| rng.i64(1..=keys)).collect();
                let mut changed = 0;
                crm.client().batch_execute("BEGIN").await.expect("begin");
                for id in ids {
                    let c = credit(&mut rng);
                    changed += crm
                        .client()
                        .execute(
                            "UPDATE customers SET credit_limit = $2::text::numeric,
                                    version = version + 1, updated_at = now()
                             WHERE id = $1",
                            &[&id, &c],
                        )
                        .await
                        .expect("update in a transaction");
                }
                let end = if commit { "COMMIT" } else { "ROLLBACK" };
                crm.client().batch_execute(end).await.expect("end");
                if commit {
                    records.fetch_add(changed as i64, Ordering::Relaxed);
                }
            }
        }
    }
}

fn bounce_connect() {
    let status = Command::new("bash")
        .arg(repo_root().join("deploy/local/stack.sh"))
        .args(["bounce-connect", "hard"])
        .status()
        .expect("run stack.sh");
    assert!(status.success(), "stack.sh bounce-connect hard failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn converges_through_connect_restarts_and_kills() {
    let (steps, keys, seed) = (
        setting("CDC_STEPS", 1200),
        setting("CDC_KEYS", 150) as i64,
        setting("CDC_SEED", 1),
    );
    let stack = stack().await;
    let cdc = cdc_stack().await;
    let capture = Capture {
        converter: Converter::JsonWithSchema,
        decimal_handling_mode: "precise",
        time_precision_mode: "adaptive",
        mapping: MAPPING.to_owned(),
        // Not the version column: the workload deletes keys and inserts them again at version
        // 1, which the version guard rightly takes for older than the delete it remembers
        // (docs/debezium.md). The commit order in the WAL orders every change of a key.
        version: "log_position",
    };
    let job = CdcJob::new(&stack, &cdc, &capture, CREATE_TABLE).await;
    let snapshot = keys / 3;
    for id in 1..=snapshot {
        job.crm
            .insert(id, &format!("user{id}"), "100.00")
            .await
            .expect("snapshot row");
    }
    // The snapshot's rows, as `Crm::insert` writes them (with a tax id).
    job.start_connector(snapshot).await;
    let records = Arc::new(AtomicI64::new(snapshot));

    // Two writers, each in four quarters; between the quarters, the faults.
    let url = job.source.postgres_url.clone();
    let quarter = steps / 2 / 4;
    let (mut run, mut erp_seen) = (0, 0);
    let mut autoglm = job.start(run, 60);
    for q in 0..4u64 {
        let writers: Vec<_> = (0..2)
            .map(|w| {
                tokio::spawn(writer(
                    url.clone(),
                    seed * 1000 + q * 10 + w,
                    quarter,
                    keys,
                    records.clone(),
                ))
            })
            .collect();
        // The fault lands while the writers write.
        tokio::time::sleep(Duration::from_millis(300)).await;
        match q {
            0 | 2 => {
                // Once it has written something since the last kill: mid-work.
                erp_seen = job.erp_grows_past(erp_seen).await;
                autoglm.kill().expect("SIGKILL autoglm");
                autoglm.wait().expect("reap");
                run += 1;
                autoglm = job.start(run, 60);
            }
            1 => {
                // Killed before its stream's first offset commit, the worker would make
                // Debezium snapshot again, and miss the rows deleted meanwhile (see
                // docs/debezium.md): not what this test is about.
                job.streaming().await;
                tokio::task::spawn_blocking(bounce_connect)
                    .await
                    .expect("bounce");
            }
            _ => {}
        }
        for w in writers {
            w.await.expect("writer");
        }
    }
    let records = records.load(Ordering::Relaxed);
    // Connect replays what it had not committed when it was killed: at least this many.
    job.captured(records).await;
    autoglm.kill().expect("SIGKILL autoglm");
    autoglm.wait().expect("reap");
    run += 1;
    job.run_to_idle(run).await;

    let table = job.crm.rows().await.expect("read the table");
    let erp = job.erp().await;
    let differ: Vec<_> = table
        .keys()
        .chain(erp.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|id| table.get(id) != erp.get(id))
        .map(|id| format!("id {id}: table {:?}, erp {:?}", table.get(id), erp.get(id)))
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} keys differ ({} records captured; see {}):\n{}",
        differ.len(),
        table.len(),
        records,
        job.dir().display(),
        differ.join("\n")
    );
    let dead = job.dead_letters().await;
    assert!(dead.is_empty(), "nothing is dead-lettered: {dead:?}");
    eprintln!(
        "converged: {} rows, {records} change records from {steps} writer steps on {keys} keys, \
         autoglm killed twice, Connect killed once",
        table.len()
    );
    job.cleanup().await;
}
