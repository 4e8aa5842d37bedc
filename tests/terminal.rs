//! What a build looks like in a terminal (the live view), read off a tmux
//! screen: the final picture shows each step once, in the plan's order.
//!
//! Both tests need `fast` to finish before `slow` although the plan lists
//! `slow` first, and the two to build at the same time. A rendezvous makes
//! it so: `fast`'s `RUN` waits until `slow`'s has started, and `slow`'s
//! waits until the test has seen `fast` finish. The run's own output (the
//! `--json` events, or the `built` lines) then shows the order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::rendezvous::Rendezvous;
use crate::common::{from_base, project, Habitus};

const YML: &str = r#"build:
  version: 2016-03-14
  steps:
    slow:
      name: habitus-test/term-slow
      dockerfile: Dockerfile.slow
    fast:
      name: habitus-test/term-fast
      dockerfile: Dockerfile.fast
    last:
      name: habitus-test/term-last
      dockerfile: Dockerfile.last
      depends_on: [slow, fast]
"#;

/// The signal the test gives once it has seen `fast` finish.
const FAST_FINISHED: &str = "fast-finished";

/// The three Dockerfiles, with `slow` and `fast` meeting at `rv`.
fn with_dockerfiles(h: Habitus, rv: &Rendezvous) -> Habitus {
    h.file(
        "Dockerfile.slow",
        from_base(&format!(
            "RUN {} && {} && echo slow > /slow\n",
            rv.signal_cmd("slow-started"),
            rv.wait_cmd(FAST_FINISHED)
        )),
    )
    .file(
        "Dockerfile.fast",
        from_base(&format!(
            "RUN {} && echo fast > /fast\n",
            rv.wait_cmd("slow-started")
        )),
    )
    .file("Dockerfile.last", from_base("RUN echo last > /last\n"))
    .args(["--no-cache", "--jobs", "2"])
}

/// The `(event, step)` pairs of the `--json` events `events`, in order.
fn step_events(events: &str) -> Vec<(String, String)> {
    events
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("`{l}`: {e}"))
        })
        .filter_map(|e| {
            Some((
                e["event"].as_str()?.to_string(),
                e["step"].as_str()?.to_string(),
            ))
        })
        .filter(|(event, _)| event == "step_started" || event == "step_finished")
        .collect()
}

#[test]
fn the_final_screen_shows_each_step_once_in_plan_order() {
    let rv = Rendezvous::start();
    let (h, _cleanup) = project("term", YML);
    let h = with_dockerfiles(h, &rv)
        .arg("--json")
        .terminal_stdout_to("events.jsonl");
    let events_path = h.dir().join("events.jsonl");
    let done = AtomicBool::new(false);
    let (screen, code) = std::thread::scope(|s| {
        // Lets `slow` go on once `fast`'s `step_finished` event is out.
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let events = std::fs::read_to_string(&events_path).unwrap_or_default();
                if step_events(events.rsplit_once('\n').map_or("", |(whole, _)| whole))
                    .contains(&("step_finished".into(), "fast".into()))
                {
                    rv.signal(FAST_FINISHED);
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let result = h.run_in_terminal(160);
        done.store(true, Ordering::Relaxed);
        result
    });
    let events = std::fs::read_to_string(&events_path).unwrap();
    assert_eq!(code, 0, "{screen}\n--- events\n{events}");
    // What the events show: `slow` and `fast` built at the same time and
    // `fast` finished first.
    let order = step_events(&events);
    let at = |event: &str, step: &str| {
        order
            .iter()
            .position(|(e, s)| e == event && s == step)
            .unwrap_or_else(|| panic!("no `{event}` of `{step}`:\n{events}"))
    };
    assert!(
        at("step_started", "slow") < at("step_finished", "fast")
            && at("step_started", "fast") < at("step_finished", "slow"),
        "`slow` and `fast` did not build at the same time:\n{events}"
    );
    assert!(
        at("step_finished", "fast") < at("step_finished", "slow"),
        "{events}"
    );
    // The screen lists them in the plan's order all the same.
    let rows: Vec<&str> = screen
        .lines()
        .filter(|l| l.contains("habitus-test/term-"))
        .collect();
    let order: Vec<&str> = rows
        .iter()
        .map(|row| {
            ["slow", "fast", "last"]
                .into_iter()
                .find(|s| row.contains(&format!("term-{s}")))
                .unwrap()
        })
        .collect();
    assert_eq!(order, ["slow", "fast", "last"], "{screen}");
    assert!(screen.contains("summary:"), "{screen}");
    // The live lines are gone: no step shows a second time.
    assert!(!screen.contains('✓'), "{screen}");
}

#[test]
fn without_a_terminal_the_summary_keeps_the_order_steps_finished_in() {
    let rv = Rendezvous::start();
    let (h, _cleanup) = project("term-plain", YML);
    let h = with_dockerfiles(h, &rv);
    // Lets `slow` go on once `fast`'s `built` line is out.
    let out = h.run_when("fast built `", |_| rv.signal(FAST_FINISHED));
    out.assert_success();
    let line_of = |needle: &str| {
        out.stderr
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with `{needle}`:\n{}", out.stderr))
    };
    // What the lines show: `fast` finished first.
    assert!(
        line_of("fast built `") < line_of("slow built `"),
        "{}",
        out.stderr
    );
    let summary = &out.stderr[out.stderr.find("summary:").expect("a summary")..];
    let at = |s: &str| summary.find(&format!("term-{s}")).unwrap();
    assert!(
        at("fast") < at("slow") && at("slow") < at("last"),
        "{summary}"
    );
}
