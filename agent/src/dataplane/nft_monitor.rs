//! [`NftDataplane`]'s [`Dataplane::watch`](super::Dataplane::watch): `nft monitor`
//! (netlink group NFNLGRP_NFTABLES) as a child process; every line it prints (a
//! table/chain/rule/set/element change or the `# new generation N by process PID`
//! closing a transaction) wakes the watcher.
//!
//! Read only: this never changes the ruleset. The monitor runs in its own process group
//! (under `setpriv --pdeathsig KILL` when there is one), killed as a whole when the
//! watch ends or is dropped.

use super::DataplaneError;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::Notify;

/// How long `nft monitor` may take to exit once it closed its output.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// util-linux's `setpriv` (Debian: always installed).
const SETPRIV: &str = "/usr/bin/setpriv";

/// Kills the monitor's whole process group (a wrapper and its children) when dropped:
/// when the watch ends, is dropped, or the monitor misbehaves.
struct GroupGuard(Option<nix::unistd::Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Runs `nft monitor` until its output closes, waking `wake` on every line.
pub(super) async fn watch(nft: PathBuf, wake: Arc<Notify>) -> Result<(), DataplaneError> {
    let spawn = |source| DataplaneError::Spawn {
        program: format!("{} monitor", nft.display()),
        source,
    };
    watch_once(&nft, &wake).await.map_err(spawn)
}

async fn watch_once(nft: &Path, wake: &Notify) -> std::io::Result<()> {
    // Under `setpriv --pdeathsig KILL` when there is one: a monitor outliving a
    // SIGKILLed agent would otherwise sit on its netlink socket forever (found as an
    // orphan holding the test run's inherited file descriptors).
    let mut cmd = if Path::new(SETPRIV).exists() {
        let mut c = tokio::process::Command::new(SETPRIV);
        c.args(["--pdeathsig", "KILL", "--"]).arg(nft);
        c
    } else {
        tokio::process::Command::new(nft)
    };
    let mut child = cmd
        .arg("monitor")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let _group = GroupGuard(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(nix::unistd::Pid::from_raw),
    );
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("nft monitor without stdout"))?;
    tracing::debug!(pid = child.id(), "watching nftables events");
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        tracing::trace!(%line, "nft event");
        wake.notify_one();
    }
    // Output closed: it should be exiting; bounded, then killed (with its group).
    match tokio::time::timeout(EXIT_WAIT, child.wait()).await {
        Ok(status) => tracing::debug!(status = %status?, "nft monitor ended"),
        Err(_) => {
            tracing::warn!("`nft monitor` closed its output but did not exit; killed");
            child.kill().await?;
        }
    }
    Ok(())
}
