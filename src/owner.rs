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
//!
//! A pid missing from `/proc` proves nothing when `/proc` hides other
//! users' processes (mounted with `hidepid`): a live build of another user
//! looks exactly like a dead one. Then, and whenever `/proc` cannot be
//! read, the verdict is "keep: cannot tell".

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Host name of the process that created the object.
pub const LABEL_HOST: &str = "habitus.owner.host";
/// Its process id.
pub const LABEL_PID: &str = "habitus.owner.pid";
/// `<boot id>/<pid namespace>/<start time in clock ticks>`.
pub const LABEL_START: &str = "habitus.owner.start";
/// When the object was created, in seconds since the Unix epoch.
pub const LABEL_CREATED: &str = "habitus.created";
/// The effective user and group ids of the process, `<uid>:<gid>`.
pub const LABEL_OWNER_USER: &str = "habitus.owner.user";

/// The process that creates objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub host: String,
    pub boot_id: String,
    pub pid_ns: String,
    pub pid: u32,
    pub start: u64,
    /// Its effective user and group ids, `<uid>:<gid>`, if `/proc` says.
    pub user: Option<String>,
}

impl Owner {
    /// This process.
    pub fn current() -> Owner {
        let pid = std::process::id();
        let proc = Proc::host();
        Owner {
            host: read_trimmed("/proc/sys/kernel/hostname"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            pid_ns: pid_namespace("self"),
            pid,
            start: match proc.liveness(pid, None) {
                Liveness::Runs(start) => start,
                _ => 0,
            },
            user: proc.user(),
        }
    }

    /// The labels that name this owner, created `now`.
    pub fn labels(&self, now: SystemTime) -> BTreeMap<String, String> {
        let created = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let user = self
            .user
            .clone()
            .map(|user| (LABEL_OWNER_USER.to_string(), user));
        let mut labels = BTreeMap::from([
            (LABEL_HOST.to_string(), self.host.clone()),
            (LABEL_PID.to_string(), self.pid.to_string()),
            (
                LABEL_START.to_string(),
                format!("{}/{}/{}", self.boot_id, self.pid_ns, self.start),
            ),
            (LABEL_CREATED.to_string(), created.to_string()),
        ]);
        labels.extend(user);
        labels
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
/// says, if known, used when it has no creation label) from the point of
/// view of `me` at `now`, reading processes from the host's `/proc`.
pub fn judge(
    labels: &BTreeMap<String, String>,
    created: Option<SystemTime>,
    me: &Owner,
    now: SystemTime,
    stale_after: Duration,
) -> Verdict {
    judge_with(labels, created, me, now, stale_after, &Proc::host())
}

/// [`judge`], reading processes from `proc`.
pub fn judge_with(
    labels: &BTreeMap<String, String>,
    created: Option<SystemTime>,
    me: &Owner,
    now: SystemTime,
    stale_after: Duration,
    proc: &Proc,
) -> Verdict {
    if let Some((pid, start)) = me.same_machine(labels) {
        return match proc.liveness(pid, labels.get(LABEL_OWNER_USER).map(String::as_str)) {
            Liveness::Runs(now_start) if now_start == start => {
                Verdict::Keep(format!("its build still runs (pid {pid})"))
            }
            Liveness::Runs(_) => {
                Verdict::Dead(format!("its build (pid {pid}) is gone; the pid is reused"))
            }
            Liveness::Gone => Verdict::Dead(format!("its build (pid {pid}) is gone")),
            Liveness::CannotTell(why) => Verdict::Keep(format!(
                "cannot tell whether its build (pid {pid}) still runs: {why}"
            )),
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

/// Field 22 of a `/proc/<pid>/stat`: when the process started, in clock
/// ticks after boot.
fn start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// What `/proc` says of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// It runs, started at this many clock ticks after boot.
    Runs(u64),
    /// No such process exists.
    Gone,
    /// `/proc` cannot tell (the text says why): it may run.
    CannotTell(String),
}

/// Where process facts are read: the host's `/proc`, or (in tests) a
/// directory laid out like it.
#[derive(Debug, Clone)]
pub struct Proc {
    root: PathBuf,
}

/// `CAP_SYS_PTRACE`: its holder sees every process whatever `hidepid` says.
const CAP_SYS_PTRACE: u32 = 19;

impl Proc {
    /// The host's `/proc`.
    pub fn host() -> Proc {
        Proc::at("/proc")
    }

    /// A directory laid out like `/proc` (`<pid>/stat`, `self/status`,
    /// `self/mountinfo`, `1/`).
    pub fn at(root: impl Into<PathBuf>) -> Proc {
        Proc { root: root.into() }
    }

    /// Whether process `pid` (which ran as `owner`, `<uid>:<gid>`, if
    /// known) runs. A missing pid is [`Liveness::Gone`] only when this
    /// process could see it: `/proc` hides nothing from us, or the owner
    /// ran with our very user and group ids (`hidepid` lets a process see
    /// those whose ids all match its own).
    pub fn liveness(&self, pid: u32, owner: Option<&str>) -> Liveness {
        let path = self.root.join(pid.to_string()).join("stat");
        match std::fs::read_to_string(&path) {
            Ok(stat) => match start_time(&stat) {
                Some(start) => Liveness::Runs(start),
                None => {
                    Liveness::CannotTell(format!("`{}` does not hold a start time", path.display()))
                }
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let me = self.user();
                if owner.is_some() && owner == me.as_deref() {
                    return Liveness::Gone;
                }
                match self.hides_others() {
                    None => Liveness::Gone,
                    Some(how) => Liveness::CannotTell(format!(
                        "{how}, so another user's build is invisible to uid:gid {}; run `habitus prune` as {} or with CAP_SYS_PTRACE",
                        me.as_deref().unwrap_or("unknown"),
                        owner.map_or("the user who ran it".to_string(), |u| format!("uid:gid {u}")),
                    )),
                }
            }
            Err(e) => Liveness::CannotTell(format!("cannot read `{}`: {e}", path.display())),
        }
    }

    /// This process's effective user and group ids, `<uid>:<gid>` (of
    /// `self/status`).
    pub fn user(&self) -> Option<String> {
        let effective = |field: &str| -> Option<u32> {
            self.status_field(field)?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        Some(format!("{}:{}", effective("Uid:")?, effective("Gid:")?))
    }

    /// How `/proc` hides other users' processes from this one, if it may:
    /// the `hidepid` option of the `proc` mount at `/proc` (the last one
    /// mounted there), or pid 1, which always exists, missing. `None`
    /// when this process holds `CAP_SYS_PTRACE`, which sees through it.
    fn hides_others(&self) -> Option<String> {
        let caps = self
            .status_field("CapEff:")
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
        if caps.is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0) {
            return None;
        }
        let mountinfo = std::fs::read_to_string(self.root.join("self/mountinfo"));
        let hidepid = mountinfo.ok().and_then(|text| {
            let proc_mount = text.lines().rev().find_map(|line| {
                let (mount, fs) = line.split_once(" - ")?;
                let point = mount.split_whitespace().nth(4)?;
                let mut fs = fs.split_whitespace();
                (point == "/proc" && fs.next()? == "proc").then(|| fs.nth(1).map(str::to_string))
            })??;
            proc_mount
                .split(',')
                .find_map(|o| o.strip_prefix("hidepid="))
                .filter(|v| !matches!(*v, "0" | "off"))
                .map(|v| format!("/proc is mounted with hidepid={v}"))
        });
        hidepid.or_else(|| {
            (!self.root.join("1").exists())
                .then(|| "/proc hides other users' processes (pid 1 is not visible)".to_string())
        })
    }

    fn status_field(&self, name: &str) -> Option<String> {
        let status = std::fs::read_to_string(self.root.join("self/status")).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(name).map(str::to_string))
    }
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
        let start = match Proc::host().liveness(pid, None) {
            Liveness::Runs(start) => start,
            _ => 1,
        };
        child.wait().unwrap();
        let mut owner = me.clone();
        owner.pid = pid;
        owner.start = start;
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

    /// A directory laid out like `/proc` for a process of uid `uid` with
    /// effective capabilities `caps`, whose `/proc` mount has `options`.
    fn fake_proc(uid: u32, caps: &str, options: &str, pid1: bool) -> tempfile::TempDir {
        let gid = uid + 1;
        let dir = tempfile::tempdir().unwrap();
        let me = dir.path().join("self");
        std::fs::create_dir_all(&me).unwrap();
        std::fs::write(
            me.join("status"),
            format!("Name:\thabitus\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{gid}\t{gid}\t{gid}\t{gid}\nCapEff:\t{caps}\n"),
        )
        .unwrap();
        std::fs::write(
            me.join("mountinfo"),
            format!(
                "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n22 1 0:21 / /proc rw,relatime - proc proc {options}\n"
            ),
        )
        .unwrap();
        if pid1 {
            std::fs::create_dir(dir.path().join("1")).unwrap();
        }
        dir
    }

    fn run_as(proc: &Proc, pid: u32, start: u64) {
        let dir = proc.root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let stat = format!(
            "{pid} (habitus (x)) S 1 {pid} {pid} 0 -1 4194304 1 0 0 0 0 0 0 0 20 0 1 0 {start} 1 1"
        );
        std::fs::write(dir.join("stat"), stat).unwrap();
    }

    fn judged(proc: &Proc, owner: Option<&str>) -> Verdict {
        let me = me();
        let owner = Owner {
            pid: 4242,
            start: 777,
            user: owner.map(str::to_string),
            ..me.clone()
        };
        let now = SystemTime::now();
        judge_with(&owner.labels(now), None, &me, now, Duration::ZERO, proc)
    }

    #[test]
    fn hidepid_hiding_another_users_build_means_keep_cannot_tell() {
        let dir = fake_proc(1000, "0000000000000000", "rw,hidepid=2", false);
        let proc = Proc::at(dir.path());
        assert_eq!(proc.user().as_deref(), Some("1000:1001"));
        assert_eq!(
            judged(&proc, Some("0:0")),
            Verdict::Keep(
                "cannot tell whether its build (pid 4242) still runs: /proc is mounted with \
                 hidepid=2, so another user's build is invisible to uid:gid 1000:1001; run \
                 `habitus prune` as uid:gid 0:0 or with CAP_SYS_PTRACE"
                    .into()
            )
        );
        // Our uid with another group: hidepid hides it too.
        assert!(matches!(
            judged(&proc, Some("1000:0")),
            Verdict::Keep(why) if why.starts_with("cannot tell")
        ));
        // An owner without a uid label (an older habitus) may be anyone.
        assert!(matches!(
            judged(&proc, None),
            Verdict::Keep(why) if why.contains("as the user who ran it or with CAP_SYS_PTRACE")
        ));
        // The names newer kernels use, and a hidepid that only the missing
        // pid 1 betrays.
        for options in ["rw,hidepid=invisible", "rw,hidepid=ptraceable"] {
            let dir = fake_proc(1000, "0", options, true);
            assert!(matches!(
                judged(&Proc::at(dir.path()), Some("0:0")),
                Verdict::Keep(why) if why.contains(&options[3..])
            ));
        }
        let dir = fake_proc(1000, "0", "rw", false);
        assert!(matches!(
            judged(&Proc::at(dir.path()), Some("0:0")),
            Verdict::Keep(why) if why.contains("pid 1 is not visible")
        ));
    }

    #[test]
    fn a_missing_pid_is_gone_when_proc_could_show_it() {
        let gone = Verdict::Dead("its build (pid 4242) is gone".into());
        // Our own build (same uid and gid): hidepid never hides it.
        let dir = fake_proc(1000, "0", "rw,hidepid=2", false);
        assert_eq!(judged(&Proc::at(dir.path()), Some("1000:1001")), gone);
        // No hidepid.
        let dir = fake_proc(1000, "0", "rw,hidepid=0", true);
        assert_eq!(judged(&Proc::at(dir.path()), Some("0:0")), gone);
        // CAP_SYS_PTRACE sees through hidepid.
        let dir = fake_proc(0, "000001fffeffffff", "rw,hidepid=2", false);
        assert_eq!(judged(&Proc::at(dir.path()), Some("1000:1001")), gone);
        // A visible pid: its start time decides.
        let proc = Proc::at(dir.path());
        run_as(&proc, 4242, 777);
        assert_eq!(
            judged(&proc, Some("0:1")),
            Verdict::Keep("its build still runs (pid 4242)".into())
        );
    }

    #[test]
    fn an_unreadable_stat_means_keep_cannot_tell() {
        let dir = fake_proc(1000, "0", "rw", true);
        let proc = Proc::at(dir.path());
        // A directory where the file should be: reading it fails (as
        // hidepid=1 makes another user's files fail with EACCES).
        std::fs::create_dir_all(dir.path().join("4242/stat")).unwrap();
        assert!(matches!(
            judged(&proc, Some("0:0")),
            Verdict::Keep(why) if why.starts_with("cannot tell whether its build (pid 4242) still runs: cannot read")
        ));
        std::fs::remove_dir(dir.path().join("4242/stat")).unwrap();
        std::fs::write(dir.path().join("4242/stat"), "4242 (x").unwrap();
        assert!(matches!(
            judged(&proc, Some("0:0")),
            Verdict::Keep(why) if why.ends_with("does not hold a start time")
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
