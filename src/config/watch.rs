//! Watching the config file, and the certificate and key files it names,
//! for changes: control path.
//!
//! Polls the file's metadata (through symlinks) rather than subscribing to
//! inotify: a poll sees the same thing whether an editor rewrote the file in
//! place, replaced it by rename, or an orchestrator swapped a symlink (as
//! Kubernetes does for mounted ConfigMaps), and there is no watch to re-arm.
//! A change fires once the file has looked the same (size, mtime, inode)
//! for a quiet period of [`QUIET_PERIOD`], so a file caught half-written is
//! not loaded, even one whose first half happens to be a valid config and
//! whose writer pauses (a program writing it in two steps). Editors and
//! tools should still write a new file and rename it into place: that is
//! the only way to be sure. A reload asked for by SIGHUP or `POST /reload`
//! does not wait. The decision is the pure [`Debounce::observe`].

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

/// How often the file is looked at.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How long a changed file must hold still before it is loaded.
pub const QUIET_PERIOD: Duration = Duration::from_secs(2);

/// [`QUIET_PERIOD`] in polls.
const QUIET_POLLS: u32 = (QUIET_PERIOD.as_millis() / POLL_INTERVAL.as_millis()) as u32;

/// What identifies one version of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    target: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// The file's identity now (through symlinks); `None` when it is missing.
pub fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&target).ok()?;
    Some(Fingerprint {
        target,
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// The identities of a set of files, in order (`None`: missing).
pub type Fingerprints = Vec<Option<Fingerprint>>;

/// Decides when a series of observations means "reload now".
#[derive(Debug)]
pub struct Debounce<T = Fingerprint> {
    last_seen: Option<T>,
    applied: Option<T>,
    /// Polls the last seen version has held still for.
    held: u32,
    /// Polls it must hold still for.
    quiet: u32,
}

impl<T: Clone + PartialEq> Debounce<T> {
    /// `current` is the version already loaded.
    /// `current` is the version already loaded; a change must hold still
    /// for `quiet` polls (at least one).
    pub fn new(current: Option<T>, quiet: u32) -> Debounce<T> {
        Debounce {
            last_seen: current.clone(),
            applied: current,
            held: 0,
            quiet: quiet.max(1),
        }
    }

    /// One observation (`None`: the file is missing right now, e.g. between
    /// an editor's delete and rename). Returns `true` when the file has
    /// changed from the applied version and held still for the quiet
    /// period.
    pub fn observe(&mut self, now: Option<T>) -> bool {
        if now.is_some() && now == self.last_seen {
            self.held = self.held.saturating_add(1);
        } else {
            self.held = 0;
        }
        self.last_seen = now.clone();
        if self.held >= self.quiet && now != self.applied {
            self.applied = now;
            return true;
        }
        false
    }
}

/// The config file's identity (`None`: missing), then the other files'.
fn observe_all(path: &Path, others: &[PathBuf]) -> Option<Fingerprints> {
    let config = fingerprint(path)?;
    let mut all = vec![Some(config)];
    all.extend(others.iter().map(|p| fingerprint(p)));
    Some(all)
}

/// Polls `path`, and the files `others()` names (the running config's
/// certificates and keys, asked again at each poll), until `changes` is
/// closed, sending `()` for each change from `loaded`, the version the
/// running config was read from. A renewed certificate is thus loaded the
/// way an edited config is: validated first, and refused if broken.
pub async fn watch<F>(path: PathBuf, loaded: Option<Fingerprint>, others: F, changes: mpsc::Sender<()>)
where
    F: Fn() -> Vec<PathBuf> + Send + Sync + 'static,
{
    let mut at_start = vec![loaded];
    at_start.extend(others().iter().map(|p| fingerprint(p)));
    let mut debounce = Debounce::new(Some(at_start), QUIET_POLLS);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = {
            let (path, files) = (path.clone(), others());
            tokio::task::spawn_blocking(move || observe_all(&path, &files))
                .await
                .ok()
                .flatten()
        };
        if debounce.observe(now) && changes.send(()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(len: u64, inode: u64) -> Option<Fingerprint> {
        Some(Fingerprint {
            target: "/c.toml".into(),
            modified: None,
            len,
            inode,
        })
    }

    #[test]
    fn fires_once_after_the_change_holds_still() {
        let mut d = Debounce::new(fp(10, 1), 1);
        assert!(!d.observe(fp(10, 1)), "unchanged");
        assert!(!d.observe(fp(12, 1)), "just changed: wait a poll");
        assert!(d.observe(fp(12, 1)), "held still: reload");
        assert!(!d.observe(fp(12, 1)), "once");
    }

    #[test]
    fn an_editor_replacing_the_file_by_rename_is_one_reload() {
        let mut d = Debounce::new(fp(10, 1), 1);
        assert!(!d.observe(None), "deleted for a moment");
        assert!(!d.observe(fp(11, 2)), "renamed into place");
        assert!(d.observe(fp(11, 2)));
        assert!(!d.observe(fp(11, 2)));
    }

    #[test]
    fn a_file_still_being_written_waits() {
        let mut d = Debounce::new(fp(10, 1), 1);
        assert!(!d.observe(fp(20, 1)));
        assert!(!d.observe(fp(30, 1)));
        assert!(!d.observe(fp(40, 1)));
        assert!(d.observe(fp(40, 1)));
    }

    #[test]
    fn a_writer_that_pauses_within_the_quiet_period_is_not_loaded_half_way() {
        // Half written, a pause of three polls, then the rest.
        let mut d = Debounce::new(fp(10, 1), QUIET_POLLS);
        let mut fired = Vec::new();
        let series = [20, 20, 20, 20, 40].into_iter().chain(std::iter::repeat_n(40, 10));
        for (i, len) in series.enumerate() {
            if d.observe(fp(len, 1)) {
                fired.push((i, len));
            }
        }
        assert_eq!(fired, vec![(4 + QUIET_POLLS as usize, 40)], "only the whole file, once");
    }
}
