//! The Debian packages: `deploy/package.sh` (reusing this test run's debug binaries, fast
//! compression) builds `portcullis` and `portcullis-agent` .debs; their listings carry
//! the binaries, systemd units (ExecStart in /usr/bin), the sysusers file, conffiles,
//! completions for three shells and a man page per command; both extract into a clean
//! root (`dpkg -x`: no maintainer scripts, which would need a chroot with a shell) and
//! run `--version` from there.
//!
//! Needs cargo-deb and dpkg-deb (`.ci/run` installs them); fails without them unless
//! `PORTCULLIS_SKIP_PACKAGE=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn target_dir() -> PathBuf {
    // target/debug/deps/package-HASH -> target
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What each package must carry (paths as `dpkg-deb -c` lists them, without `./`).
fn expected(pkg: &str) -> Vec<String> {
    let mut v: Vec<String> = match pkg {
        "portcullis" => vec![
            "usr/bin/portcullis",
            "lib/systemd/system/portcullis.service",
            "usr/lib/sysusers.d/portcullis.conf",
            "etc/portcullis/controller.env",
            "usr/share/man/man1/portcullis.1.gz",
            "usr/share/man/man1/portcullis-serve.1.gz",
            "usr/share/man/man1/portcullis-apply.1.gz",
            "usr/share/man/man1/portcullis-rollout-list.1.gz",
            "usr/share/doc/portcullis/grafana/portcullis.json",
        ],
        _ => vec![
            "usr/bin/portcullis-agent",
            "lib/systemd/system/portcullis-agent.service",
            "lib/systemd/system/portcullis-agent-restore.service",
            "etc/portcullis/agent.env",
            "usr/share/man/man1/portcullis-agent.1.gz",
            "usr/share/man/man1/portcullis-agent-run.1.gz",
            "usr/share/man/man1/portcullis-agent-restore.1.gz",
        ],
    }
    .into_iter()
    .map(String::from)
    .collect();
    v.push(format!("usr/share/bash-completion/completions/{pkg}"));
    v.push(format!("usr/share/zsh/vendor-completions/_{pkg}"));
    v.push(format!("usr/share/fish/vendor_completions.d/{pkg}.fish"));
    v
}

#[test]
fn debs_carry_units_config_completions_man_pages_and_run_from_a_clean_root() {
    if std::env::var_os("PORTCULLIS_SKIP_PACKAGE").is_some_and(|v| v == "1") {
        eprintln!("PORTCULLIS_SKIP_PACKAGE=1: package test not run");
        return;
    }
    for tool in ["cargo-deb", "dpkg-deb", "gzip"] {
        assert!(
            have(tool),
            "{tool} is missing (cargo install cargo-deb --locked; apt-get install dpkg gzip), \
             or set PORTCULLIS_SKIP_PACKAGE=1"
        );
    }
    let target = target_dir();
    for bin in ["portcullis", "portcullis-agent"] {
        assert!(
            target.join("debug").join(bin).exists(),
            "{bin} not built: run `cargo build --workspace --bins` (cargo test --workspace does)"
        );
    }
    let repo = repo();
    run(Command::new("bash")
        .arg(repo.join("deploy/package.sh"))
        .args(["--profile", "dev", "--no-build", "--fast"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&repo));
    let debs = repo.join("target/debian");
    let version = env!("CARGO_PKG_VERSION");
    let root = tempfile::tempdir().expect("tempdir");
    for pkg in ["portcullis", "portcullis-agent"] {
        let deb = debs.join(format!("{pkg}_{version}-1_amd64.deb"));
        let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
        let paths: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .map(|p| p.trim_start_matches("./"))
            .collect();
        for want in expected(pkg) {
            assert!(
                paths.contains(&want.as_str()),
                "{pkg}: no {want} in\n{listing}"
            );
        }
        let conffiles = run(Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .arg("conffiles"));
        let env = if pkg == "portcullis" {
            "controller"
        } else {
            "agent"
        };
        assert!(
            conffiles.contains(&format!("/etc/portcullis/{env}.env")),
            "{pkg} conffiles: {conffiles}"
        );
        let control = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"));
        if pkg == "portcullis-agent" {
            assert!(control.contains("nftables"), "agent Depends: {control}");
        }
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(root.path()));
    }
    // The units start the packaged binaries, not /usr/local ones.
    for unit in [
        "portcullis.service",
        "portcullis-agent.service",
        "portcullis-agent-restore.service",
    ] {
        let text = std::fs::read_to_string(root.path().join("lib/systemd/system").join(unit))
            .expect("unit");
        let exec: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ExecStart="))
            .collect();
        assert!(
            !exec.is_empty() && exec.iter().all(|l| l.starts_with("ExecStart=/usr/bin/")),
            "{unit}: {exec:?}"
        );
    }
    for bin in ["portcullis", "portcullis-agent"] {
        let out = run(Command::new(root.path().join("usr/bin").join(bin)).arg("--version"));
        assert_eq!(out.trim(), format!("{bin} {version}"), "{bin} --version");
    }
    // The generated completion scripts are scripts for that shell, naming the binary.
    let bash = std::fs::read_to_string(
        root.path()
            .join("usr/share/bash-completion/completions/portcullis"),
    )
    .expect("bash completion");
    assert!(bash.contains("complete -F _portcullis"), "bash completion");
    assert!(
        bash.contains("--metrics-listen"),
        "serve's flag is completed"
    );
}
