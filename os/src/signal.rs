//! The process's shutdown signal (graceful stop of `serve` and `run`).

/// Completes on SIGTERM or SIGINT (logged once, at INFO). If the SIGTERM handler cannot be
/// installed only SIGINT stops the process.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[tokio::test]
    async fn sigterm_completes_it() {
        let stopped = tokio::spawn(super::shutdown_signal());
        // Let it install its handlers, then SIGTERM this test process.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(std::time::Duration::from_secs(5), stopped)
            .await
            .expect("shutdown_signal did not complete on SIGTERM")
            .unwrap();
    }
}
