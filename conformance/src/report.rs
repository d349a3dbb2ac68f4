//! Case results and the report formats: text lines, JSON and JUnit XML.

use std::fmt::Write as _;
use std::time::Duration;

use convene_protocol::cases::Case;
use serde::Serialize;

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    /// Every step held and the server still served a fresh client.
    Pass,
    /// A step failed; why.
    Fail(String),
    /// The case does not apply to this target; why.
    NotApplicable(String),
}

/// One case's result.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// Case id.
    pub id: &'static str,
    /// PROTOCOL.md section.
    pub section: &'static str,
    /// What it checks.
    pub title: &'static str,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

impl CaseResult {
    /// A result for `case`.
    pub fn new(case: &Case, outcome: Outcome, took: Duration) -> Self {
        CaseResult {
            id: case.id,
            section: case.section,
            title: case.title,
            outcome,
            millis: took.as_millis() as u64,
        }
    }

    /// The one-line form: status, id, section, time, and the reason if any.
    pub fn line(&self) -> String {
        let (status, reason) = match &self.outcome {
            Outcome::Pass => ("PASS", String::new()),
            Outcome::Fail(r) => ("FAIL", format!("\n       {r}")),
            Outcome::NotApplicable(r) => ("N/A ", format!(" — {r}")),
        };
        format!(
            "{status} {:<40} §{:<5} {:>6} ms{reason}",
            self.id, self.section, self.millis
        )
    }
}

/// All results of a run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// In run order.
    pub results: Vec<CaseResult>,
}

impl Report {
    /// (passed, failed, not applicable).
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for r in &self.results {
            match r.outcome {
                Outcome::Pass => c.0 += 1,
                Outcome::Fail(_) => c.1 += 1,
                Outcome::NotApplicable(_) => c.2 += 1,
            }
        }
        c
    }

    /// The closing line: `N passed, N failed, N skipped`.
    pub fn summary(&self) -> String {
        let (p, f, s) = self.counts();
        format!("{p} passed, {f} failed, {s} skipped")
    }

    /// True when no case failed.
    pub fn ok(&self) -> bool {
        self.counts().1 == 0
    }

    /// The report as JSON.
    pub fn to_json(&self) -> String {
        let (passed, failed, not_applicable) = self.counts();
        serde_json::to_string_pretty(&serde_json::json!({
            "passed": passed, "failed": failed, "not_applicable": not_applicable, "cases": self.results,
        }))
        .unwrap_or_default()
    }

    /// The report as JUnit XML, one test case per conformance case.
    pub fn to_junit(&self, suite: &str) -> String {
        let (_, failed, skipped) = self.counts();
        let total: u64 = self.results.iter().map(|r| r.millis).sum();
        let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            s,
            "<testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\" skipped=\"{skipped}\" time=\"{:.3}\">",
            xml(suite),
            self.results.len(),
            total as f64 / 1000.0
        );
        for r in &self.results {
            let _ = write!(
                s,
                "  <testcase classname=\"{}\" name=\"{} (§{})\" time=\"{:.3}\"",
                xml(suite),
                xml(r.id),
                xml(r.section),
                r.millis as f64 / 1000.0
            );
            match &r.outcome {
                Outcome::Pass => s.push_str("/>\n"),
                Outcome::Fail(why) => {
                    let _ = writeln!(s, "><failure message=\"{}\"/></testcase>", xml(why));
                }
                Outcome::NotApplicable(why) => {
                    let _ = writeln!(s, "><skipped message=\"{}\"/></testcase>", xml(why));
                }
            }
        }
        s.push_str("</testsuite>\n");
        s
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
