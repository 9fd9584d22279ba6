//! What a sweep found: one [`RunReport`] per run, as a readable summary or JSON.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::probe::Point;

/// What one run found.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The point's number among the recorded ones, from 1 in the order they happened; 0 for
    /// the recording run.
    pub index: usize,
    /// Where the work was interrupted; `None` for the recording run.
    pub point: Option<Point>,
    /// How: `none`, `abort`, or `cancel root (CODE)` / `cancel <path> (CODE)`.
    pub mode: String,
    /// Whether the run reached its point. A point not reached means the work does not go
    /// through the same await points each time (it depends on time or on a race): such a run
    /// checks nothing the recording run did not.
    pub reached: bool,
    /// What went wrong; empty when the run is fine.
    pub violations: Vec<String>,
    /// How long the work took, on the run's paused clock.
    #[serde(rename = "took_ms", serialize_with = "millis")]
    pub took: Duration,
}

fn millis<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u128(duration.as_millis())
}

impl RunReport {
    /// Whether it found nothing wrong.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// What a [`Sweep`](crate::Sweep) found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The sweep's name.
    pub name: String,
    /// How many await points the recording run went through.
    pub points: usize,
    /// The recording run, uninterrupted.
    pub baseline: RunReport,
    /// One run per sampled point and mode, in order.
    pub runs: Vec<RunReport>,
    /// How long the whole sweep took, on the wall clock.
    #[serde(rename = "wall_ms", serialize_with = "millis")]
    pub wall: Duration,
}

impl Report {
    /// The runs that found something wrong, the recording run first if it did.
    pub fn failures(&self) -> impl Iterator<Item = &RunReport> {
        std::iter::once(&self.baseline)
            .chain(&self.runs)
            .filter(|run| !run.is_ok())
    }

    /// Whether no run found anything wrong.
    pub fn is_ok(&self) -> bool {
        self.failures().next().is_none()
    }

    /// Panics with the summary (the [`Display`](fmt::Display)) unless every run is fine.
    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(self.is_ok(), "{self}");
    }

    /// The report as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    /// Writes the report as JSON to `path`.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_json())
    }

    /// The sweep's name as a file name: letters, digits, `-` and `_`.
    pub(crate) fn file_name(&self) -> String {
        self.name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

impl fmt::Display for Report {
    /// One line for the sweep, then one per failing run with what it found, then the points
    /// not reached.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failures: Vec<_> = self.failures().collect();
        writeln!(
            f,
            "sweep '{}': {} await points, {} runs, {} failed, in {:?}",
            self.name,
            self.points,
            self.runs.len() + 1,
            failures.len(),
            self.wall
        )?;
        for run in failures {
            match &run.point {
                None => writeln!(f, "- uninterrupted run:")?,
                Some(point) => writeln!(f, "- point {} ({}), {}:", run.index, point, run.mode)?,
            }
            for violation in &run.violations {
                writeln!(f, "    {violation}")?;
            }
        }
        let unreached = self.runs.iter().filter(|run| !run.reached).count();
        if unreached > 0 {
            writeln!(
                f,
                "{unreached} run(s) did not reach their point: the work's await points vary \
                 from run to run there"
            )?;
        }
        Ok(())
    }
}
