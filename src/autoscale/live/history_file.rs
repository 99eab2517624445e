//! The per-minute signal history on disk: control path, one file per
//! autoscaled pool under `runtime.state_dir`, so the forecast survives
//! restarts.
//!
//! Format: CSV,
//! `minute,arrivals_per_second,peak_concurrency,peak_queued,peak_queue_wait_ms`,
//! one line per minute (Unix minutes), appended as each minute closes. At
//! start the file is read (lines that do not parse are skipped and
//! counted, so a torn last line after a crash loses one minute, not the
//! history) and rewritten with only the minutes still kept, through a
//! temporary file and a rename. [`Recorder`] is the live loop's handle:
//! it appends each minute the step closes, off the runtime's worker
//! threads.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::autoscale::forecast::{Minute, Minutes};

const HEADER: &str = "minute,arrivals_per_second,peak_concurrency,peak_queued,peak_queue_wait_ms";

/// `<dir>/<pool>.minutes.csv`, with anything but `[A-Za-z0-9_-]` in the
/// pool name replaced so a name cannot leave the directory.
pub(crate) fn path_for(dir: &Path, pool: &str) -> PathBuf {
    let safe: String = pool
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}.minutes.csv"))
}

fn parse(line: &str) -> Option<Minute> {
    let mut f = line.split(',');
    let minute = f.next()?.trim().parse().ok()?;
    let mut num = || {
        f.next()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    let m = Minute {
        minute,
        rate: num()?,
        peak_concurrency: num()?,
        peak_queued: num()?,
        peak_queue_wait: num()? / 1000.0,
    };
    f.next().is_none().then_some(m)
}

fn line(m: &Minute) -> String {
    format!(
        "{},{:.3},{:.1},{:.1},{:.1}\n",
        m.minute,
        m.rate,
        m.peak_concurrency,
        m.peak_queued,
        m.peak_queue_wait * 1000.0
    )
}

/// Reads the history (a missing file is an empty history), adds the
/// minutes of `recorded` the file lacks (kept in memory before the file was
/// opened), and rewrites the file with what is kept. Returns the minutes
/// and the count of skipped lines.
pub(crate) fn load(path: &Path, recorded: &Minutes) -> io::Result<(Minutes, usize)> {
    let mut minutes = Minutes::default();
    let mut skipped = 0;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            for l in text.lines().filter(|l| !l.trim().is_empty() && *l != HEADER) {
                match parse(l) {
                    Some(m) => minutes.insert(m),
                    None => skipped += 1,
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for m in recorded.iter() {
        if minutes.rate(m.minute).is_none() {
            minutes.insert(*m);
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("csv.tmp");
    {
        let mut f = io::BufWriter::new(std::fs::File::create(&tmp)?);
        writeln!(f, "{HEADER}")?;
        for m in minutes.iter() {
            f.write_all(line(m).as_bytes())?;
        }
        f.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok((minutes, skipped))
}

/// Appends one closed minute.
pub(crate) fn append(path: &Path, m: &Minute) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path)?;
    f.write_all(line(m).as_bytes())
}

/// The pool's per-minute history file, when a state directory is set.
#[derive(Default)]
pub(crate) struct Recorder {
    /// The state directory last opened (`Some(None)`: none configured;
    /// `None`: not opened yet).
    dir: Option<Option<PathBuf>>,
    pub(crate) file: Option<PathBuf>,
}

impl Recorder {
    /// (Re)opens the history when the state directory is set or changed:
    /// merges `recorded` (kept in memory so far) with the file and returns
    /// the merged minutes for the step to forecast from.
    pub(crate) async fn open(&mut self, pool: &str, dir: Option<&PathBuf>, recorded: &Minutes) -> Option<Minutes> {
        if self.dir.as_ref().is_some_and(|d| d.as_ref() == dir) {
            return None;
        }
        self.dir = Some(dir.cloned());
        self.file = None;
        let path = path_for(dir?, pool);
        let load = {
            let (path, recorded) = (path.clone(), recorded.clone());
            tokio::task::spawn_blocking(move || load(&path, &recorded)).await
        };
        match load {
            Ok(Ok((minutes, skipped))) => {
                if skipped > 0 {
                    tracing::warn!(pool = %pool, path = %path.display(), skipped, "history lines that did not parse were dropped");
                }
                tracing::info!(pool = %pool, path = %path.display(), minutes = minutes.len(), "autoscale history loaded");
                self.file = Some(path);
                Some(minutes)
            }
            Ok(Err(e)) => {
                tracing::warn!(pool = %pool, path = %path.display(), error = %e, "cannot keep the autoscale history; the forecast lives in memory only");
                None
            }
            Err(e) => {
                tracing::warn!(pool = %pool, error = %e, "history loader failed");
                None
            }
        }
    }

    /// Appends a closed minute, if the history is on disk.
    pub(crate) async fn append(&self, pool: &str, closed: Minute) {
        if let Some(path) = self.file.clone() {
            let written = tokio::task::spawn_blocking(move || append(&path, &closed)).await;
            if let Ok(Err(e)) = written {
                tracing::warn!(pool = %pool, error = %e, "cannot append to the autoscale history");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(minute: u64, rate: f64) -> Minute {
        Minute {
            minute,
            rate,
            peak_concurrency: rate / 10.0,
            peak_queued: 0.0,
            peak_queue_wait: 0.012,
        }
    }

    #[test]
    fn minutes_survive_a_restart_and_a_torn_line_costs_one_minute() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("state"), "shop");
        let (empty, skipped) = load(&path, &Minutes::default()).unwrap();
        assert_eq!(empty.len(), 0);
        assert_eq!(skipped, 0);
        append(&path, &minute(29_000_000, 120.5)).unwrap();
        append(&path, &minute(29_000_001, 1500.0)).unwrap();
        // A crash in the middle of a write.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"29000002,17")
            .unwrap();
        let (back, skipped) = load(&path, &Minutes::default()).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(back.rate(29_000_000), Some(120.5));
        assert_eq!(back.rate(29_000_001), Some(1500.0));
        assert_eq!(back.iter().next().unwrap().peak_queue_wait, 0.012);
        // The rewrite dropped the torn line; appending goes on cleanly.
        append(&path, &minute(29_000_002, 3.0)).unwrap();
        let (again, skipped) = load(&path, &Minutes::default()).unwrap();
        assert_eq!((again.len(), skipped), (3, 0));
    }

    #[test]
    fn a_pool_name_cannot_leave_the_directory() {
        let p = path_for(Path::new("/var/lib/tidegate"), "../etc/passwd");
        assert_eq!(p, Path::new("/var/lib/tidegate/___etc_passwd.minutes.csv"));
    }
}
