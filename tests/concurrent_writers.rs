//! Many writers at once, with real forked processes: processes times threads updating the same
//! series give exact merged totals; a file growing through many doublings while another
//! process scrapes it in a loop always scrapes cleanly, with no torn value and no series lost;
//! a writer killed with `SIGKILL` in the middle of its work leaves a file that scrapes cleanly
//! with every series it published.
//!
//! A forked child never returns into the test harness: it does its work under `catch_unwind`,
//! reports a failure through a pipe, and leaves with `_exit`. The parent waits with a deadline
//! and kills a child that hangs.

use std::collections::BTreeMap;
use std::fs;

use std::sync::atomic::Ordering;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use prometheus_multiproc::collector::{MetricFamily, Scrape};
use prometheus_multiproc::{GaugeMode, Registry};

// ------------------------------------------------------------------ forked children

#[macro_use]
mod forked;
use forked::*;

mod support;
use support::{clean_scrape, value_in as value};

const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------ scrapes

/// The value of every sample `name`, by the value of its label `label` (other labels must
/// match `with`).
fn by_label(
    families: &[MetricFamily],
    name: &str,
    label: &str,
    with: &[(&str, &str)],
) -> BTreeMap<String, f64> {
    families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(n, v)| s.labels.iter().any(|(ln, lv)| ln == n && lv == v))
        })
        .filter_map(|s| {
            s.labels
                .iter()
                .find(|(n, _)| n == label)
                .map(|(_, v)| (v.clone(), s.value))
        })
        .collect()
}

// ------------------------------------------------------------------ tests

#[test]
fn processes_times_threads_updating_shared_series_give_exact_totals() {
    const PROCESSES: usize = 4;
    const THREADS: usize = 4;
    const K: usize = 21_000; // a multiple of 7
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(dir.path()).unwrap();
    let requests = registry.counter("requests_total", "Requests.").unwrap();
    let by_route = registry
        .counter_vec("routes_total", "Requests by route.", &["route"])
        .unwrap();
    let shared_route = by_route.with_label_values(&["shared"]);
    let latency = registry
        .histogram("latency_seconds", "Latency.", &[1.0, 2.0, 5.0])
        .unwrap();
    let by_kind = registry
        .histogram_vec("size_bytes", "Sizes.", &["kind"], &[3.0])
        .unwrap();
    let work = registry.summary("work_seconds", "Work.").unwrap();
    let level = registry.gauge("level", "Level.", GaugeMode::Sum).unwrap();

    let mut children: Vec<Forked> = (0..PROCESSES)
        .map(|p| {
            let (requests, by_route, shared_route, latency, by_kind, work, level) = (
                &requests,
                &by_route,
                &shared_route,
                &latency,
                &by_kind,
                &work,
                &level,
            );
            fork_child(move || {
                // All threads make their first use of the inherited handles at once.
                let start = Barrier::new(THREADS);
                thread::scope(|s| {
                    for t in 0..THREADS {
                        let start = &start;
                        s.spawn(move || {
                            start.wait();
                            let own = format!("p{p}t{t}");
                            for i in 0..K {
                                requests.inc();
                                shared_route.inc();
                                by_route.with_label_values(&["looked-up"]).inc();
                                by_route.with_label_values(&[&own]).inc_by(2.0).unwrap();
                                latency.observe((i % 7) as f64);
                                by_kind.with_label_values(&["shared"]).observe(1.0);
                                work.observe(0.5);
                                level.inc();
                            }
                        });
                    }
                });
                let total = (THREADS * K) as f64;
                ensure!(requests.get() == total, "requests {}", requests.get());
                ensure!(shared_route.get() == total, "shared {}", shared_route.get());
                Ok(())
            })
        })
        .collect();
    for child in &mut children {
        child.wait(CHILD_TIMEOUT).unwrap();
    }

    let merged = clean_scrape(dir.path()).families;
    let n = (PROCESSES * THREADS * K) as f64;
    assert_eq!(value(&merged, "requests_total", &[]), Some(n));
    assert_eq!(
        value(&merged, "routes_total", &[("route", "shared")]),
        Some(n)
    );
    assert_eq!(
        value(&merged, "routes_total", &[("route", "looked-up")]),
        Some(n)
    );
    for p in 0..PROCESSES {
        for t in 0..THREADS {
            assert_eq!(
                value(&merged, "routes_total", &[("route", &format!("p{p}t{t}"))]),
                Some(2.0 * K as f64)
            );
        }
    }
    // Observations 0..=6 cycle: n/7 of each.
    let per_value = n / 7.0;
    let le = |bound: &str| value(&merged, "latency_seconds_bucket", &[("le", bound)]);
    assert_eq!(le("1.0"), Some(2.0 * per_value));
    assert_eq!(le("2.0"), Some(3.0 * per_value));
    assert_eq!(le("5.0"), Some(6.0 * per_value));
    assert_eq!(le("+Inf"), Some(n));
    assert_eq!(value(&merged, "latency_seconds_count", &[]), Some(n));
    assert_eq!(
        value(&merged, "latency_seconds_sum", &[]),
        Some(21.0 * per_value)
    );
    assert_eq!(
        value(
            &merged,
            "size_bytes_bucket",
            &[("kind", "shared"), ("le", "3.0")]
        ),
        Some(n)
    );
    assert_eq!(
        value(&merged, "size_bytes_count", &[("kind", "shared")]),
        Some(n)
    );
    assert_eq!(value(&merged, "work_seconds_count", &[]), Some(n));
    assert_eq!(value(&merged, "work_seconds_sum", &[]), Some(n / 2.0));
    assert_eq!(value(&merged, "level", &[]), Some(n));
}

