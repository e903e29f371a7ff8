//! `portcullis-bench`: helpers shared by the benchmark binaries.
//!
//! - [`Stats`]: median / p90 / min of a sample of durations.
//! - [`Table`]: a markdown table.
//! - [`write_section`]: replaces the text between `<!-- BEGIN name -->` and
//!   `<!-- END name -->` in a markdown file (docs/BENCHMARKS.md), so each benchmark
//!   rewrites only its own tables and the hand-written text around them stays.
//! - [`ProcStats`]: CPU time and RSS of this process (or a child) from `/proc`.
//! - [`sim`]: simulated agents; [`fleet`]: PKI, listener, inventory and the simulated
//!   agents' child process for the benchmarks that run a controller against them;
//!   [`storm`]: reconnect backoff, storm clock and idle sockets (reconnect-bench);
//!   [`serve`]: the real `portcullis serve` as a child process.
//!
//! Benchmarks only print and write numbers; nothing here asserts a time.

pub mod fleet;
pub mod raw;
pub mod serve;
pub mod sim;
pub mod storm;

use anyhow::{Context as _, Result, bail};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// A sample of durations.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    samples: Vec<Duration>,
}

impl Stats {
    pub fn push(&mut self, d: Duration) {
        self.samples.push(d);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut s = self.samples.clone();
        s.sort();
        s
    }

    /// The `q` quantile (nearest rank), zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        let s = self.sorted();
        if s.is_empty() {
            return Duration::ZERO;
        }
        // Nearest rank: ceil(q * n), 1-based.
        let n = s.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        s[rank - 1]
    }

    pub fn median(&self) -> Duration {
        let s = self.sorted();
        match s.len() {
            0 => Duration::ZERO,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] + s[n / 2]) / 2,
        }
    }

    pub fn p90(&self) -> Duration {
        self.quantile(0.9)
    }

    pub fn min(&self) -> Duration {
        self.sorted().first().copied().unwrap_or_default()
    }
}

/// Milliseconds with one decimal (or two below 10 ms).
pub fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// Seconds with three decimals.
pub fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// `a / b` as `1.23×`, or `-` when `b` is zero.
pub fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        "-".to_owned()
    } else {
        format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64())
    }
}

/// A markdown table.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let line = |s: &mut String, cells: &[String]| {
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        };
        line(&mut s, &self.header);
        let sep: Vec<String> = self.header.iter().map(|_| "---".to_owned()).collect();
        line(&mut s, &sep);
        for r in &self.rows {
            line(&mut s, r);
        }
        s
    }
}

/// Replaces the body of the `name` section in the markdown file at `path` (between
/// `<!-- BEGIN name -->` and `<!-- END name -->`), or appends the section when absent.
pub fn write_section(path: &Path, name: &str, body: &str) -> Result<()> {
    let begin = format!("<!-- BEGIN {name} -->");
    let end = format!("<!-- END {name} -->");
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let section = format!("{begin}\n{}\n{end}", body.trim_end());
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{section}{}", &text[..b], &text[e + end.len()..])
        }
        (None, None) => {
            let sep = if text.is_empty() || text.ends_with("\n\n") {
                ""
            } else if text.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{text}{sep}{section}\n")
        }
        _ => bail!("{}: malformed markers for section {name}", path.display()),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote section {name} of {}", path.display());
    Ok(())
}

/// CPU time (user + system) and resident memory of a process, from `/proc/<pid>/`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    pub cpu: Duration,
    pub rss_bytes: u64,
}

impl ProcStats {
    /// This process.
    pub fn current() -> Result<Self> {
        Self::of("self")
    }

    /// `pid` is a number or `self`.
    pub fn of(pid: &str) -> Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the `(comm)`; utime and stime are the 14th and 15th fields overall.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("malformed /proc/pid/stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| -> Result<u64> {
            fields
                .get(i)
                .context("short /proc/pid/stat")?
                .parse::<u64>()
                .context("parse ticks")
        };
        // `after` starts at field 3 (state): utime is field 14 -> index 11.
        let total = ticks(11)? + ticks(12)?;
        let hz = clock_ticks();
        let cpu = Duration::from_secs_f64(total as f64 / hz as f64);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(Self {
            cpu,
            rss_bytes: rss_kb * 1024,
        })
    }
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(100)
}

/// MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// One line describing the machine: CPU model, cores, kernel, nft version, load average
/// (other work on the machine inflates every number; the ratios are measured side by side).
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let nft = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cpu}, {cores} vCPU, kernel {kernel}, {nft}; load average at the end: {load}")
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut s = Stats::default();
        for i in 1..=10 {
            s.push(Duration::from_millis(i));
        }
        assert_eq!(s.median(), Duration::from_micros(5500));
        assert_eq!(s.p90(), Duration::from_millis(9));
        assert_eq!(s.min(), Duration::from_millis(1));
    }

    #[test]
    fn sections_are_replaced_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("b.md");
        std::fs::write(&p, "# T\n\nintro\n").expect("write");
        write_section(&p, "a", "one").expect("append");
        write_section(&p, "b", "two").expect("append");
        write_section(&p, "a", "uno").expect("replace");
        let text = std::fs::read_to_string(&p).expect("read");
        assert_eq!(
            text,
            "# T\n\nintro\n\n<!-- BEGIN a -->\nuno\n<!-- END a -->\n\n<!-- BEGIN b -->\ntwo\n<!-- END b -->\n"
        );
    }
}
