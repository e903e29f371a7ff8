//! `portcullis-agent run`: the daemon. Enforces last-known-good at once, then keeps a
//! session with the controller (see [`crate::session`]) until SIGTERM/SIGINT. On shutdown
//! the kernel keeps the table as it is (fail-static): stopping the agent never opens or
//! closes the host.

use super::Exit;
use crate::Agent;
use crate::session::{Companions, SessionConfig, run as run_session};
use anyhow::Context as _;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Controller URL, e.g. https://10.77.0.1:7443 (its certificate must name that IP/host).
    /// Repeatable, or comma-separated (PORTCULLIS_CONTROLLER=URL,URL), at most 16; a DNS
    /// name stands for every address it resolves to (at most 16). The agent stays on one
    /// and fails over to the next when it cannot be reached
    #[arg(
        long,
        env = "PORTCULLIS_CONTROLLER",
        value_delimiter = ',',
        required = true,
        value_name = "URL"
    )]
    pub controller: Vec<String>,
    /// CA certificate (PEM) that signed the controller's certificate
    #[arg(long, env = "PORTCULLIS_CA")]
    pub ca: PathBuf,
    /// This agent's certificate (PEM), from `portcullis ca issue agent HOST`
    #[arg(long, env = "PORTCULLIS_CERT")]
    pub cert: PathBuf,
    /// This agent's private key (PEM)
    #[arg(long, env = "PORTCULLIS_KEY")]
    pub key: PathBuf,
    /// Host name to speak for (default: the one in the certificate's portcullis://agent/ URI)
    #[arg(long, env = "PORTCULLIS_HOST")]
    pub host: Option<String>,
    /// Interval of heartbeats carrying the kernel's ruleset hash
    #[arg(long, env = "PORTCULLIS_HEARTBEAT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// Shortest reconnect delay (jittered exponential backoff)
    #[arg(long, env = "PORTCULLIS_BACKOFF_MIN", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub backoff_min: Duration,
    /// Do not collect denial logs (NFLOG)
    #[arg(long, env = "PORTCULLIS_NO_DENIALS")]
    pub no_denials: bool,
    /// NFLOG group to read before a policy is applied; from then on the agent reads the
    /// applied policy's `log.group` (switching when a policy with another group is applied)
    #[arg(long, env = "PORTCULLIS_NFLOG_GROUP", default_value_t = 7)]
    pub nflog_group: u16,
    /// Denials are aggregated per (source, protocol, port) over this interval
    #[arg(long, env = "PORTCULLIS_DENIAL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub denial_interval: Duration,
    /// Size limit of the on-disk spool of unacknowledged denial batches (bytes; K/M/G
    /// suffixes). When full, the oldest batches are dropped and counted.
    #[arg(long, env = "PORTCULLIS_SPOOL_MAX", default_value = "64M", value_parser = parse_size)]
    pub spool_max: u64,
    /// Longest reconnect delay
    #[arg(long, env = "PORTCULLIS_BACKOFF_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// Drift timer: verify the kernel against last-known-good at least this often (the
    /// safety net under the nftables event path)
    #[arg(long, env = "PORTCULLIS_DRIFT_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drift_interval: Duration,
    /// Drift event path: verify after every nftables change (`nft monitor`);
    /// `--drift-events=false` leaves only the timer
    #[arg(long, env = "PORTCULLIS_DRIFT_EVENTS", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub drift_events: bool,
    /// Heal storm limit: heals allowed per minute before backing off exponentially
    #[arg(long, env = "PORTCULLIS_DRIFT_HEAL_BURST", default_value_t = 5)]
    pub drift_heal_burst: usize,
    /// Serve Prometheus metrics (plain HTTP, `GET /metrics`, unauthenticated) on this
    /// address, e.g. 127.0.0.1:9642; off unless set. Keep it on loopback
    #[arg(long, env = "PORTCULLIS_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map_err(|e| format!("{s:?}: {e} (expected bytes, e.g. 64M)"))?
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

pub fn run(agent: &Agent, args: RunArgs) -> anyhow::Result<Exit> {
    // Every URL checked before anything starts; the error names the bad one.
    crate::failover::parse_controllers(&args.controller)
        .map_err(|e| super::BadInput(e.to_string()))?;
    let config = SessionConfig {
        controllers: args.controller,
        ca: args.ca,
        cert: args.cert,
        key: args.key,
        host: args.host,
        heartbeat: args.heartbeat,
        backoff_min: args.backoff_min,
        backoff_max: args.backoff_max.max(args.backoff_min),
        source: None,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let host = match &config.host {
        Some(h) => h.clone(),
        None => crate::session::host_from_cert(&config.cert)?,
    };
    let spool_dir = agent.state().path().join("spool");
    // Until a policy is applied: last-known-good's group, else --nflog-group.
    let group = match agent.last_known_good() {
        Ok(Some(lkg)) => lkg.policy.log_group,
        _ => args.nflog_group,
    };
    let denial_config = (!args.no_denials).then(|| crate::denials::DenialConfig {
        host,
        group,
        interval: args.denial_interval,
        spool_dir,
        spool_max_bytes: args.spool_max,
        dataplane: agent.dataplane().clone(),
    });
    let mut drift = crate::drift::DriftConfig::new(
        args.drift_interval.max(Duration::from_millis(100)),
        args.drift_events,
    );
    drift.heal_burst = args.drift_heal_burst;
    let metrics_listen = args.metrics_listen;
    runtime.block_on(async move {
        let metrics_listener = match metrics_listen {
            Some(addr) => {
                if !portcullis_metrics::is_loopback(&addr) {
                    tracing::warn!(%addr, "metrics endpoint is not on loopback: it is unauthenticated");
                }
                Some(portcullis_metrics::bind(addr).await?)
            }
            None => None,
        };
        let mut companions = Companions::new();
        companions.add(crate::drift::DriftCompanion::spawn(
            agent.clone(),
            drift,
            companions.uplink(),
        ));
        let denials = denial_config.map(|dc| {
            crate::denials::Denials::start(
                dc,
                companions.uplink(),
                agent.log_group(),
                companions.conditions(),
            )
        });
        if let Some(d) = &denials {
            companions.add(d.clone());
        }
        let exporter = metrics_listener.map(|l| {
            let e = crate::metrics::Exposition::new(agent.clone(), denials, companions.conditions())
                .with_controller(companions.on_controller());
            tokio::spawn(portcullis_metrics::serve(
                l,
                move || {
                    let e = e.clone();
                    async move { e.render().await }
                },
                std::future::pending(),
            ))
        });
        let result = run_session(agent.clone(), config, companions, portcullis_os::shutdown_signal()).await;
        if let Some(e) = exporter {
            e.abort();
        }
        result
    })?;
    tracing::info!("agent stopped; the kernel keeps enforcing the applied table");
    Ok(Exit::Ok)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{Cli, Command};
    use clap::Parser as _;

    fn controllers(args: &[&str]) -> Vec<String> {
        let mut argv = vec![
            "portcullis-agent",
            "run",
            "--ca",
            "c",
            "--cert",
            "a",
            "--key",
            "k",
        ];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(r) => r.controller,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn controller_is_repeatable_and_takes_a_comma_separated_list() {
        assert_eq!(
            controllers(&[
                "--controller",
                "https://a:7443,https://b:7443",
                "--controller",
                "https://c:7443",
            ]),
            ["https://a:7443", "https://b:7443", "https://c:7443"]
        );
        assert_eq!(
            controllers(&["--controller=https://a:7443"]),
            ["https://a:7443"]
        );
    }
}
