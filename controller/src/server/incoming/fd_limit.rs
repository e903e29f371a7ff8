//! The connection cap against the process's file descriptor limit (RLIMIT_NOFILE).

/// Why the connection cap does not fit the process's file descriptor limit.
#[derive(Debug, thiserror::Error)]
pub enum FdLimitError {
    #[error("reading RLIMIT_NOFILE: {0}")]
    Read(nix::Error),
    #[error(
        "--max-connections {max} is above what the file descriptor limit allows: \
         RLIMIT_NOFILE hard limit {hard} minus {headroom} descriptors for the database, \
         logs and listeners leaves {usable}; lower --max-connections or raise the limit \
         (systemd: LimitNOFILE=)"
    )]
    TooHigh {
        max: usize,
        hard: u64,
        headroom: u64,
        usable: u64,
    },
}

/// Descriptors kept free besides connections (SQLite files, WAL, logs, listeners).
pub const FD_HEADROOM: u64 = 256;

/// Raise the soft RLIMIT_NOFILE to the hard limit and check `max_connections` fits under
/// it with [`FD_HEADROOM`] to spare. Returns the soft limit now in force.
pub fn check_fd_limit(max_connections: usize) -> Result<u64, FdLimitError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(FdLimitError::Read)?;
    let soft = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(error) => {
                tracing::warn!(%error, soft, hard, "cannot raise RLIMIT_NOFILE to the hard limit");
                soft
            }
        }
    } else {
        soft
    };
    let usable = soft.saturating_sub(FD_HEADROOM);
    if max_connections as u64 > usable {
        return Err(FdLimitError::TooHigh {
            max: max_connections,
            hard: soft,
            headroom: FD_HEADROOM,
            usable,
        });
    }
    Ok(soft)
}
