//! [`NetNs`]: a named network namespace owned by the test, deleted on drop.
//!
//! Names are `pct-<pid>-<n>`, unique per process and across parallel test binaries. On the
//! first creation in a process, namespaces left behind by dead test processes (a
//! `pct-<pid>-*` whose pid no longer exists, e.g. after SIGKILL) are deleted too.
//!
//! Code runs inside a namespace either as a command (`ip netns exec`) or on a thread that
//! entered it with `setns(2)`; sockets stay in the namespace they were created in, so a
//! probe's socket never leaks into the caller's namespace.
//!
//! [`NetNs::set_hosts`] gives the namespace's commands their own `/etc/hosts` (`ip netns
//! exec` bind-mounts `/etc/netns/<name>/*` over `/etc`); that directory goes with the
//! namespace (on drop, and when a dead process's namespaces are reaped).

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};
use std::ffi::OsStr;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

const NETNS_DIR: &str = "/run/netns";
/// Per-namespace configuration files, as `ip netns exec` looks for them.
const ETC_NETNS_DIR: &str = "/etc/netns";
const PREFIX: &str = "pct-";

/// A network namespace created by this process; `ip netns del` on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a fresh namespace with a unique name and brings its loopback up.
    pub fn new() -> Result<Self> {
        static REAP: Once = Once::new();
        REAP.call_once(reap_stale);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}", std::process::id());
        ip(&["netns", "add", &name]).with_context(|| format!("ip netns add {name}"))?;
        // From here on, Drop deletes it even if the rest fails.
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`: the bind mount that keeps the namespace alive.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// `ip -n <name> <args>`, failing with its stderr when it exits non-zero.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A `Command` that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args` inside the namespace and returns its output, whatever the exit.
    pub fn run<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Result<Output> {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("ip netns exec {} {program}", self.name))
    }

    /// Runs `program args` inside the namespace; its stdout, or an error carrying stderr.
    pub fn run_ok<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Result<String> {
        let out = self.run(program, args)?;
        if !out.status.success() {
            bail!(
                "{program} in {} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a thread that entered this namespace and waits for it. A panic in `f`
    /// is propagated to the caller.
    pub fn enter<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let file = self.open()?;
        let joined = std::thread::scope(|s| {
            s.spawn(move || -> Result<T> {
                setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
                Ok(f())
            })
            .join()
        });
        match joined {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Spawns a detached thread that runs `f` inside this namespace.
    pub fn spawn<F, T>(&self, f: F) -> Result<JoinHandle<Result<T>>>
    where
        F: FnOnce() -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let file = self.open()?;
        let name = format!("ns-{}", self.name);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
                f()
            })
            .context("spawn thread")
    }

    /// `/etc/hosts` for commands run in this namespace ([`NetNs::command`]; not for
    /// [`NetNs::enter`]): e.g. one name with several addresses. Removed on drop.
    pub fn set_hosts(&self, text: &str) -> Result<()> {
        let dir = PathBuf::from(ETC_NETNS_DIR).join(&self.name);
        let path = dir.join("hosts");
        // Another namespace's drop may remove an empty /etc/netns in between: retry.
        let mut tries = 0;
        loop {
            let r = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text));
            match r {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
                r => return r.with_context(|| format!("write {}", path.display())),
            }
        }
    }

    fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("open {}", self.path().display()))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("testkit: could not delete netns {}: {e:#}", self.name);
        }
        remove_etc(&self.name);
    }
}

/// Deletes `/etc/netns/<name>` if there is one ([`NetNs::set_hosts`]).
fn remove_etc(name: &str) {
    let dir = PathBuf::from(ETC_NETNS_DIR).join(name);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("testkit: could not delete {}: {e}", dir.display());
        }
        // Only when empty (no other namespace's files).
        let _ = std::fs::remove_dir(ETC_NETNS_DIR);
    }
}

/// Runs `ip <args>`; stdout, or an error with stderr.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run ip (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes `pct-<pid>-*` namespaces (and their `/etc/netns` files) whose process is gone
/// (left by a killed test run).
fn reap_stale() {
    for dir in [NETNS_DIR, ETC_NETNS_DIR] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists() {
                if dir == NETNS_DIR {
                    let _ = ip(&["netns", "del", &name]);
                } else {
                    remove_etc(&name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_deleted_on_drop_even_on_panic() {
        if !crate::require_root_netns() {
            return;
        }
        let path = std::panic::catch_unwind(|| {
            let ns = NetNs::new().expect("create");
            let path = ns.path();
            assert!(path.exists());
            std::panic::panic_any(path);
        })
        .expect_err("panicked")
        .downcast::<PathBuf>()
        .expect("path payload");
        assert!(!path.exists(), "{} still exists", path.display());
    }

    #[test]
    fn enter_runs_inside_the_namespace() {
        if !crate::require_root_netns() {
            return;
        }
        let ns = NetNs::new().expect("create");
        let links = ns
            .enter(|| std::fs::read_to_string("/proc/thread-self/net/dev"))
            .expect("enter")
            .expect("read");
        // A fresh namespace has only loopback.
        let ifaces: Vec<&str> = links.lines().skip(2).collect();
        assert_eq!(ifaces.len(), 1, "{links}");
        assert!(ifaces[0].trim_start().starts_with("lo:"));
    }

    #[test]
    fn hosts_apply_to_commands_and_go_with_the_namespace() {
        if !crate::require_root_netns() {
            return;
        }
        let ns = NetNs::new().expect("create");
        ns.set_hosts("10.77.9.1 two.e2e.test\n10.77.9.2 two.e2e.test\n")
            .expect("set_hosts");
        let dir = PathBuf::from(ETC_NETNS_DIR).join(ns.name());
        let out = ns
            .run_ok("getent", &["ahosts", "two.e2e.test"])
            .expect("getent");
        assert!(
            out.contains("10.77.9.1") && out.contains("10.77.9.2"),
            "{out}"
        );
        drop(ns);
        assert!(!dir.exists(), "{} still exists", dir.display());
    }
}
