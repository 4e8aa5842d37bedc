//! What a build looks like in a terminal (the live view), read off a tmux
//! screen: the final picture shows each step once, in the plan's order.

use crate::common::{from_base, project};

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

#[test]
fn the_final_screen_shows_each_step_once_in_plan_order() {
    let (h, _cleanup) = project("term", YML);
    let h = h
        .file(
            "Dockerfile.slow",
            from_base("RUN sleep 3 && echo slow > /slow\n"),
        )
        .file("Dockerfile.fast", from_base("RUN echo fast > /fast\n"))
        .file("Dockerfile.last", from_base("RUN echo last > /last\n"))
        .args(["--no-cache", "--jobs", "2"]);
    let (screen, code) = h.run_in_terminal(160);
    assert_eq!(code, 0, "{screen}");
    // `fast` finishes first, but the plan lists `slow` first.
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
    let (h, _cleanup) = project("term-plain", YML);
    let out = h
        .file(
            "Dockerfile.slow",
            from_base("RUN sleep 3 && echo slow > /slow\n"),
        )
        .file("Dockerfile.fast", from_base("RUN echo fast > /fast\n"))
        .file("Dockerfile.last", from_base("RUN echo last > /last\n"))
        .args(["--no-cache", "--jobs", "2"])
        .run();
    out.assert_success();
    let summary = &out.stderr[out.stderr.find("summary:").expect("a summary")..];
    let at = |s: &str| summary.find(&format!("term-{s}")).unwrap();
    assert!(
        at("fast") < at("slow") && at("slow") < at("last"),
        "{summary}"
    );
}
