//! Who owns a Docker object habitus created, and whether that owner is
//! provably gone. A build killed with SIGKILL, or one whose daemon went
//! away, cannot clean up after itself; the next build (or `habitus prune`)
//! reads these labels and removes what a dead build left behind.
//!
//! An owner is a process on a host: the host name, the kernel's boot id
//! and PID namespace (so that a reboot or another container with the same
//! host name is not mistaken for this one), the process id and its start
//! time (so that a reused pid is not mistaken for the build). Only an owner
//! on this very host, boot and PID namespace can be proved dead; anything
//! else is removed only once it is older than `--stale-after`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Host name of the process that created the object.
pub const LABEL_HOST: &str = "habitus.owner.host";
/// Its process id.
pub const LABEL_PID: &str = "habitus.owner.pid";
/// `<boot id>/<pid namespace>/<start time in clock ticks>`.
pub const LABEL_START: &str = "habitus.owner.start";
/// When the object was created, in seconds since the Unix epoch.
pub const LABEL_CREATED: &str = "habitus.created";

/// The process that creates objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub host: String,
    pub boot_id: String,
    pub pid_ns: String,
    pub pid: u32,
    pub start: u64,
}

impl Owner {
    /// This process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner {
            host: read_trimmed("/proc/sys/kernel/hostname"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            pid_ns: pid_namespace("self"),
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// The labels that name this owner, created `now`.
    pub fn labels(&self, now: SystemTime) -> BTreeMap<String, String> {
        let created = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        BTreeMap::from([
            (LABEL_HOST.to_string(), self.host.clone()),
            (LABEL_PID.to_string(), self.pid.to_string()),
            (
                LABEL_START.to_string(),
                format!("{}/{}/{}", self.boot_id, self.pid_ns, self.start),
            ),
            (LABEL_CREATED.to_string(), created.to_string()),
        ])
    }

    /// Whether `labels` name a process of this host, boot and PID
    /// namespace: only then can its liveness be checked here.
    fn same_machine(&self, labels: &BTreeMap<String, String>) -> Option<(u32, u64)> {
        let host = labels.get(LABEL_HOST)?;
        let pid = labels.get(LABEL_PID)?.parse().ok()?;
        let mut start = labels.get(LABEL_START)?.splitn(3, '/');
        let (boot, ns, ticks) = (start.next()?, start.next()?, start.next()?);
        let known = !self.host.is_empty() && !self.boot_id.is_empty() && !self.pid_ns.is_empty();
        (known && *host == self.host && boot == self.boot_id && ns == self.pid_ns)
            .then_some((pid, ticks.parse().ok()?))
    }
}

/// What to do with an object a habitus build created. The text says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its owner still runs, or may: keep it.
    Keep(String),
    /// Its owner, a process of this host, is gone: remove it.
    Dead(String),
    /// Made elsewhere (or by an older habitus) longer ago than
    /// `--stale-after`: remove it unless something still uses it.
    Stale(String),
}

/// Judges an object labelled `labels` (created at `created` as the daemon
/// says, if known, used when it has no creation label) from the point of view of `me` at `now`.
pub fn judge(
    labels: &BTreeMap<String, String>,
    created: Option<SystemTime>,
    me: &Owner,
    now: SystemTime,
    stale_after: Duration,
) -> Verdict {
    if let Some((pid, start)) = me.same_machine(labels) {
        return match start_time(pid) {
            Some(now_start) if now_start == start => {
                Verdict::Keep(format!("its build still runs (pid {pid})"))
            }
            Some(_) => Verdict::Dead(format!("its build (pid {pid}) is gone; the pid is reused")),
            None => Verdict::Dead(format!("its build (pid {pid}) is gone")),
        };
    }
    // The time habitus wrote, else the daemon's.
    let created = labels
        .get(LABEL_CREATED)
        .and_then(|secs| secs.parse().ok())
        .map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
        .or(created);
    let where_ = match labels.get(LABEL_HOST) {
        Some(host) => format!("made on host `{host}`"),
        None => "made by a build without owner labels".to_string(),
    };
    match created.map(|c| now.duration_since(c).unwrap_or_default()) {
        Some(age) if age >= stale_after => Verdict::Stale(format!(
            "{where_} {} ago (older than --stale-after {})",
            human(age),
            human(stale_after)
        )),
        Some(age) => Verdict::Keep(format!("{where_} {} ago", human(age))),
        None => Verdict::Keep(format!("{where_}, age unknown")),
    }
}

