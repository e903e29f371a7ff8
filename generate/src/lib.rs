//! The hidden `generate` subcommand of `portcullis` and `portcullis-agent` (used by
//! `deploy/package.sh`): shell completions and man pages generated from the binary's own
//! CLI definition, so they never disagree with `--help`.

use anyhow::Context as _;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Subcommand)]
pub enum GenerateCommand {
    /// Print the completion script for SHELL on stdout
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write one man page per command (`<binary>.1`, `<binary>-<command>.1`, ...) into DIR
    Man { dir: PathBuf },
}

/// Run a `generate` subcommand against the binary's full command definition.
pub fn run(cmd: GenerateCommand, mut app: clap::Command) -> anyhow::Result<()> {
    match cmd {
        GenerateCommand::Completions { shell } => {
            use std::io::Write as _;
            let name = app.get_name().to_string();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut app, name, &mut script);
            std::io::stdout()
                .write_all(&script)
                .context("writing the completion script to stdout")
        }
        GenerateCommand::Man { dir } => man_pages(app, &dir),
    }
}

/// Man pages of `app` and every visible subcommand, recursively, into `dir` (hidden
/// subcommands such as `generate` itself get none).
pub fn man_pages(app: clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(app, dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))
}
