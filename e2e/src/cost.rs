//! What a payment costs, read off the machine around a measured run: CPU time of every
//! process on the path (the launcher's, and PostgreSQL, RabbitMQ and Redis found by
//! name in `/proc`), commits and rollbacks per database (`pg_stat_database`), and the
//! events the services consumed (their `finflow_events_consumed_total`).
//!
//! Two snapshots around a run give a [`Cost`]: each figure divided by the payments
//! completed. The same CPU reading around pgbench gives the baseline the cost ratio
//! divides by, in the same run.

use std::collections::BTreeMap;
use std::fmt;

use tokio::process::Command;

use crate::launcher::Platform;

/// Clock ticks per second of `/proc/<pid>/stat` times (Linux's `USER_HZ`).
pub const USER_HZ: u64 = 100;

/// The backing servers on the path, by the command name of their processes.
const BACKING: [(&str, &str); 3] = [
    ("postgres", "postgres"),
    ("rabbitmq", "beam.smp"),
    ("redis", "redis-server"),
];

/// CPU ticks of one process from its `/proc/<pid>/stat` text: its own (user + system),
/// and those of its children it has waited for (a backend that exited during the run is
/// counted by the postmaster that reaped it).
pub fn parse_stat(stat: &str) -> Option<(String, u32, u64, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let number = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    let parent = u32::try_from(number(1)?).ok()?;
    let own = number(11)? + number(12)?;
    let reaped = number(13)? + number(14)?;
    Some((name, parent, own, reaped))
}

fn stat_of(pid: u32) -> Option<(String, u32, u64, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process: pid, command name, parent, own ticks, reaped children's ticks.
fn all_processes() -> Vec<(u32, String, u32, u64, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (name, parent, own, reaped) = stat_of(pid)?;
            Some((pid, name, parent, own, reaped))
        })
        .collect()
}

/// Ticks of the processes called `command`: each one's own, plus what the topmost of
/// them (whose parent is not one of them) reaped from children that exited.
fn backing_ticks(processes: &[(u32, String, u32, u64, u64)], command: &str) -> u64 {
    let pids: Vec<u32> = processes
        .iter()
        .filter(|p| p.1 == command)
        .map(|p| p.0)
        .collect();
    processes
        .iter()
        .filter(|p| p.1 == command)
        .map(|p| p.3 + if pids.contains(&p.2) { 0 } else { p.4 })
        .sum()
}

/// Ticks this process's waited-for children used (pgbench, once it has exited).
pub fn own_children_ticks() -> u64 {
    stat_of(std::process::id()).map_or(0, |s| s.3)
}

/// CPU ticks of the backing servers now.
pub fn backing_now() -> BTreeMap<String, u64> {
    let processes = all_processes();
    BACKING
        .iter()
        .map(|(part, command)| ((*part).to_owned(), backing_ticks(&processes, command)))
        .collect()
}

/// The figures at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// CPU ticks by part: each launcher process by name, and the backing servers.
    pub cpu: BTreeMap<String, u64>,
    /// Commits and rollbacks by database.
    pub xacts: BTreeMap<String, (u64, u64)>,
    /// Events consumed, every service together.
    pub consumed: u64,
    /// RabbitMQ deliveries to consumers (a bundle is one, carrying several events).
    pub messages: u64,
}

/// The sum of a counter's samples in a Prometheus exposition text, leaving out samples
/// whose labels contain `except` (a retried event is one delivery, however often tried).
pub fn counter_total(text: &str, name: &str, except: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && !l.contains(except)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let v = v as u64;
            v
        })
        .sum()
}

/// `datname|commits|rollbacks` lines of psql's unaligned output.
pub fn parse_xacts(text: &str) -> BTreeMap<String, (u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('|');
            let name = f.next()?.to_owned();
            let commits = f.next()?.trim().parse().ok()?;
            let rollbacks = f.next()?.trim().parse().ok()?;
            Some((name, (commits, rollbacks)))
        })
        .collect()
}