/// `3h 5m`, `42s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, _) => format!("{m}m"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

/// Parses `--stale-after`: `90s`, `30m`, `24h`, `7d`, or seconds.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{value}` is not a duration (use 90s, 30m, 24h or 7d)"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{value}`: unknown unit `{unit}` (use s, m, h or d)"
            ))
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(scale)))
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `pid:[4026531836]` → `4026531836`.
fn pid_namespace(pid: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .and_then(|link| {
            let text = link.to_string_lossy().into_owned();
            Some(text.strip_prefix("pid:[")?.strip_suffix(']')?.to_string())
        })
        .unwrap_or_default()
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock
/// ticks after boot. `None` when no such process exists.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Owner {
        Owner::current()
    }

    #[test]
    fn this_process_is_alive_and_named_completely() {
        let me = me();
        assert!(!me.host.is_empty() && !me.boot_id.is_empty() && !me.pid_ns.is_empty());
        assert!(me.start > 0);
        let labels = me.labels(SystemTime::now());
        let now = SystemTime::now();
        assert_eq!(
            judge(&labels, None, &me, now, Duration::ZERO),
            Verdict::Keep(format!("its build still runs (pid {})", me.pid))
        );
    }

    #[test]
    fn a_dead_process_of_this_host_is_removed_at_once() {
        let me = me();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid);
        child.wait().unwrap();
        let mut owner = me.clone();
        owner.pid = pid;
        owner.start = start.unwrap_or(1);
        let labels = owner.labels(SystemTime::now());
        assert_eq!(
            judge(
                &labels,
                None,
                &me,
                SystemTime::now(),
                Duration::from_secs(86_400)
            ),
            Verdict::Dead(format!("its build (pid {pid}) is gone"))
        );
        // A live pid with another start time is a reused pid.
        let mut reused = me.clone();
        reused.start += 1;
        let labels = reused.labels(SystemTime::now());
        assert!(matches!(
            judge(&labels, None, &me, SystemTime::now(), Duration::ZERO),
            Verdict::Dead(why) if why.ends_with("the pid is reused")
        ));
    }

    #[test]
    fn another_host_boot_or_namespace_waits_for_stale_after() {
        let me = me();
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        for other in [
            Owner {
                host: "ci-runner-7".into(),
                ..me.clone()
            },
            Owner {
                boot_id: "another-boot".into(),
                ..me.clone()
            },
            Owner {
                pid_ns: "1".into(),
                pid: 999_999,
                ..me.clone()
            },
        ] {
            let young = other.labels(now - Duration::from_secs(3600));
            assert!(
                matches!(judge(&young, None, &me, now, day), Verdict::Keep(why) if why.ends_with("1h ago")),
                "{other:?}"
            );
            let old = other.labels(now - 2 * day);
            assert!(
                matches!(judge(&old, None, &me, now, day), Verdict::Stale(why) if why.ends_with("48h ago (older than --stale-after 24h)")),
                "{other:?}"
            );
        }
        // No owner labels (an older habitus): the daemon's creation time.
        let bare = BTreeMap::new();
        assert_eq!(
            judge(&bare, Some(now - 2 * day), &me, now, day),
            Verdict::Stale(
                "made by a build without owner labels 48h ago (older than --stale-after 24h)"
                    .into()
            )
        );
        assert!(matches!(
            judge(&bare, None, &me, now, day),
            Verdict::Keep(_)
        ));
    }

    #[test]
    fn durations_parse_like_go_flags_users_expect() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert!(parse_duration("1w")
            .unwrap_err()
            .contains("unknown unit `w`"));
        assert!(parse_duration("h").is_err());
    }
}
