//! [`NftDataplane`]: the real dataplane, driving the `nft` binary.
//!
//! One process per operation; scripts go through stdin (`nft -f -`), never through a
//! temporary file. Errors carry nft's stderr verbatim (it names the offending line).

use super::{Dataplane, DataplaneError};
use portcullis_policy::TABLE_NAME;
use portcullis_policy::render::delete_script;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The real nftables dataplane (the `nft` binary, found on `PATH` by default).
#[derive(Debug, Clone)]
pub struct NftDataplane {
    nft: PathBuf,
}

impl Default for NftDataplane {
    fn default() -> Self {
        Self::new("nft")
    }
}

impl NftDataplane {
    /// A dataplane running the given `nft` binary.
    pub fn new(nft: impl Into<PathBuf>) -> Self {
        Self { nft: nft.into() }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output, DataplaneError> {
        let spawn_err = |source| DataplaneError::Spawn {
            program: self.nft.display().to_string(),
            source,
        };
        let mut child = Command::new(&self.nft)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        // Feed stdin from a second thread so a chatty nft can never block us on a full
        // stdout/stderr pipe while we are still writing.
        let input = child.stdin.take();
        let written = std::thread::scope(|s| {
            let writer = s.spawn(move || match (input, stdin) {
                (Some(mut pipe), Some(text)) => pipe.write_all(text.as_bytes()),
                _ => Ok(()),
            });
            let output = child.wait_with_output();
            (writer.join(), output)
        });
        let output = written.1.map_err(spawn_err)?;
        if let (Ok(Err(e)), true) = (written.0, output.status.success()) {
            // nft succeeded without reading everything: should not happen, but say so.
            return Err(spawn_err(e));
        }
        Ok(output)
    }

    fn command_line(&self, args: &[&str]) -> String {
        format!("{} {}", self.nft.display(), args.join(" "))
    }

    fn fail(&self, args: &[&str], output: &Output) -> DataplaneError {
        DataplaneError::Nft {
            command: self.command_line(args),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }
    }
}

impl Dataplane for NftDataplane {
    fn apply(&self, script: &str) -> Result<(), DataplaneError> {
        let args = ["-f", "-"];
        let output = self.run(&args, Some(script))?;
        if !output.status.success() {
            return Err(self.fail(&args, &output));
        }
        tracing::debug!(bytes = script.len(), "nft transaction applied");
        Ok(())
    }

    fn read_back(&self) -> Result<Option<String>, DataplaneError> {
        let args = ["-j", "list", "table", "inet", TABLE_NAME];
        let output = self.run(&args, None)?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            // ENOENT is how nft says "no such table"; anything else is a real failure.
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(self.fail(&args, &output));
        }
        String::from_utf8(output.stdout)
            .map(Some)
            .map_err(|_| DataplaneError::Output {
                command: self.command_line(&args),
            })
    }

    fn remove(&self) -> Result<(), DataplaneError> {
        self.apply(&delete_script())
    }

    fn read_ruleset(&self) -> Result<Option<String>, DataplaneError> {
        let args = ["-j", "list", "ruleset"];
        let output = self.run(&args, None)?;
        if !output.status.success() {
            return Err(self.fail(&args, &output));
        }
        String::from_utf8(output.stdout)
            .map(Some)
            .map_err(|_| DataplaneError::Output {
                command: self.command_line(&args),
            })
    }
}
