//! `portcullis-inventory-files`: reading inventory sources from disk the way ansible-core does, for the pure parser in
//! `portcullis-policy`: each `-i` path is a file, a directory (entries in name order,
//! recursively, skipping hidden files, `group_vars`/`host_vars`/`vars_plugins` and
//! Ansible's ignored extensions), an executable dynamic inventory (run with `--list`,
//! bounded in time and output, its stderr shown on failure) or a `host1,host2,` list; plus
//! the `group_vars/` and `host_vars/` beside each source and beside the site file.
//!
//! Parsing is `portcullis-policy`'s (pure); this crate only reads and runs. Shared by the
//! `portcullis` CLI and `portcullis-agent apply`.

use portcullis_policy::budget::{Budget, MAX_DOCUMENT_BYTES};
use portcullis_policy::{Diagnostics, Inventory, Source, VarsDir, VarsDirs};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Ansible's `INVENTORY_IGNORE_EXTS` (REJECT_EXTS + .orig, .cfg, .retry).
const IGNORED_EXTS: &[&str] = &[
    ".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst", ".orig", ".cfg", ".retry",
];
/// Extensions of variable files in `group_vars/` and `host_vars/` (or none).
const VARS_EXTS: &[&str] = &["yml", "yaml", "json"];
/// How long a dynamic inventory script may run.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);

/// A source that could not be read or run (problems inside a file are [`Diagnostics`]).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:1:1: document too large: more than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{path}: dynamic inventory {message}")]
    Script { path: String, message: String },
    #[error("{0}")]
    Vars(Diagnostics),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn script(path: &Path, message: String) -> LoadError {
    LoadError::Script {
        path: path.display().to_string(),
        message,
    }
}

/// Every source read, the vars directories found, and the merged inventory.
#[derive(Debug)]
pub struct Loaded {
    pub sources: Vec<Source>,
    pub inventory: Inventory,
    /// The `-i` paths as given, joined with `,` (the revision's inventory name).
    pub name: String,
}

impl Loaded {
    /// The inventory as one `ansible-inventory --list` JSON text with its order (what
    /// the controller stores with a revision: a dynamic inventory's answer is kept as it
    /// was).
    pub fn list_json(&self) -> String {
        portcullis_policy::inventory_json::to_transport(&self.inventory)
    }
}

/// Load every `-i` path (and the vars beside `site`). I/O problems are `Err`; problems in
/// the files are the inner `Err` with file:line:column.
pub fn load(
    paths: &[PathBuf],
    site: Option<&Path>,
) -> Result<Result<Loaded, Diagnostics>, LoadError> {
    let mut sources = Vec::new();
    let mut dirs = VarsDirs::default();
    for p in paths {
        let text = p.display().to_string();
        if !p.exists() && text.contains(',') {
            // Ansible's host_list plugin: `-i 'h1,h2,'`.
            let lines: Vec<&str> = text
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .collect();
            sources.push(Source::new(format!("{text}.ini"), lines.join("\n")));
            continue;
        }
        collect(p, &mut sources)?;
        let base = if p.is_dir() {
            p.clone()
        } else {
            p.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        dirs.inventory.push(vars_dir(&base)?);
    }
    if let Some(site) = site {
        let base = site.parent().map(Path::to_path_buf).unwrap_or_default();
        dirs.playbook.push(vars_dir(&base)?);
    }
    let name = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    Ok(
        Inventory::load(&sources, &dirs, &Budget::default()).map(|inventory| Loaded {
            sources,
            inventory,
            name,
        }),
    )
}

fn ignored(name: &str) -> bool {
    name.starts_with('.')
        || matches!(name, "host_vars" | "group_vars" | "vars_plugins")
        || IGNORED_EXTS.iter().any(|e| name.ends_with(e))
}

fn collect(path: &Path, out: &mut Vec<Source>) -> Result<(), LoadError> {
    if path.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)
            .map_err(io(path))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for n in names {
            if !ignored(&n.to_string_lossy()) {
                collect(&path.join(n), out)?;
            }
        }
        return Ok(());
    }
    if is_executable(path) {
        out.push(run_script(path)?);
    } else {
        out.push(read_bounded(path)?);
    }
    Ok(())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Read a file, refusing one over the YAML budget without reading all of it.