/// The value series `i` is set to: many mantissa bits, so a torn read cannot pass for it.
fn pattern(i: usize) -> f64 {
    (i as f64 + 1.0) * 1.1
}

fn index_label(i: usize) -> String {
    format!("{i:06}")
}

#[test]
fn file_grows_through_many_doublings_while_another_process_scrapes() {
    const SERIES: usize = 6_000;
    // The writer pauses after these many series until the scraper has seen them: small steps
    // first, so that every size of the file (64 KiB to 8 MiB) is scraped.
    const BATCH_ENDS: [usize; 18] = [
        20, 40, 80, 160, 240, 400, 600, 800, 1200, 1600, 2000, 2500, 3000, 3600, 4200, 4800, 5400,
        SERIES,
    ];
    let dir = tempfile::tempdir().unwrap();
    // A long help text makes each entry about 770 bytes: 6000 of them take 64 KiB to 8 MiB.
    let help = format!("Grows the file. {}", "x".repeat(700));
    // Slots: 0 series published, 1 scrapes done, 2 the writer's pid.
    let shared = Shared::new(3);

    let mut writer = fork_child(|| {
        let registry = Registry::new(dir.path()).map_err(|e| e.to_string())?;
        let created = registry
            .counter("grow_created_total", "Series created.")
            .map_err(|e| e.to_string())?;
        let grow = registry
            .counter_vec("grow_total", &help, &["idx"])
            .map_err(|e| e.to_string())?;
        let mut start = 0;
        for (batch, &end) in BATCH_ENDS.iter().enumerate() {
            for i in start..end {
                let c = grow
                    .get_metric_with_label_values(&[&index_label(i)])
                    .map_err(|e| e.to_string())?;
                c.inc_by(pattern(i)).map_err(|e| e.to_string())?;
                created.inc();
                shared.at(0).store(i as u64 + 1, Ordering::SeqCst);
            }
            // Let the scraper see this stage of growth: wait for a whole scrape after it.
            let seen = shared.at(1).load(Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(20);
            while shared.at(1).load(Ordering::SeqCst) < seen + 2 {
                ensure!(Instant::now() < deadline, "no scrape after batch {batch}");
                thread::sleep(Duration::from_micros(200));
            }
            start = end;
        }
        Ok(())
    });
    let file = dir.path().join(format!("counter_{}.db", writer.pid()));

    let mut scrapes = 0u64;
    let mut last_count = 0usize;
    let mut last_created = 0.0;
    let mut sizes = std::collections::BTreeSet::new();
    let mut counts = std::collections::BTreeSet::new();
    let check = |scrape: &Scrape| -> (usize, f64) {
        let series = by_label(&scrape.families, "grow_total", "idx", &[]);
        for (n, (label, v)) in series.iter().enumerate() {
            // Series are published in order: the scrape sees a prefix of them.
            assert_eq!(*label, index_label(n), "series missing before {label}");
            let expected = pattern(n);
            assert!(
                *v == 0.0 || *v == expected,
                "series {label} = {v} ({:#x}), expected 0 or {expected}",
                v.to_bits()
            );
        }
        let created = value(&scrape.families, "grow_created_total", &[]).unwrap_or(0.0);
        (series.len(), created)
    };
    let status = loop {
        let done = writer.try_wait();
        if let Ok(size) = fs::metadata(&file).map(|m| m.len()) {
            sizes.insert(size);
        }
        let scrape = clean_scrape(dir.path());
        let (count, created) = check(&scrape);
        assert!(
            count >= last_count,
            "series went from {last_count} to {count}"
        );
        assert!(
            created >= last_created && created.fract() == 0.0 && created <= SERIES as f64,
            "created went from {last_created} to {created}"
        );
        last_count = count;
        last_created = created;
        counts.insert(count);
        scrapes += 1;
        shared.at(1).store(scrapes, Ordering::SeqCst);
        if let Some(status) = done {
            break status;
        }
    };
    status.unwrap();

    let scrape = clean_scrape(dir.path());
    let (count, created) = check(&scrape);
    assert_eq!(count, SERIES);
    assert_eq!(created, SERIES as f64);
    let series = by_label(&scrape.families, "grow_total", "idx", &[]);
    assert!(series
        .iter()
        .enumerate()
        .all(|(n, (_, v))| *v == pattern(n)));
    let size = fs::metadata(&file).unwrap().len();
    assert!(size >= 4 << 20, "file is only {size} bytes");
    assert!(
        sizes.len() >= 8,
        "scrapes saw only the file sizes {sizes:?}"
    );
    assert!(
        counts.len() >= BATCH_ENDS.len(),
        "{scrapes} scrapes saw only {} distinct series counts",
        counts.len()
    );
}

#[test]
fn writer_killed_midway_leaves_a_file_that_scrapes_cleanly_with_every_published_series() {
    // Each writer is killed once it has published this many series (files of 64 KiB to
    // 2 MiB at that point).
    const KILL_AT: [usize; 4] = [40, 700, 2_500, 6_000];
    let dir = tempfile::tempdir().unwrap();
    // Slot w: the series writer w has published (created and set).
    let shared = Shared::new(KILL_AT.len());
    let help = format!("Killed writers. {}", "y".repeat(200));

    let mut writers: Vec<Forked> = (0..KILL_AT.len())
        .map(|w| {
            let (dir, shared, help) = (&dir, &shared, &help);
            fork_child(move || {
                let registry = Registry::new(dir.path()).map_err(|e| e.to_string())?;
                let series = registry
                    .counter_vec("killed_total", help, &["writer", "idx"])
                    .map_err(|e| e.to_string())?;
                let latency = registry
                    .histogram_vec("killed_seconds", "Killed.", &["idx"], &[1.0])
                    .map_err(|e| e.to_string())?;
                let writer = w.to_string();
                for i in 0..1_000_000 {
                    let c = series
                        .get_metric_with_label_values(&[&writer, &index_label(i)])
                        .map_err(|e| e.to_string())?;
                    c.inc_by(pattern(i)).map_err(|e| e.to_string())?;
                    latency
                        .with_label_values(&[&index_label(i % 50)])
                        .observe(0.5);
                    shared.at(w).store(i as u64 + 1, Ordering::SeqCst);
                }
                Err("never killed".to_owned())
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut published = vec![0usize; KILL_AT.len()];
    let mut killed = vec![false; KILL_AT.len()];
    while killed.iter().any(|k| !k) {
        assert!(Instant::now() < deadline, "writers too slow: {published:?}");
        for (w, writer) in writers.iter_mut().enumerate() {
            if !killed[w] && shared.at(w).load(Ordering::SeqCst) as usize >= KILL_AT[w] {
                writer.kill();
                killed[w] = true;
                published[w] = shared.at(w).load(Ordering::SeqCst) as usize;
            }
        }
        thread::sleep(Duration::from_micros(100));
    }

    let scrape = clean_scrape(dir.path());
    for (w, &n) in published.iter().enumerate() {
        let writer = w.to_string();
        let series = by_label(
            &scrape.families,
            "killed_total",
            "idx",
            &[("writer", &writer)],
        );
        assert!(
            series.len() == n || series.len() == n + 1,
            "writer {w} published {n} series, the file has {}",
            series.len()
        );
        for (i, (label, v)) in series.iter().enumerate() {
            assert_eq!(*label, index_label(i));
            // The last one may have been created but not yet set when the kill came.
            let ok = *v == pattern(i) || (i == n && *v == 0.0);
            assert!(ok, "writer {w} series {i} = {v}");
        }
    }
    // The histogram files of the killed writers scrape cleanly too: buckets add up.
    let counts = by_label(&scrape.families, "killed_seconds_count", "idx", &[]);
    let total: f64 = counts.values().sum();
    let published_total: usize = published.iter().sum();
    assert!(
        total >= published_total as f64 && total <= (published_total + KILL_AT.len()) as f64,
        "{total} observations for {published_total} published series"
    );
}
