//! The `Session` service: one bidirectional stream per agent.
//!
//! Authorization: the client certificate must carry `portcullis://agent/<host>`, not be
//! revoked, and the `Hello` must name that same host. Then the host is registered, its
//! desired revision (if it differs from what it runs) is sent, and reports are recorded.

use super::Shared;
use super::limits::{Kind, SessionBuckets, SessionRates};
use super::wire::internal;
use crate::identity::Role;
use crate::store;
use portcullis_policy::Facts;
use portcullis_proto::{ACCEPTED_PROTOCOL_VERSIONS, v1};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// How long an agent has to send `Hello` after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Outbound messages buffered per agent.
const OUTBOUND_DEPTH: usize = 16;

#[derive(Debug, Clone)]
pub struct SessionService {
    pub(crate) shared: Arc<Shared>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<v1::ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl v1::session_server::Session for SessionService {
    type OpenStream = OutStream;

    async fn open(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::OpenStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let m = &self.shared.metrics;
        let identity = self
            .shared
            .authenticate(&request)
            .inspect_err(|_| m.session_closed("refused_certificate"))?;
        self.shared.rollouts.seen_local_addr(request.local_addr());
        let Role::Agent(cert_host) = identity.role else {
            tracing::warn!(%peer, role = ?identity.role, "session refused: not an agent certificate");
            m.session_closed("refused_not_agent");
            return Err(Status::permission_denied(
                "only agent certificates may open a session",
            ));
        };
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.next()).await {
            Ok(Some(Ok(v1::AgentMessage {
                msg: Some(v1::agent_message::Msg::Hello(h)),
            }))) => h,
            Ok(Some(Err(e))) => {
                m.session_closed("stream_error");
                return Err(e);
            }
            Ok(_) => {
                m.session_closed("refused_no_hello");
                return Err(Status::invalid_argument("the first message must be Hello"));
            }
            Err(_) => {
                m.session_closed("hello_timeout");
                return Err(Status::deadline_exceeded("no Hello within 10 s"));
            }
        };
        if !ACCEPTED_PROTOCOL_VERSIONS.contains(&hello.protocol_version) {
            tracing::warn!(host = %cert_host, version = hello.protocol_version, "session refused: protocol version");
            m.session_closed("refused_protocol_version");
            return Err(Status::failed_precondition(format!(
                "protocol version {} is not supported by this controller (accepted: {:?}); \
                 upgrade the agent",
                hello.protocol_version, ACCEPTED_PROTOCOL_VERSIONS
            )));
        }
        if hello.host != cert_host {
            tracing::warn!(cert_host = %cert_host, hello_host = %hello.host, %peer,
                "session refused: Hello names another host than the certificate");
            m.session_closed("refused_host_mismatch");
            return Err(Status::permission_denied(format!(
                "certificate is for host {cert_host:?}, Hello names {:?}",
                hello.host
            )));
        }
        let facts = hello
            .facts
            .as_ref()
            .map(Facts::try_from)
            .transpose()?
            .unwrap_or_default();
        let host = cert_host;
        let facts_json = serde_json::to_string(&facts).unwrap_or_default();
        {
            let (h, v, f, rev, hash, p, me) = (
                host.clone(),
                hello.agent_version.clone(),
                facts_json,
                hello.applied_revision,
                hello.kernel_hash.clone(),
                peer.clone(),
                self.shared.controller_id.clone(),
            );
            self.shared
                .writer
                .write(move |c| store::host_connected(c, &h, &v, &f, rev, &hash, &p, &me))
                .await
                .map_err(internal)?;
        }

        let (tx, rx) = mpsc::channel(OUTBOUND_DEPTH);
        let end = tokio_util::sync::CancellationToken::new();
        let session = self.shared.registry.new_session_id();
        self.shared.registry.register(
            &host,
            super::registry::AgentHandle {
                session,
                tx: tx.clone(),
                facts: facts.clone(),
                agent_version: hello.agent_version.clone(),
                peer: peer.clone(),
                end: end.clone(),
            },
        );
        self.shared
            .registry
            .set_conditions(&host, &hello.conditions);
        self.shared.lists.connected(&host, &hello.capabilities);
        m.sessions_opened.inc();
        tracing::info!(%host, %peer, agent_version = %hello.agent_version,
            applied_revision = hello.applied_revision, conditions = ?hello.conditions,
            "agent connected");

        // The signed revocation list first: the agent checks the next controller with it.
        if let Some(msg) = self.shared.signed_revocations.message() {
            let _ = tx.send(Ok(msg)).await;
        }
        // Mid-rollout hosts are driven by the rollout (confirm or revert), not by reconnects.
        let held = self.shared.rollouts.holds(&host);
        if let Some(desired) = self.shared.desired_message(&host, &facts).await?
            && !held
        {
            let current = hello.applied_revision == desired.revision
                && !desired.expected_hash.is_empty()
                && hello.kernel_hash == desired.expected_hash;
            // A revision another controller's rollout is staging on this host goes out
            // only with its confirm deadline, from that rollout.
            if !current
                && !super::rollout::relay::staged(&self.shared, &host, desired.revision).await
            {
                let _ = tx
                    .send(Ok(v1::ControllerMessage {
                        msg: Some(v1::controller_message::Msg::Desired(desired)),
                    }))
                    .await;
            }
        }

        let shared = self.shared.clone();
        let replaced = end.clone();
        tokio::spawn(async move {
            // A replaced session stops reading at once: it must not write for the host.
            let reason = tokio::select! {
                r = read_reports(&shared, &host, &mut inbound, &tx) => r,
                () = replaced.cancelled() => "replaced",
            };
            let last = shared.registry.unregister(&host, session);
            shared.metrics.session_closed(reason);
            let (h, me) = (host.clone(), shared.controller_id.clone());
            // A newer session of the host here (a reconnect that overtook this end)
            // keeps the store saying it is connected here.
            if last
                && let Err(e) = shared
                    .writer
                    .write(move |c| store::host_disconnected(c, &h, &me))
                    .await
            {
                tracing::warn!(%host, error = %format!("{e:#}"), "recording the session's end");
            }
            tracing::info!(%host, reason, "agent disconnected");
        });
        let parts = hello
            .capabilities
            .iter()
            .any(|c| c == portcullis_proto::CAPABILITY_LIST_PARTS);
        let out = super::registry::outbound_stream(rx, end, parts);
        Ok(Response::new(Box::pin(out)))
    }
}