/// The platform's figures now.
pub async fn snapshot(platform: &Platform, http: &reqwest::Client) -> anyhow::Result<Snapshot> {
    let mut cpu = backing_now();
    for (name, pid) in platform.pids() {
        let ticks = stat_of(pid).map_or(0, |s| s.2);
        cpu.insert(name, ticks);
    }
    let (mut consumed, mut messages) = (0, 0);
    for service in &platform.services {
        let text = http
            .get(format!("{}/metrics", service.app_url))
            .send()
            .await?
            .text()
            .await?;
        consumed += counter_total(
            &text,
            "finflow_events_consumed_total",
            "outcome=\"retried\"",
        );
        messages += counter_total(&text, "finflow_messages_consumed_total", "outcome=");
    }
    let server = platform.backing.database_url("postgres");
    let out = Command::new("psql")
        .args([
            server.as_str(),
            "-At",
            "-c",
            &format!(
                "SELECT datname, xact_commit, xact_rollback FROM pg_stat_database \
                 WHERE datname LIKE '{}\\_%'",
                platform.options.database_prefix
            ),
        ])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = format!("{}_", platform.options.database_prefix);
    let xacts = parse_xacts(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .map(|(db, v)| (db.strip_prefix(&prefix).unwrap_or(&db).to_owned(), v))
        .collect();
    Ok(Snapshot {
        cpu,
        xacts,
        consumed,
        messages,
    })
}

/// What one payment cost between two snapshots.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    /// CPU milliseconds per payment by part, largest first.
    pub cpu_ms: Vec<(String, f64)>,
    /// Commits and rollbacks per payment by database.
    pub xacts: Vec<(String, f64, f64)>,
    /// Events consumed per payment.
    pub events: f64,
    /// RabbitMQ deliveries per payment (each carries one event or a bundle).
    pub deliveries: f64,
}

#[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
fn per(count: u64, value: u64) -> f64 {
    value as f64 / count.max(1) as f64
}

impl Cost {
    /// `after - before`, per one of `payments`.
    pub fn between(before: &Snapshot, after: &Snapshot, payments: u64) -> Self {
        #[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
        let ms = |ticks: u64| per(payments, ticks) * 1000.0 / USER_HZ as f64;
        let mut cpu_ms: Vec<(String, f64)> = after
            .cpu
            .iter()
            .map(|(part, t)| {
                let was = before.cpu.get(part).copied().unwrap_or(0);
                (part.clone(), ms(t.saturating_sub(was)))
            })
            .collect();
        cpu_ms.sort_by(|a, b| b.1.total_cmp(&a.1));
        let xacts = after
            .xacts
            .iter()
            .map(|(db, (c, r))| {
                let (c0, r0) = before.xacts.get(db).copied().unwrap_or((0, 0));
                (
                    db.clone(),
                    per(payments, c.saturating_sub(c0)),
                    per(payments, r.saturating_sub(r0)),
                )
            })
            .collect();
        Self {
            cpu_ms,
            xacts,
            events: per(payments, after.consumed.saturating_sub(before.consumed)),
            deliveries: per(payments, after.messages.saturating_sub(before.messages)),
        }
    }

    /// CPU milliseconds per payment of everything on the path.
    pub fn total_ms(&self) -> f64 {
        self.cpu_ms.iter().map(|(_, ms)| ms).sum()
    }

    /// CPU milliseconds per payment of one part (0 when absent).
    pub fn part_ms(&self, part: &str) -> f64 {
        self.cpu_ms
            .iter()
            .find(|(p, _)| p == part)
            .map_or(0.0, |(_, ms)| *ms)
    }
}

impl fmt::Display for Cost {
    #[allow(clippy::float_arithmetic)]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cost of one payment:")?;
        writeln!(f, "  CPU ms per payment, by process:")?;
        for (part, ms) in &self.cpu_ms {
            writeln!(f, "    {part:<24} {ms:>8.3}")?;
        }
        writeln!(f, "    {:<24} {:>8.3}", "total", self.total_ms())?;
        writeln!(f, "  per payment, by database:     commits  rollbacks")?;
        let (mut commits, mut rollbacks) = (0.0, 0.0);
        for (db, c, r) in &self.xacts {
            writeln!(f, "    {db:<24} {c:>10.2} {r:>10.2}")?;
            commits += c;
            rollbacks += r;
        }
        writeln!(f, "    {:<24} {commits:>10.2} {rollbacks:>10.2}", "total")?;
        write!(
            f,
            "  RabbitMQ deliveries per payment: {:.2}, carrying {:.2} events",
            self.deliveries, self.events
        )
    }
}

/// The machine's CPU time so far, from the first line of `/proc/stat`: (all, stolen)
/// ticks. On a virtual machine, time the host gave to others is "steal": while a phase
/// runs short of CPU, each unit of work costs more CPU (caches, lock hand-offs), so a
/// ratio whose two sides met different steal is not a like-for-like figure.
pub fn machine_ticks() -> Option<(u64, u64)> {
    parse_machine_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// `machine_ticks` of a `/proc/stat` text.
pub fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    // already inside user and nice.
    let all = fields.iter().take(8).sum();
    Some((all, *fields.get(7)?))
}

/// The share of the machine's time stolen by the host between two [`machine_ticks`].
#[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
pub fn steal_percent(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((all0, steal0), (all1, steal1)) = (before?, after?);
    let all = all1.checked_sub(all0).filter(|a| *a > 0)?;
    Some(steal1.saturating_sub(steal0) as f64 * 100.0 / all as f64)
}

