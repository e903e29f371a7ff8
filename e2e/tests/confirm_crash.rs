//! End to end, issue 11 item 6: a SIGKILL of the agent right after the kernel took an
//! unconfirmed revision (before `Applied`, before last-known-good moved). The confirm
//! record was made durable before the apply, so the agent restarted with the controller
//! down still reverts at the deadline, keeps the `Reverted` report on disk and delivers it
//! when the controller is back.

#![allow(clippy::unwrap_used)]

mod common;

use common::Fleet;
use portcullis_testkit::{TcpOutcome, TcpServer, probe, require_root_netns};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const INVENTORY: &str = "all:\n  hosts:\n    h1:\n";

fn wait_until(fleet: &Fleet, what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}:\n{}", fleet.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tcp_from_outside(fleet: &Fleet, port: u16, wait: Duration) -> TcpOutcome {
    let dst = SocketAddr::new(fleet.hosts["h1"].v4, port);
    probe::tcp_connect(&fleet.outside.ns, dst, wait).unwrap()
}

/// `--nft` that SIGKILLs the agent right after the kernel took a ruleset change, once
/// `<dir>/armed` exists (and removes it).
fn killing_nft(dir: &Path) -> String {
    let armed = dir.join("armed");
    let killed = dir.join("killed");
    format!(
        "#!/bin/sh
# e2e fault injection: the agent dies right after nft applied, before anything else.
if [ \"$1\" = \"-f\" ] && [ -e {armed} ]; then
    rm -f {armed}
    nft \"$@\"
    rc=$?
    kill -9 $PPID
    touch {killed}
    exit $rc
fi
exec nft \"$@\"
",
        armed = armed.display(),
        killed = killed.display()
    )
}

#[test]
fn sigkill_right_after_an_unconfirmed_apply_still_reverts() {
    if !require_root_netns() {
        return;
    }
    let mut fleet = Fleet::new(&["h1"]).unwrap();
    let inv = fleet.write("inventory.yml", INVENTORY);
    let v1 = fleet.write(
        "v1.yml",
        "- name: b\n  hosts: all\n  policy:\n    allow: [http/tcp]\n",
    );
    let v2 = fleet.write(
        "v2.yml",
        "- name: b\n  hosts: all\n  policy:\n    allow: [http/tcp, smtp/tcp]\n",
    );
    let nft = fleet.executable("killing-nft", &killing_nft(fleet.dir.path()));
    let nft_arg = ["--nft", nft.to_str().unwrap()];
    fleet.start_controller().unwrap();
    fleet.start_agent_with("h1", &nft_arg).unwrap();
    fleet.wait_status(&["h1"], "connected", |h| h["connected"] == true);
    fleet.apply_ok(&inv, &v1);
    let h1 = fleet.hosts["h1"].v4;
    let _web = TcpServer::start(&fleet.hosts["h1"].ns, SocketAddr::new(h1, 80)).unwrap();
    let _smtp = TcpServer::start(&fleet.hosts["h1"].ns, SocketAddr::new(h1, 25)).unwrap();
    assert_eq!(
        tcp_from_outside(&fleet, 25, Duration::from_millis(400)),
        TcpOutcome::TimedOut
    );

    fleet.write("armed", "");
    let mut apply = fleet
        .cli_command(&[
            "apply",
            "-i",
            inv.to_str().unwrap(),
            v2.to_str().unwrap(),
            "--serial",
            "1",
            "--confirm-timeout",
            "6s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let killed = fleet.dir.path().join("killed");
    wait_until(
        &fleet,
        "the agent was never killed after the apply",
        20,
        || killed.exists(),
    );
    fleet.kill_agent("h1"); // reap it
    assert_eq!(
        tcp_from_outside(&fleet, 25, Duration::from_secs(2)),
        TcpOutcome::Accepted,
        "r2 in the kernel"
    );
    let pending = fleet.dir.path().join("state-h1/pending-confirm.json");
    assert!(
        pending.exists(),
        "the confirm record was not durable before the apply"
    );
    fleet.stop_controller();
    let _ = apply.wait();

    // Restarted with no controller: it reverts on its own and keeps the report.
    fleet.start_agent_with("h1", &nft_arg).unwrap();
    let reverted = fleet.dir.path().join("state-h1/reverted.json");
    wait_until(&fleet, "no revert after the restart", 20, || {
        reverted.exists()
    });
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&reverted).unwrap()).unwrap();
    assert_eq!(
        (
            record["revision"].as_u64(),
            record["restored_revision"].as_u64()
        ),
        (Some(2), Some(1)),
        "{record}"
    );
    assert!(!pending.exists());
    assert_eq!(
        tcp_from_outside(&fleet, 25, Duration::from_millis(400)),
        TcpOutcome::TimedOut,
        "back on r1"
    );
    assert_eq!(
        tcp_from_outside(&fleet, 80, Duration::from_secs(2)),
        TcpOutcome::Accepted
    );
    // The controller back: the report is delivered (and the durable copy removed).
    fleet.start_controller().unwrap();
    wait_until(
        &fleet,
        "the Reverted report was never delivered",
        20,
        || !reverted.exists(),
    );
    fleet.wait_status(&["h1"], "on r1", |h| {
        h["connected"] == true && h["applied_revision"] == 1
    });
}