pub fn read_bounded(path: &Path) -> Result<Source, LoadError> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(MAX_DOCUMENT_BYTES as u64 + 1)
                .read_to_string(&mut text)
        })
        .map_err(io(path))?;
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(LoadError::TooLarge {
            path: path.display().to_string(),
        });
    }
    Ok(Source::new(path.display().to_string(), text))
}

/// Run a dynamic inventory with `--list`; without `_meta` in its answer, once more per
/// host with `--host NAME` (as Ansible does). Each run: at most [`SCRIPT_TIMEOUT`] and the
/// document budget of output; a failure shows its exit status and stderr.
fn run_script(path: &Path) -> Result<Source, LoadError> {
    let text = capture(path, &["--list"], SCRIPT_TIMEOUT)?;
    let bad_json = |e: serde_json::Error| {
        script(
            path,
            format!("printed invalid JSON at {}:{}: {e}", e.line(), e.column()),
        )
    };
    let mut list: serde_json::Value = serde_json::from_str(&text).map_err(bad_json)?;
    let Some(groups) = list.as_object_mut() else {
        return Err(script(path, "printed no JSON object".into()));
    };
    if groups.contains_key("_meta") {
        return Ok(Source::new(format!("{} --list", path.display()), text));
    }
    let mut hosts: Vec<String> = Vec::new();
    for body in groups.values() {
        let list = body.get("hosts").unwrap_or(body);
        for h in list.as_array().into_iter().flatten() {
            if let Some(h) = h.as_str()
                && !hosts.iter().any(|x| x == h)
            {
                hosts.push(h.to_string());
            }
        }
    }
    if hosts.len() > Budget::default().max_range_hosts {
        return Err(script(
            path,
            format!("lists {} hosts without `_meta`", hosts.len()),
        ));
    }
    let mut hostvars = serde_json::Map::new();
    for h in hosts {
        let vars = capture(path, &["--host", &h], SCRIPT_TIMEOUT)?;
        let vars: serde_json::Value = serde_json::from_str(&vars).map_err(bad_json)?;
        hostvars.insert(h, vars);
    }
    groups.insert("_meta".into(), serde_json::json!({ "hostvars": hostvars }));
    Ok(Source::new(
        format!("{} --list", path.display()),
        list.to_string(),
    ))
}