/// CPU milliseconds per TPC-B transaction: PostgreSQL's and pgbench's ticks over the
/// transactions pgbench processed.
#[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
pub fn tpcb_ms(postgres_ticks: u64, pgbench_ticks: u64, transactions: u64) -> f64 {
    per(transactions, postgres_ticks + pgbench_ticks) * 1000.0 / USER_HZ as f64
}

/// pgbench's "number of transactions actually processed: N".
pub fn pgbench_transactions(report: &str) -> Option<u64> {
    report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed:"))
        .and_then(|rest| {
            rest.split_whitespace()
                .next()?
                .split('/')
                .next()?
                .parse()
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_name_parent_and_both_kinds_of_ticks() {
        // A command name may hold spaces and parentheses: the last `)` ends it.
        let stat = "4242 (postgres: app (x)) S 900 4242 4242 0 -1 4194560 1 0 0 0 \
                    120 30 7 3 20 0 1 0 100 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(("postgres: app (x)".to_owned(), 900, 150, 10))
        );
    }

    #[test]
    fn exited_backends_count_through_the_process_that_reaped_them() {
        let processes = vec![
            (10, "postgres".to_owned(), 1, 100, 40),
            (11, "postgres".to_owned(), 10, 5, 0),
            (12, "postgres".to_owned(), 10, 7, 1),
            (20, "redis-server".to_owned(), 1, 9, 0),
        ];
        // The postmaster's reaped ticks count, a backend's own reaped ticks do not
        // (they are the postmaster's already, or nobody's).
        assert_eq!(backing_ticks(&processes, "postgres"), 100 + 40 + 5 + 7);
        assert_eq!(backing_ticks(&processes, "redis-server"), 9);
    }

    #[test]
    fn a_counter_sums_its_labelled_samples_and_nothing_else() {
        let text = "# TYPE finflow_events_consumed_total counter\n\
                    finflow_events_consumed_total{queue=\"a\",outcome=\"applied\"} 12\n\
                    finflow_events_consumed_total{queue=\"b\",outcome=\"duplicate\"} 3\n\
                    finflow_events_consumed_total{queue=\"b\",outcome=\"retried\"} 4\n\
                    finflow_events_consumed_total_other 99\n";
        assert_eq!(
            counter_total(text, "finflow_events_consumed_total", "outcome=\"retried\""),
            15
        );
    }

    #[test]
    fn costs_are_differences_per_payment() {
        let before = Snapshot {
            cpu: [("payment".to_owned(), 100), ("postgres".to_owned(), 1000)].into(),
            xacts: [("payment".to_owned(), (10, 1))].into(),
            consumed: 5,
            messages: 5,
        };
        let after = Snapshot {
            cpu: [("payment".to_owned(), 300), ("postgres".to_owned(), 1800)].into(),
            xacts: [("payment".to_owned(), (210, 51))].into(),
            consumed: 305,
            messages: 105,
        };
        let cost = Cost::between(&before, &after, 100);
        // 800 ticks of 10 ms over 100 payments: 80 ms each.
        assert_eq!(cost.cpu_ms[0], ("postgres".to_owned(), 80.0));
        assert_eq!(cost.part_ms("payment"), 20.0);
        assert_eq!(cost.total_ms(), 100.0);
        assert_eq!(cost.xacts, vec![("payment".to_owned(), 2.0, 0.5)]);
        assert_eq!((cost.deliveries, cost.events), (1.0, 3.0));
        assert!(
            cost.to_string()
                .contains("RabbitMQ deliveries per payment: 1.00, carrying 3.00 events")
        );
    }

    #[test]
    fn pgbench_says_how_many_transactions_it_ran() {
        let report = "number of clients: 8\n\
                      number of transactions actually processed: 25420\n\
                      tps = 2542.0 (without initial connection time)\n";
        assert_eq!(pgbench_transactions(report), Some(25420));
        // 600 ticks of 10 ms over 25420 transactions.
        let ms = tpcb_ms(500, 100, 25420);
        assert!((ms - 6000.0 / 25420.0).abs() < 1e-12, "{ms}");
    }

    #[test]
    fn steal_is_the_eighth_field_of_the_cpu_line_over_all_eight() {
        let stat = "cpu  700 0 30 200 10 0 10 50 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_machine_ticks(stat), Some((1000, 50)));
        assert_eq!(parse_machine_ticks("intr 1 2\n"), None);
        let share = steal_percent(Some((1000, 50)), Some((2000, 300))).unwrap();
        assert!((share - 25.0).abs() < 1e-9, "{share}");
        assert_eq!(steal_percent(Some((1000, 50)), Some((1000, 50))), None);
    }
}
