//! How the CLI reaches the controller: `--controller https://IP:PORT --cert --key --ca`,
//! from flags, env vars (`PORTCULLIS_CONTROLLER`, `PORTCULLIS_CERT`, `PORTCULLIS_KEY`,
//! `PORTCULLIS_CA`) or the config file `~/.config/portcullis/cli.toml`
//! (`controller = "..."`, `cert = "..."`, `key = "..."`, `ca = "..."`). A controller
//! certificate revoked in the CA-signed `revoked.txt` + `revoked.sig` next to the CA file
//! (if they are there) is refused; an expired one fails the WebPKI check.

use anyhow::{Context as _, bail};
use portcullis_proto::v1::admin_client::AdminClient;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// Controller address, e.g. https://10.77.0.1:7443
    #[arg(long, global = true, env = "PORTCULLIS_CONTROLLER")]
    pub controller: Option<String>,
    /// Admin certificate (PEM), from `portcullis ca issue admin NAME`
    #[arg(long, global = true, env = "PORTCULLIS_CERT")]
    pub cert: Option<PathBuf>,
    /// Private key of the admin certificate (PEM)
    #[arg(long, global = true, env = "PORTCULLIS_KEY")]
    pub key: Option<PathBuf>,
    /// CA certificate that signed the controller's certificate (PEM)
    #[arg(long, global = true, env = "PORTCULLIS_CA")]
    pub ca: Option<PathBuf>,
    /// CLI config file (TOML with controller/cert/key/ca)
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_CLI_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    controller: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
}

fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("portcullis").join("cli.toml"))
}

/// Fully resolved connection settings.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub controller: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl ConnectArgs {
    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        let (path, explicit) = match &self.config {
            Some(p) => (Some(p.clone()), true),
            None => (default_config_path(), false),
        };
        let file = match path {
            Some(p) if explicit || p.exists() => {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading CLI config {}", p.display()))?;
                let cfg: FileConfig = toml::from_str(&text)
                    .with_context(|| format!("parsing CLI config {}", p.display()))?;
                // Relative paths in the file are relative to the file.
                let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
                let rel = |x: Option<PathBuf>| x.map(|x| dir.join(x));
                FileConfig {
                    controller: cfg.controller,
                    cert: rel(cfg.cert),
                    key: rel(cfg.key),
                    ca: rel(cfg.ca),
                }
            }
            _ => FileConfig::default(),
        };
        let pick = |flag: &Option<PathBuf>, file: Option<PathBuf>, name: &str| {
            flag.clone().or(file).with_context(|| {
                format!(
                    "no --{name} given (flag, PORTCULLIS_{} or cli.toml)",
                    name.to_uppercase()
                )
            })
        };
        let controller = self.controller.clone().or(file.controller).context(
            "no --controller given (flag, PORTCULLIS_CONTROLLER or cli.toml), e.g. https://10.77.0.1:7443",
        )?;
        if !controller.starts_with("https://") {
            bail!("--controller must be an https:// URL, got {controller:?}");
        }
        Ok(Resolved {
            controller,
            cert: pick(&self.cert, file.cert, "cert")?,
            key: pick(&self.key, file.key, "key")?,
            ca: pick(&self.ca, file.ca, "ca")?,
        })
    }

    /// Connect an Admin client (mutual TLS). Configuration problems are [`UsageError`]s
    /// (exit 2), network ones [`Unreachable`] (exit 4).
    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        let r = self.resolve().map_err(|e| UsageError(format!("{e:#}")))?;
        // Our TLS (portcullis-trust): WebPKI against the CA bundle, then the controller
        // certificate's serial against the CA-signed revoked.txt + revoked.sig beside it.
        let roots = portcullis_trust::list::read_roots(&r.ca)
            .map_err(|e| UsageError(format!("TLS material: {e}")))?;
        let ca_dir = r.ca.parent().unwrap_or(Path::new("."));
        let revoked = portcullis_trust::Revocations::from_pki_files(ca_dir, roots)
            .map_err(|e| UsageError(format!("revocation list: {e}")))?;
        let tls = portcullis_trust::client_config(&r.ca, &r.cert, &r.key, Arc::new(revoked))
            .map_err(|e| UsageError(format!("TLS material: {e}")))?;
        let (endpoint, target) =
            portcullis_trust::endpoint(&r.controller).map_err(|e| UsageError(e.to_string()))?;
        let endpoint = endpoint.connect_timeout(Duration::from_secs(5));
        let channel = portcullis_trust::connect(&endpoint, &target, tls)
            .await
            .map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                Unreachable(format!(
                    "cannot reach the controller at {}: {msg}",
                    r.controller
                ))
            })?;
        Ok(AdminClient::new(channel)
            .max_decoding_message_size(crate::server::limits::ADMIN_MAX_ENCODE)
            .max_encoding_message_size(crate::server::limits::ADMIN_MAX_DECODE))
    }
}

/// Bad CLI configuration (missing flags, unreadable certificate files): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The controller could not be reached: exit 4.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// A gRPC error as one line for a person, with the exit code it maps to.
pub fn status_exit(s: &tonic::Status) -> i32 {
    use tonic::Code;
    match s.code() {
        Code::InvalidArgument | Code::FailedPrecondition => super::exit::INVALID,
        _ => super::exit::UNREACHABLE,
    }
}
