//! `report.html`: the report of a sale as one self-contained page (the table, the chart
//! inline, the invariants), to open from disk or attach to a ticket; it fetches nothing.

use std::fmt::Write;

use crate::report::Report;
use crate::stats::Percentiles;

/// Text safe inside HTML elements and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}\
td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}\
td:first-child,th:first-child{text-align:left}\
.ok{color:#1a7f37;font-weight:bold}.bad{color:#cf222e;font-weight:bold}\
.verdict{font-size:1.4em}";

fn latency_row(html: &mut String, name: &str, count: u64, p: &Percentiles) {
    let _ = write!(
        html,
        "<tr><td>{}</td><td>{count}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td>\
         <td>{:.2}</td><td>{:.2}</td></tr>",
        escape(name),
        p.p50,
        p.p90,
        p.p99,
        p.p999,
        p.max
    );
}

/// The page, with `chart_svg` (an SVG document) drawn inline.
pub fn page(report: &Report, chart_svg: &str) -> String {
    let scenario = &report.scenario;
    let title = format!("flashsale: sale of {}", scenario.sku);
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{STYLE}</style></head><body><h1>{}</h1>",
        escape(&title),
        escape(&title)
    );
    let (class, verdict) = if report.passed {
        ("ok", "PASSED: every invariant held")
    } else {
        ("bad", "FAILED: an invariant was violated")
    };
    let _ = write!(html, "<p class=\"verdict {class}\">{verdict}</p>");
    let sku = &report.sku;
    let _ = write!(
        html,
        "<p>{} units over {} shards; {} arrivals from a pool of {} buyers; {} requests over \
         {} in {:.2} s with the buyers' confirms, cancels and retries ({:.0} req/s). At the \
         end: stock {}, sold {}, held {}, available {}; the closing wave bought {}.</p>",
        scenario.stock,
        escape(&sku["shards"].to_string()),
        report.arrivals,
        scenario.users,
        report.requests,
        scenario.protocol,
        report.duration_s,
        report.throughput_rps,
        escape(&sku["stock"].to_string()),
        escape(&sku["sold"].to_string()),
        escape(&sku["held"].to_string()),
        escape(&sku["available"].to_string()),
        report.closing_wave_bought
    );
    if let Some(topology) = &report.topology {
        let _ = write!(html, "<p>Ran on {}.</p>", escape(&topology.to_string()));
    }
    let mut measured = vec![(
        "Redis time in scripts".to_owned(),
        report
            .redis_us_per_reservation
            .map(|us| format!("{us:.2} us")),
    )];
    for (process, figure) in report
        .cpu_per_reservation
        .iter()
        .flat_map(|c| c.sale_parts())
    {
        measured.push((format!("{process} CPU"), Some(figure.to_string())));
    }
    for (what, figure) in measured {
        if let Some(figure) = figure {
            let _ = write!(
                html,
                "<p>{what} per reservation made: {}.</p>",
                escape(&figure)
            );
        }
    }

    html.push_str(
        "<h2>Invariants</h2><table><tr><th>invariant</th><th>verdict</th><th>violations</th></tr>",
    );
    for (name, verdict) in &report.invariants {
        let (class, word) = if verdict.ok {
            ("ok", "ok")
        } else {
            ("bad", "VIOLATED")
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"{class}\">{word}</td><td>{}</td></tr>",
            escape(name),
            verdict.violations
        );
    }
    html.push_str("</table>");
    for (name, broken) in &report.violations {
        let _ = write!(html, "<h3>{}</h3><ul>", escape(name));
        for what in broken {
            let _ = write!(html, "<li>{}</li>", escape(what));
        }
        html.push_str("</ul>");
    }

    html.push_str(
        "<h2>Answers</h2><p>Latency in ms from each request's intended send time (open loop: \
         a slow answer delays nothing that was due after it).</p><table><tr><th>outcome</th>\
         <th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>",
    );
    for (outcome, p) in &report.latency_ms.by_outcome {
        let count = report.outcomes.get(outcome).copied().unwrap_or(0);
        latency_row(&mut html, outcome, count, p);
    }
    latency_row(
        &mut html,
        "all",
        report.outcomes.values().sum(),
        &report.latency_ms.overall,
    );
    html.push_str("</table><h2>Over time</h2>");
    // The chart is our own SVG document, inline: no file next to the page is needed.
    let svg_start = chart_svg.find("<svg").unwrap_or(0);
    html.push_str(&chart_svg[svg_start..]);
    let _ = writeln!(
        html,
        "<h2>Scenario</h2><pre>{}</pre></body></html>",
        escape(&toml::to_string(scenario).unwrap_or_default())
    );
    html
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::chart::{self, ChartInput};
    use crate::cpu::{CpuPer, RequestCpu, Watched};
    use crate::report::Measured;
    use crate::run::RunOutcome;
    use crate::scenario::Scenario;
    use crate::spawn::Topology;
    use crate::stats::Recorder;

    #[test]
    fn the_page_holds_the_table_the_chart_and_the_invariants_and_fetches_nothing() {
        let mut recorder = Recorder::sampled();
        for i in 0..50 {
            let outcome = if i < 10 { "held" } else { "sold_out" };
            recorder.record(
                outcome,
                Duration::from_millis(i * 20),
                Duration::from_millis(2),
            );
        }
        let run = RunOutcome {
            recorder,
            arrivals: 50,
            sent: 50,
            elapsed: Duration::from_secs(1),
            ..RunOutcome::default()
        };
        let mut violations = BTreeMap::new();
        violations.insert("no_oversell", vec![]);
        violations.insert(
            "no_undersell",
            vec!["9 of 10 sold <with demand above supply>".to_owned()],
        );
        let sku =
            serde_json::json!({ "stock": 10, "sold": 9, "held": 0, "available": 1, "shards": 2 });
        let report = Report::new(
            &Scenario::default(),
            &run,
            violations,
            sku,
            Measured::default(),
        );
        let chart = chart::svg(&ChartInput {
            title: "sale".into(),
            samples: run.recorder.samples.as_deref().unwrap_or_default(),
            ..ChartInput::default()
        })
        .unwrap();
        let page = page(&report, &chart);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("FAILED: an invariant was violated"));
        assert!(page.contains("<td>no_oversell</td><td class=\"ok\">ok</td><td>0</td>"));
        assert!(page.contains("<td>no_undersell</td><td class=\"bad\">VIOLATED</td><td>1</td>"));
        assert!(page.contains("&lt;with demand above supply&gt;"), "escaped");
        assert!(page.contains("<td>sold_out</td><td>40</td>"));
        assert!(page.contains("50 arrivals from a pool of 20000 buyers"));
        assert!(
            page.contains("<svg") && page.contains("</svg>"),
            "the chart inline"
        );
        for fetch in ["src=", "href=", "<script", "<link", "url("] {
            assert!(!page.contains(fetch), "{fetch}");
        }
    }

    #[test]
    fn the_page_says_what_ran_the_sale_and_what_it_cost() {
        let used = |name: &str, ms: u64| {
            (
                Watched {
                    name: name.into(),
                    pid: 1,
                },
                Duration::from_millis(ms),
            )
        };
        let topology = Topology {
            redis: "cluster",
            masters: 3,
            replicas: 0,
            engines: 2,
            shards_per_master: [
                ("127.0.0.1:7001", 1),
                ("127.0.0.1:7002", 2),
                ("127.0.0.1:7003", 1),
            ]
            .into_iter()
            .map(|(m, n)| (m.to_owned(), n))
            .collect(),
        };
        let measured = Measured {
            redis_us_per_reservation: Some(12.5),
            cpu_per_reservation: Some(RequestCpu {
                requests: 100,
                server: CpuPer::of(&[used("engine 0", 50)], 100),
                store: CpuPer::of(
                    &[
                        used("redis 127.0.0.1:7001", 10),
                        used("redis 127.0.0.1:7002", 30),
                    ],
                    100,
                ),
                reconciler: None,
                generator: CpuPer::of(&[used("generator", 20)], 100),
            }),
            cpu_per_request: None,
            topology: Some(topology),
        };
        let report = Report::new(
            &Scenario::default(),
            &RunOutcome::default(),
            BTreeMap::new(),
            serde_json::json!({}),
            measured,
        );
        let page = page(&report, "<svg></svg>");
        assert!(
            page.contains(
                "Ran on Redis Cluster of 3 masters (0 replicas each), 2 engines; shards per \
                 master: 127.0.0.1:7001 1, 127.0.0.1:7002 2, 127.0.0.1:7003 1."
            ),
            "{page}"
        );
        assert!(page.contains("Redis time in scripts per reservation made: 12.50 us."));
        assert!(page.contains(
            "redis CPU per reservation made: 400.00 us (redis 127.0.0.1:7001 100.00 us 25%, \
             redis 127.0.0.1:7002 300.00 us 75%)."
        ));
        assert!(page.contains("engine CPU per reservation made: 500.00 us."));
        assert!(page.contains("generator CPU per reservation made: 200.00 us."));
        assert!(!page.contains("reconciler CPU"), "none apart, none shown");
        let text = report.to_string();
        assert!(
            text.contains("topology: Redis Cluster of 3 masters"),
            "{text}"
        );
        let one = Topology {
            replicas: 1,
            engines: 1,
            ..report.topology.clone().unwrap()
        };
        assert!(
            one.to_string()
                .starts_with("Redis Cluster of 3 masters (1 replica each), 1 engine;"),
            "{one}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["topology"]["engines"], 2);
        assert_eq!(json["topology"]["shards_per_master"]["127.0.0.1:7002"], 2);
        assert_eq!(
            json["cpu_per_reservation"]["store"]["by_process"]["redis 127.0.0.1:7002"]["share"],
            0.75
        );
    }

    #[test]
    fn escapes_what_html_would_read_as_markup() {
        assert_eq!(
            escape(r#"<b a="1">&'</b>"#),
            "&lt;b a=&quot;1&quot;&gt;&amp;&#39;&lt;/b&gt;"
        );
    }
}
