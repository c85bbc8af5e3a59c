//! `flashsale-loadtest demo`, as `scripts/demo.sh` runs it (smaller): the sale on a private
//! Redis ends with every unit sold exactly once, and says so.

use std::process::Command;

#[test]
fn the_demo_sells_every_unit_exactly_once_and_says_so() {
    let output = Command::new(env!("CARGO_BIN_EXE_flashsale-loadtest"))
        .args(["demo", "--stock", "40", "--shards", "4", "--users", "400"])
        .args(["--concurrency", "16", "--hold-ms", "300"])
        .env_remove("FLASHSALE_DEMO_REDIS_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0], "flashsale demo: 40 units over 4 shards",
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("wave one: 800 reserve calls in "),
        "{stdout}"
    );
    assert!(
        stdout.contains("totals: available 0 held 0 sold 40 in transit 0 | loaded 40 restocked 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "conservation: loaded + restocked = available + held + sold + in transit: holds"
        ),
        "{stdout}"
    );
    assert_eq!(
        lines.last(),
        Some(&"result: every unit sold exactly once"),
        "{stdout}"
    );
}