/// Run `path args`: its stdout (UTF-8, a JSON object), within `limit` time and the
/// document budget of output (killed at either).
fn capture(path: &Path, args: &[&str], limit_time: Duration) -> Result<String, LoadError> {
    use std::os::unix::process::CommandExt as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(path)
        .args(args)
        // Its own process group, so a kill reaches what it started too.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(path))?;
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(&mut child);
        let _ = child.wait();
        return Err(script(path, "has no output pipes".into()));
    };
    let limit = MAX_DOCUMENT_BYTES as u64 + 1;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        out.take(limit).read_to_end(&mut buf).map(|_| buf)
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        err.take(64 << 10).read_to_end(&mut buf).map(|_| buf)
    });
    let start = Instant::now();
    let mut stdout: Option<Vec<u8>> = None;
    let status = loop {
        if stdout.is_none() && reader.is_finished() {
            let buf = match reader.join() {
                Ok(r) => r.map_err(io(path))?,
                Err(_) => Vec::new(),
            };
            if buf.len() as u64 >= limit {
                kill_group(&mut child);
                let _ = child.wait();
                return Err(script(
                    path,
                    format!("printed more than {MAX_DOCUMENT_BYTES} bytes (killed)"),
                ));
            }
            stdout = Some(buf);
            // The reader is consumed; keep polling for the exit status.
            break loop {
                if let Some(s) = child.try_wait().map_err(io(path))? {
                    break s;
                }
                if start.elapsed() > limit_time {
                    kill_group(&mut child);
                    let _ = child.wait();
                    return Err(timeout(path, limit_time));
                }
                std::thread::sleep(Duration::from_millis(10));
            };
        }
        if start.elapsed() > limit_time {
            kill_group(&mut child);
            let _ = child.wait();
            return Err(timeout(path, limit_time));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = match err_reader.join() {
        Ok(Ok(b)) => String::from_utf8_lossy(&b).trim().to_string(),
        _ => String::new(),
    };
    let with_stderr = |m: String| {
        if stderr.is_empty() {
            m
        } else {
            format!("{m}; its stderr: {stderr}")
        }
    };
    if !status.success() {
        return Err(script(path, with_stderr(format!("failed ({status})"))));
    }
    let text = String::from_utf8(stdout.unwrap_or_default())
        .map_err(|_| script(path, "printed text that is not UTF-8".into()))?;
    if !text.trim_start().starts_with('{') {
        return Err(script(
            path,
            with_stderr(
                "printed no JSON object (expected `ansible-inventory --list` output)".into(),
            ),
        ));
    }
    Ok(text)
}

/// SIGKILL the script's process group (it and its children), then reap it.
fn kill_group(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
}

fn timeout(path: &Path, limit: Duration) -> LoadError {
    script(path, format!("did not finish within {limit:?} (killed)"))
}

/// `group_vars/` and `host_vars/` under `base` (each entry a file `NAME`, `NAME.yml`,
/// `NAME.yaml`, `NAME.json`, or a directory `NAME/` of such files, in name order).
fn vars_dir(base: &Path) -> Result<VarsDir, LoadError> {
    let mut d = VarsDir::default();
    for (sub, into) in [("group_vars", &mut d.groups), ("host_vars", &mut d.hosts)] {
        let dir = base.join(sub);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
        names.sort();
        for n in names {
            let n = n.to_string_lossy().to_string();
            if n.starts_with('.') || n.ends_with('~') {
                continue;
            }
            let path = dir.join(&n);
            let (entity, files) = if path.is_dir() {
                (n.clone(), dir_files(&path)?)
            } else {
                match n.rsplit_once('.') {
                    Some((stem, e)) if VARS_EXTS.contains(&e) => (stem.to_string(), vec![path]),
                    Some(_) => continue,
                    None => (n.clone(), vec![path]),
                }
            };
            for f in files {
                let src = read_bounded(&f)?;
                let vars =
                    portcullis_policy::inventory::vars_file(&src).map_err(LoadError::Vars)?;
                into.entry(entity.clone()).or_default().extend(vars);
            }
        }
    }
    Ok(d)
}

fn dir_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let s = n.to_string_lossy();
        if s.starts_with('.') || s.ends_with('~') {
            continue;
        }
        let p = dir.join(&n);
        let ext = p.extension().map(|e| e.to_string_lossy().to_string());
        if p.is_dir() && ext.is_none() {
            out.extend(dir_files(&p)?);
        } else if p.is_file() && ext.as_deref().is_none_or(|e| VARS_EXTS.contains(&e)) {
            out.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn script_file(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("inv");
        portcullis_testkit::write_executable(&p, &format!("#!/bin/sh\n{body}\n")).unwrap();
        p
    }

    #[test]
    fn a_hung_script_is_killed_at_the_deadline() {
        let d = tempfile::tempdir().unwrap();
        let p = script_file(d.path(), "sleep 20");
        let e = capture(&p, &["--list"], Duration::from_millis(300)).unwrap_err();
        assert!(
            e.to_string()
                .contains("did not finish within 300ms (killed)"),
            "{e}"
        );
    }

    #[test]
    fn an_endless_script_is_cut_at_the_document_budget() {
        let d = tempfile::tempdir().unwrap();
        let p = script_file(d.path(), "yes '{}'");
        let e = capture(&p, &["--list"], SCRIPT_TIMEOUT).unwrap_err();
        assert!(e.to_string().contains("printed more than"), "{e}");
    }

    #[test]
    fn without_meta_each_host_is_asked_with_host() {
        let d = tempfile::tempdir().unwrap();
        let p = script_file(
            d.path(),
            r#"if [ "$1" = --list ]; then echo '{"web": ["a", "b"]}'; else echo "{\"me\": \"$2\"}"; fi"#,
        );
        let l = load(&[p], None).unwrap().unwrap();
        assert_eq!(l.inventory.hosts["b"].vars["me"], "b");
        assert!(l.inventory.groups["web"].contains("a"));
    }

    #[test]
    fn directories_skip_what_ansible_skips() {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("b.ini", "[g]\nb\n"),
            ("a.yml", "g:\n  hosts:\n    a:\n"),
            ("c.bak", "x y z\n"),
            (".hidden", "h\n"),
            ("d~", "[\n"),
        ] {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        let l = load(&[d.path().to_path_buf()], None).unwrap().unwrap();
        assert_eq!(l.inventory.host_order, ["a", "b"]);
    }
}
