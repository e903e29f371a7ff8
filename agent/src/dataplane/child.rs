//! Child processes with a deadline: every `nft` the agent runs goes through [`run_bounded`].
//!
//! The child is started in a process group of its own; a watchdog thread kills the whole
//! group (SIGKILL) when the deadline passes, which also closes the pipes a wrapper
//! script's grandchildren might hold, so the caller always gets an answer by the deadline
//! (plus the time to reap): [`DataplaneError::Timeout`]. A hung `nft` (a wedged netlink
//! socket, a lock, a wrapper that sleeps) therefore never wedges an apply, a drift check
//! or the session waiting on it.
//!
//! stdin is fed from a second thread so a chatty child can never block us on a full
//! stdout/stderr pipe while we are still writing.

use super::DataplaneError;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Default deadline of one `nft` run. A 10,000-element apply takes well under a second.
pub const DEFAULT_NFT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `program args` with `stdin` (or none), returning its output, or
/// [`DataplaneError::Timeout`] after killing its process group once `timeout` passed.
pub fn run_bounded<S: AsRef<OsStr>>(
    program: &std::path::Path,
    args: &[S],
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<Output, DataplaneError> {
    let spawn_err = |source| DataplaneError::Spawn {
        program: program.display().to_string(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(spawn_err)?;
    let pgid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let input = child.stdin.take();
    let timed_out = AtomicBool::new(false);
    let finished = AtomicBool::new(false);
    let (cancel, cancelled) = mpsc::channel::<()>();
    let (written, output) = std::thread::scope(|s| {
        let (finished_flag, timed_out_flag) = (&finished, &timed_out);
        let watchdog = s.spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = cancelled.recv_timeout(timeout)
                && !finished_flag.load(Ordering::Acquire)
            {
                timed_out_flag.store(true, Ordering::Release);
                // The group: the child and whatever it started (a wrapper's `sleep`).
                let _ = killpg(pgid, Signal::SIGKILL);
            }
        });
        let writer = s.spawn(move || match (input, stdin) {
            (Some(mut pipe), Some(text)) => pipe.write_all(text.as_bytes()),
            _ => Ok(()),
        });
        let output = child.wait_with_output();
        finished.store(true, Ordering::Release);
        let _ = cancel.send(());
        let _ = watchdog.join();
        (writer.join(), output)
    });
    let output = output.map_err(spawn_err)?;
    if timed_out.load(Ordering::Acquire) {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        return Err(DataplaneError::Timeout {
            command: format!("{} {}", program.display(), args.join(" ")),
            timeout,
        });
    }
    if let (Ok(Err(e)), true) = (written, output.status.success()) {
        // The child succeeded without reading everything: should not happen, but say so.
        return Err(spawn_err(e));
    }
    Ok(output)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Instant;

    #[test]
    fn output_of_a_quick_child() {
        let out = run_bounded(
            Path::new("/bin/sh"),
            &["-c", "cat; echo err >&2"],
            Some("hello"),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"hello");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn a_hung_child_and_its_children_are_killed_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pid");
        // The grandchild holds stdout open: killing only the shell would not end the read.
        let script = format!("sleep 1000 & echo $! > {}; wait", marker.display());
        let started = Instant::now();
        let err = run_bounded(
            Path::new("/bin/sh"),
            &["-c", script.as_str()],
            None,
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(err, DataplaneError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("did not finish within"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(100),
            "returned at all"
        );
        let pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild is gone (a zombie of init at most, reaped shortly).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let alive = state
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                .is_some_and(|s| s != "Z");
            if !alive {
                break;
            }
            assert!(Instant::now() < deadline, "grandchild {pid} still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
