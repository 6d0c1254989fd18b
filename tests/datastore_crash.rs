//! Crash consistency: a writer SIGKILLed at random instants never loses a commit it
//! acknowledged and never leaves a damaged datastore.
//!
//! The test binary re-executes itself as the writer (`child_writer`, active only when
//! `TRIDENT_CRASH_CHILD` names a datastore). The writer prints `committed <id>` after
//! every `record` returned, and checkpoints the WAL every fourth commit. The parent
//! lets a random number of commits through, kills it with SIGKILL at a random instant
//! (every tenth round: during creation of a fresh datastore), then checks that the
//! datastore opens, passes `integrity_check`, holds every acknowledged row, and that
//! the current Host Status is the one of the newest history row.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use trident::datastore::Datastore;
use trident::status::HostStatus;

const CHILD_ENV: &str = "TRIDENT_CRASH_CHILD";
const KILLS: usize = 100;

/// The writer side. Does nothing in a normal test run.
#[test]
fn child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut ds = Datastore::open(Path::new(&path)).expect("child opens the datastore");
    let mut out = std::io::stdout().lock();
    // libtest has already printed `test child_writer ... ` without a newline.
    writeln!(out, "\nopened").unwrap();
    out.flush().unwrap();
    for i in 0u64.. {
        let mut hs = HostStatus::default();
        // Vary the size of the rows so that page splits and overflow pages happen.
        let blob = "x".repeat((i as usize * 997) % 12_000);
        hs.block_devices = BTreeMap::from([
            ("counter".to_string(), PathBuf::from(format!("/dev/n{i}"))),
            ("padding".to_string(), PathBuf::from(blob)),
        ]);
        let entry = ds.record("crash-test", &hs).expect("child records");
        writeln!(out, "committed {}", entry.id).unwrap();
        out.flush().unwrap();
        // Checkpoint now and then, so that kills also land inside checkpoints.
        if i % 4 == 3 {
            ds.checkpoint().expect("child checkpoints");
        }
    }
}

/// xorshift64*, seeded from the clock (printed, so a failure can be replayed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn sigkill_never_loses_an_acknowledged_commit() {
    let seed = std::env::var("TRIDENT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed {seed} (set TRIDENT_CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();

    let mut path = dir.path().join("ds-0/datastore.sqlite");
    let mut killed_with_commits = 0;
    let mut max_rows = 0;
    for round in 0..KILLS {
        // Every tenth round starts a fresh datastore and kills early, to also hit the
        // creation and schema initialisation.
        let fresh = round % 10 == 0;
        if fresh {
            path = dir.path().join(format!("ds-{round}/datastore.sqlite"));
        }
        let (events_tx, events) = std::sync::mpsc::channel::<Option<i64>>();
        let mut child = Command::new(&exe)
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Forwards `None` for "opened" and `Some(id)` for each acknowledged commit.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event = if line.trim() == "opened" {
                    None
                } else if let Some(id) = line.strip_prefix("committed ") {
                    Some(id.trim().parse::<i64>().unwrap())
                } else {
                    continue;
                };
                if events_tx.send(event).is_err() {
                    break;
                }
            }
        });
        let start = Instant::now();
        let mut acked = Vec::new();
        if fresh {
            // Kill somewhere in start-up, creation or schema initialisation.
            std::thread::sleep(Duration::from_micros(rng.below(15_000)));
        } else {
            // Aim into the commit loop whatever the machine's speed: let a random number
            // of commits through, then kill at a random instant within the next ones.
            let wanted = rng.below(25) as usize;
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut opened = false;
            while !opened || acked.len() < wanted {
                let left = deadline.saturating_duration_since(Instant::now());
                match events.recv_timeout(left) {
                    Ok(None) => opened = true,
                    Ok(Some(id)) => acked.push(id),
                    Err(e) => panic!("round {round}: writer stalled ({e}) after {acked:?}"),
                }
            }
            std::thread::sleep(Duration::from_micros(rng.below(8_000)));
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the writer exited by itself ({status}) after {:?}",
            start.elapsed()
        );
        reader.join().unwrap();
        acked.extend(events.try_iter().flatten());

        if !path.exists() {
            assert!(
                acked.is_empty(),
                "round {round}: commits acknowledged, no file"
            );
            continue;
        }
        let ds = Datastore::open_existing(&path)
            .unwrap_or_else(|e| panic!("round {round} (seed {seed}): reopening: {e:#}"));
        ds.integrity_check()
            .unwrap_or_else(|e| panic!("round {round} (seed {seed}): {e:#}"));
        let history = ds.history(None).unwrap();
        let ids: std::collections::BTreeSet<i64> = history.iter().map(|e| e.id).collect();
        for id in &acked {
            assert!(
                ids.contains(id),
                "round {round} (seed {seed}): acknowledged row {id} lost; newest is {:?}",
                ids.last()
            );
        }
        // At most the one in-flight commit beyond the last acknowledged one survived.
        if let Some(&last) = acked.last() {
            assert!(
                *ids.last().unwrap() <= last + 1,
                "round {round}: phantom rows"
            );
            killed_with_commits += 1;
        }
        let current = ds.host_status().unwrap();
        match history.first() {
            Some(newest) => assert_eq!(current, newest.host_status, "round {round}"),
            None => assert_eq!(current, HostStatus::default()),
        }
        max_rows = max_rows.max(history.len());
    }
    eprintln!(
        "{killed_with_commits}/{KILLS} kills after at least one commit; up to {max_rows} rows"
    );
    assert!(
        killed_with_commits >= KILLS / 2,
        "too few kills landed after a commit ({killed_with_commits}); the test proves little"
    );
}
