//! `portcullis ca`: create the CA, issue controller/agent/admin certificates, revoke
//! them and list what was issued. A thin shell over [`crate::pki::Pki`]: it parses
//! arguments and prints what was written; no certificate logic here.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::pki::{Issued, Listed, Pki};

/// Arguments shared by every command that touches the PKI directory.
#[derive(Debug, Clone, clap::Args)]
pub struct DirArg {
    /// PKI directory (ca.crt, ca/ca.key, issued certificates, issued.json, revoked.txt).
    #[arg(long, env = "PORTCULLIS_PKI", default_value = "pki")]
    pub dir: PathBuf,
}

/// Certificate authority: `init`, `issue`, `revoke`, `list`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CaCommand {
    /// Create a new CA (ECDSA P-256, 10 years): writes ca.crt and ca/ca.key (mode 0600, in a
    /// 0700 directory of its own: `serve` never reads it).
    Init {
        #[command(flatten)]
        dir: DirArg,
        /// Overwrite an existing CA. Every certificate it issued stops being trusted.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate signed by the CA (2 years).
    Issue {
        #[command(subcommand)]
        kind: IssueKind,
    },
    /// Revoke by serial (hex), `agent/<host>`, `admin/<name>`, `controller`, or a bare
    /// issued name; every certificate issued to that name is revoked (revoked.txt).
    Revoke {
        /// Serial number (hex, colons allowed) or name.
        serial_or_name: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// List issued certificates: role, name, serial, expiry, revoked.
    List {
        #[command(flatten)]
        dir: DirArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Options common to every `ca issue` kind.
#[derive(Debug, Clone, clap::Args)]
pub struct IssueOpts {
    #[command(flatten)]
    pub dir: DirArg,
    /// Overwrite existing certificate and key files.
    #[arg(long)]
    pub force: bool,
}

/// What to issue.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum IssueKind {
    /// The controller's server certificate (controller.crt/.key), URI portcullis://controller.
    Controller {
        /// Address or DNS name agents and operators dial (repeat for several).
        #[arg(long = "san", required = true, value_name = "IP|DNS")]
        sans: Vec<String>,
        #[command(flatten)]
        opts: IssueOpts,
    },
    /// An agent certificate (agent-<host>.crt/.key), URI portcullis://agent/<host>.
    /// The agent may speak only for this host.
    Agent {
        /// Host name, exactly as in the inventory ([A-Za-z0-9._-]).
        host: String,
        #[command(flatten)]
        opts: IssueOpts,
    },
    /// An operator certificate (admin-<name>.crt/.key), URI portcullis://admin/<name>,
    /// allowed to call the Admin service (apply, status, rollback, ...).
    Admin {
        /// Operator name ([A-Za-z0-9._-]).
        name: String,
        #[command(flatten)]
        opts: IssueOpts,
    },
}

/// Runs a `portcullis ca` command, printing to stdout.
pub fn run(cmd: CaCommand) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_to(cmd, &mut out)
}

/// Runs a `portcullis ca` command, printing to `out`.
pub fn run_to(cmd: CaCommand, out: &mut impl Write) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init { dir, force } => {
            let issued = Pki::init(&dir.dir, force)
                .with_context(|| format!("creating CA in {}", dir.dir.display()))?;
            print_issued(out, &issued)?;
        }
        CaCommand::Issue { kind } => {
            let (opts, what, result) = match kind {
                IssueKind::Controller { sans, opts } => {
                    let r = Pki::new(&opts.dir.dir).issue_controller(&sans, opts.force);
                    (opts, "controller".to_owned(), r)
                }
                IssueKind::Agent { host, opts } => {
                    let r = Pki::new(&opts.dir.dir).issue_agent(&host, opts.force);
                    (opts, format!("agent/{host}"), r)
                }
                IssueKind::Admin { name, opts } => {
                    let r = Pki::new(&opts.dir.dir).issue_admin(&name, opts.force);
                    (opts, format!("admin/{name}"), r)
                }
            };
            let issued = result.with_context(|| {
                format!("issuing {what} certificate in {}", opts.dir.dir.display())
            })?;
            print_issued(out, &issued)?;
        }
        CaCommand::Revoke {
            serial_or_name,
            dir,
        } => {
            let revoked = Pki::new(&dir.dir)
                .revoke(&serial_or_name)
                .with_context(|| format!("revoking {serial_or_name} in {}", dir.dir.display()))?;
            for (serial, label) in &revoked.added {
                writeln!(out, "revoked {serial} ({label})")?;
            }
            for serial in &revoked.already {
                writeln!(out, "already revoked {serial}")?;
            }
            for path in &revoked.written {
                writeln!(out, "wrote {}", path.display())?;
            }
        }
        CaCommand::List { dir, json } => {
            let listed = Pki::new(&dir.dir)
                .list()
                .with_context(|| format!("listing certificates in {}", dir.dir.display()))?;
            if json {
                serde_json::to_writer_pretty(&mut *out, &listed)?;
                writeln!(out)?;
            } else {
                print_table(out, &listed)?;
            }
        }
    }
    Ok(())
}

