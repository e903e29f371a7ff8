//! Baseline: ulogd2 (Debian `ulogd2`, `ulogd2-json`, `ulogd2-sqlite3`) reading the same
//! NFLOG group in the same kind of netns pair, with the same 8 MiB socket buffer.

use crate::e2e::{Row, cpu_seconds, setup};
use crate::nflog_support::{blast_udp, counters};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PLUGINS: &str = "/usr/lib/x86_64-linux-gnu/ulogd";

/// Runs ulogd with `output` = "JSON" or "SQLITE3"; `None` (with a note) if not installed.
pub fn run(n: u64, output: &str) -> Option<Row> {
    let plugin = format!("{PLUGINS}/ulogd_output_{output}.so");
    if !std::path::Path::new(&plugin).exists() || which("ulogd").is_none() {
        println!("(ulogd2 {output} baseline skipped: {plugin} or ulogd not installed)");
        return None;
    }
    let dir = tempfile::tempdir().ok()?;
    let out_file = dir.path().join(if output == "JSON" {
        "ulogd.json"
    } else {
        "ulogd.db"
    });
    let conf = dir.path().join("ulogd.conf");
    let stack_out = if output == "JSON" {
        "json1:JSON"
    } else {
        "sqlite1:SQLITE3"
    };
    let mut text = format!(
        "[global]\nlogfile=\"{log}\"\nloglevel=3\n\
         plugin=\"{PLUGINS}/ulogd_inppkt_NFLOG.so\"\n\
         plugin=\"{PLUGINS}/ulogd_raw2packet_BASE.so\"\n\
         plugin=\"{PLUGINS}/ulogd_filter_IFINDEX.so\"\n\
         plugin=\"{PLUGINS}/ulogd_filter_IP2STR.so\"\n\
         plugin=\"{plugin}\"\n\
         stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,{stack_out}\n\n\
         [log1]\ngroup=7\nnetlink_socket_buffer_size=8388608\n\
         netlink_socket_buffer_maxsize=8388608\n\n",
        log = dir.path().join("ulogd.log").display(),
    );
    if output == "JSON" {
        text += &format!("[json1]\nsync=0\nfile=\"{}\"\n", out_file.display());
    } else {
        let schema = "CREATE TABLE ulog_pkt (oob_prefix TEXT, oob_time_sec INT, \
                      ip_saddr_str TEXT, ip_daddr_str TEXT, ip_protocol INT, udp_dport INT);";
        let ok = Command::new("sqlite3")
            .arg(&out_file)
            .arg(schema)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("(ulogd2 SQLITE3 baseline skipped: cannot create the table with sqlite3)");
            return None;
        }
        text += &format!(
            "[sqlite1]\ntable=\"ulog_pkt\"\ndb=\"{}\"\n",
            out_file.display()
        );
    }
    std::fs::write(&conf, text).ok()?;

    let (topo, dst) = setup();
    let mut child = Command::new("ip")
        .args(["netns", "exec", topo.ns("host").name(), "ulogd", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stat = format!("/proc/{}/stat", child.id());
    std::thread::sleep(Duration::from_millis(700)); // let it bind the group
    let cpu0 = cpu_seconds(&stat).unwrap_or(0.0);
    let before = counters(topo.ns("host")).ok()?;
    let start = Instant::now();
    let took = blast_udp(topo.ns("peer"), dst, n, 32).ok()?;
    // Rows until the count stops growing for 2 s.
    let (mut rows, mut last_change, mut last) = (0, Instant::now(), Instant::now());
    while last_change.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
        let now_rows = count_rows(output, &out_file);
        if now_rows != rows {
            rows = now_rows;
            last_change = Instant::now();
            last = last_change;
        }
    }
    let cpu = cpu_seconds(&stat).unwrap_or(0.0) - cpu0;
    let _ = child.kill();
    let _ = child.wait();
    let after = counters(topo.ns("host")).ok()?;
    let logged = after[0] - before[0];
    let notice = std::fs::read_to_string(dir.path().join("ulogd.log"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("losing"));
    Some(Row {
        name: format!(
            "ulogd2 2.0.8 → {output}{}",
            if notice {
                " (logged \"We are losing events\")"
            } else {
                ""
            }
        ),
        sent: n,
        send_rate: n as f64 / took.as_secs_f64(),
        logged,
        received: rows,
        counted_lost: None,
        overruns: None,
        rate: rows as f64 / last.saturating_duration_since(start).as_secs_f64(),
        per_cpu_s: (cpu > 0.0).then(|| rows as f64 / cpu),
        per_recv: None,
    })
}

fn count_rows(output: &str, file: &std::path::Path) -> u64 {
    if output == "JSON" {
        std::fs::read(file).map_or(0, |b| b.iter().filter(|c| **c == b'\n').count() as u64)
    } else {
        Command::new("sqlite3")
            .arg(file)
            .arg("SELECT count(*) FROM ulog_pkt;")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.exists())
}
