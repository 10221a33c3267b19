//! The fault matrix (`docs/fault-matrix.md`), generated from what the real stack does.
//!
//! Every upstream fault the simulator can produce — × streamed or not × one account or a pool
//! of two — is sent through the real proxy on a fresh harness, and what came back is
//! *observed*: the status, the error's type and code (or the in-band error event's), the
//! upstream attempts per account (the simulator's stats), whether the turn moved, the
//! retries and the counters that changed (`/metrics`), the accounts' states (`/health`) and
//! what a plain request meets next. The observations are written as a table into
//! `docs/fault-matrix.md`; the test fails when the file in the repository differs from what
//! it observed (`UPDATE_FAULT_MATRIX=1` rewrites it), so the document cannot drift. Before
//! that comparison, every row is checked against what the README promises (`invariants`),
//! so a regression fails here even when someone regenerates the document.

// Tests: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "fault_matrix/cases.rs"]
mod cases;
#[path = "fault_matrix/observe.rs"]
mod observe;
#[path = "fault_matrix/render.rs"]
mod render;

use std::path::Path;
use std::time::Instant;

use futures::StreamExt;

use cases::{cases, Case};
use observe::{observe, Observation};

/// Cases run at once: each has its own simulator and proxy; few enough that a loaded
/// two-core machine keeps the timeouts the timing rows rely on far apart.
const PARALLEL: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix() {
    let started = Instant::now();
    let all: Vec<Case> = cases();
    let observed: Vec<(Case, Observation)> = futures::stream::iter(all)
        .map(|case| async move {
            let o = observe(&case).await;
            (case, o)
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    let mut broken = Vec::new();
    for (case, o) in &observed {
        if let Err(why) = cases::invariants(case, o) {
            broken.push(format!("{}: {why}\n  observed: {o:?}", case.label()));
        }
    }
    assert!(
        broken.is_empty(),
        "{} row(s) break what the README promises:\n{}",
        broken.len(),
        broken.join("\n")
    );
    let doc = render::document(&observed);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/fault-matrix.md");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    eprintln!(
        "fault matrix: {} cases in {:.1?}",
        observed.len(),
        started.elapsed()
    );
    if std::env::var("UPDATE_FAULT_MATRIX").is_ok_and(|v| v == "1") {
        if current != doc {
            std::fs::write(&path, &doc).unwrap();
            eprintln!("fault matrix: {} rewritten", path.display());
        }
        return;
    }
    if current != doc {
        let diff: Vec<String> = diff_lines(&current, &doc);
        panic!(
            "docs/fault-matrix.md differs from what the stack does now ({} line(s); \
             run `UPDATE_FAULT_MATRIX=1 cargo test --test fault_matrix` if the change is \
             intended, and review it):\n{}",
            diff.len(),
            diff.join("\n")
        );
    }
}

/// The lines of `old` and `new` that differ (by position; a readable hint, not a diff
/// algorithm: rows are one line each and their order is fixed).
fn diff_lines(old: &str, new: &str) -> Vec<String> {
    let (old, new): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let mut out = Vec::new();
    for i in 0..old.len().max(new.len()) {
        let (o, n) = (old.get(i).copied(), new.get(i).copied());
        if o != n {
            out.push(format!(
                "line {}:\n  - {}\n  + {}",
                i + 1,
                o.unwrap_or("(none)"),
                n.unwrap_or("(none)")
            ));
        }
    }
    out
}