fn print_issued(out: &mut impl Write, issued: &Issued) -> anyhow::Result<()> {
    writeln!(
        out,
        "issued {} serial {} valid until {}",
        issued.record.label(),
        issued.record.serial,
        issued.record.not_after
    )?;
    for path in &issued.written {
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(())
}

fn print_table(out: &mut impl Write, listed: &[Listed]) -> anyhow::Result<()> {
    let header = ["ROLE", "NAME", "SERIAL", "NOT AFTER", "REVOKED"];
    let rows: Vec<[String; 5]> = listed
        .iter()
        .map(|l| {
            [
                l.record.role.to_string(),
                l.record.name.clone(),
                l.record.serial.clone(),
                l.record.not_after.clone(),
                if l.revoked { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: [&str; 5]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    writeln!(out, "{}", line(header))?;
    for row in &rows {
        writeln!(out, "{}", line(row.each_ref().map(String::as_str)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        ca: CaCommand,
    }

    fn run_args(args: &[&str]) -> anyhow::Result<String> {
        let cli = Cli::try_parse_from(std::iter::once("ca").chain(args.iter().copied()))?;
        let mut out = Vec::new();
        run_to(cli.ca, &mut out)?;
        Ok(String::from_utf8(out)?)
    }

    #[test]
    fn cli_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("pki");
        let d = dir.to_str().expect("utf-8 path");
        let out = run_args(&["init", "--dir", d]).expect("init");
        assert!(out.contains(&format!("wrote {d}/ca/ca.key\n")), "{out}");
        assert!(out.contains(&format!("wrote {d}/ca.crt\n")), "{out}");
        let err = run_args(&["init", "--dir", d]).expect_err("second init");
        assert!(format!("{err:#}").contains("--force"), "{err:#}");

        let out = run_args(&["issue", "agent", "h1", "--dir", d]).expect("agent");
        assert!(out.contains(&format!("wrote {d}/agent-h1.crt\n")), "{out}");
        run_args(&[
            "issue",
            "controller",
            "--san",
            "10.0.0.1",
            "--san",
            "ctl",
            "--dir",
            d,
        ])
        .expect("controller");
        assert!(run_args(&["issue", "controller", "--dir", d]).is_err());
        run_args(&["issue", "admin", "alice", "--dir", d]).expect("admin");

        let out = run_args(&["revoke", "h1", "--dir", d]).expect("revoke");
        assert!(out.contains("(agent/h1)"), "{out}");
        let table = run_args(&["list", "--dir", d]).expect("list");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("ROLE"));
        assert!(
            lines[2].starts_with("agent") && lines[2].ends_with("yes"),
            "{table}"
        );
        assert!(
            lines[4].starts_with("admin") && lines[4].ends_with("no"),
            "{table}"
        );

        let json = run_args(&["list", "--dir", d, "--json"]).expect("list json");
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(value[1]["name"], "h1");
        assert_eq!(value[1]["revoked"], true);
    }
}