/// Record the session's reports until it ends; returns why it ended (a metrics label).
async fn read_reports(
    shared: &Shared,
    host: &str,
    inbound: &mut Streaming<v1::AgentMessage>,
    tx: &super::registry::Outbound,
) -> &'static str {
    // Rule counters last written for this session: (revision, counters); only changes
    // are written.
    let mut hits_seen: Option<(u64, Vec<store::hits::Hit>)> = None;
    let mut buckets = SessionBuckets::new(&SessionRates::default(), std::time::Instant::now());
    loop {
        let msg = match inbound.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(%host, error = %e, "session stream error");
                return "stream_error";
            }
            None => return "closed_by_agent",
        };
        if let Err(why) = buckets.take(rate_kind(&msg), std::time::Instant::now()) {
            tracing::warn!(%host, reason = %why, "agent over its message rate; ending the session");
            let end = tx.send(Err(Status::resource_exhausted(why)));
            let _ = tokio::time::timeout(Duration::from_secs(1), end).await;
            return "rate_limited";
        }
        let result = match msg.msg {
            Some(v1::agent_message::Msg::Applied(a))
                if !shared.asked.answered(host, a.request_id, a.revision) =>
            {
                // Not an answer to a Desired this host was sent: ignored (and counted).
                shared
                    .unmatched
                    .count(super::answers::Kind::Applied, host, a.request_id);
                Ok(())
            }
            Some(v1::agent_message::Msg::Applied(a))
                if let Some(full) = shared.lists.answered(host, &a) =>
            {
                // A list delta against a base the agent does not hold: the same Desired
                // again, every list in full (same request id; its answer is the real one).
                tracing::info!(%host, revision = a.revision, "agent needs the full address lists; sending them");
                shared.asked.ask_again(host, full.request_id, full.revision);
                let msg = v1::ControllerMessage {
                    msg: Some(v1::controller_message::Msg::Desired(full)),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return "closed";
                }
                Ok(())
            }
            Some(v1::agent_message::Msg::Applied(mut a)) => {
                // Stored, shown by `status` and held in the host-event ring: bounded.
                truncate_utf8(&mut a.error, MAX_REPORTED_ERROR);
                let r = shared
                    .writer
                    .report(store::HostReport {
                        host: host.to_string(),
                        revision: a.revision,
                        hash: a.hash.clone(),
                        error: (!a.ok).then(|| a.error.clone()),
                    })
                    .await;
                shared.metrics.applied(a.ok, a.duration_us);
                if a.ok {
                    tracing::info!(%host, revision = a.revision, hash = %a.hash, duration_us = a.duration_us, "applied");
                } else {
                    tracing::warn!(%host, revision = a.revision, error = %a.error, "apply failed");
                }
                shared.registry.applied(host, a);
                r
            }
            Some(v1::agent_message::Msg::Heartbeat(hb)) => {
                shared.registry.set_conditions(host, &hb.conditions);
                let h = host.to_string();
                // Our table has a dozen rules: anything beyond these bounds is not ours.
                let hits: Vec<store::hits::Hit> = hb
                    .rule_hits
                    .iter()
                    .filter(|r| r.chain.len() <= 64)
                    .take(256)
                    .map(|r| store::hits::Hit {
                        chain: r.chain.clone(),
                        index: r.index,
                        packets: r.packets,
                        bytes: r.bytes,
                    })
                    .collect();
                let purge = hits_seen
                    .as_ref()
                    .is_none_or(|(r, _)| *r != hb.applied_revision);
                let write_hits = (purge || hits_seen.as_ref().map(|(_, v)| v) != Some(&hits))
                    .then(|| hits.clone());
                hits_seen = Some((hb.applied_revision, hits));
                let reported = shared.writer.report(store::HostReport {
                    host: h.clone(),
                    revision: hb.applied_revision,
                    hash: hb.kernel_hash.clone(),
                    error: None,
                });
                let rest = shared.writer.write(move |c| {
                    if let Some(hits) = &write_hits {
                        store::hits::record(
                            c,
                            &h,
                            hb.applied_revision,
                            hits,
                            purge,
                            store::now_ms(),
                        )?;
                    }
                    store::drift::verified(c, &h, hb.verified_unix_ms)
                });
                let (a, b) = tokio::join!(reported, rest);
                a.and(b)
            }
            Some(v1::agent_message::Msg::Drift(report)) => {
                super::drift::on_report(shared, host, report).await
            }
            Some(v1::agent_message::Msg::Denials(batch)) => {
                super::logs::on_batch(shared, host, batch, tx).await
            }
            Some(v1::agent_message::Msg::Reverted(r)) => {
                super::rollout::on_reverted(shared, host, r).await
            }
            Some(v1::agent_message::Msg::Hello(_)) => {
                tracing::warn!(%host, "duplicate Hello ignored");
                Ok(())
            }
            None => Ok(()),
        };
        if let Err(e) = result {
            tracing::error!(%host, error = %e, "recording agent report failed");
        }
    }
}

/// Bytes of an agent's `Applied.error` kept (an nft error is a few lines).
const MAX_REPORTED_ERROR: usize = 16 << 10;

/// Cut `s` to at most `max` bytes on a character boundary, marking the cut.
fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" [truncated]");
    }
}

/// The rate-limit bucket a message draws from (a stray `Hello` or an empty message counts
/// as a heartbeat: neither may be sent in a loop).
fn rate_kind(msg: &v1::AgentMessage) -> Kind {
    use v1::agent_message::Msg;
    match &msg.msg {
        Some(Msg::Denials(_)) => Kind::DenialBatch,
        Some(Msg::Drift(_)) => Kind::DriftReport,
        Some(Msg::Reverted(_)) => Kind::Reverted,
        Some(Msg::Applied(_)) => Kind::Applied,
        Some(Msg::Heartbeat(_) | Msg::Hello(_)) | None => Kind::Heartbeat,
    }
}
