//! Executable files for tests (fake `nft` binaries, inventory scripts).

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// Writes `text` to `path` as an executable (mode 755), by a child process.
///
/// A write descriptor of the test process, even `O_CLOEXEC`, is inherited by any child
/// another test thread forks until that child execs; executing the file in that window
/// fails with ETXTBSY ("Text file busy"). Written by `sh`, the file is never open in
/// this process.
pub fn write_executable(path: &Path, text: &str) -> std::io::Result<()> {
    let mut child = Command::new("sh")
        .args(["-c", "cat > \"$0\" && chmod 755 \"$0\""])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin"))?;
    stdin.write_all(text.as_bytes())?;
    drop(stdin);
    let status = child.wait()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "writing {}: sh {status}",
            path.display()
        )))
    }
}
