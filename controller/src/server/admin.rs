//! The `Admin` service: operator calls, authorized by an admin certificate.
//!
//! Each call authorizes the caller and hands the request to the module that does the work:
//! `Apply` and `Rollback` to [`super::apply`] (its steps), `Drift` to [`super::drift`],
//! `Logs` to [`super::logs`], rollouts to [`super::rollout`].

use super::Shared;
use super::apply::Kind;
use crate::identity::Role;
use crate::store;
use portcullis_proto::v1;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
pub struct AdminService {
    pub(crate) shared: Arc<Shared>,
}

type ApplyStream = Pin<Box<dyn Stream<Item = Result<v1::ApplyEvent, Status>> + Send>>;

impl AdminService {
    fn admin<T>(&self, req: &Request<T>) -> Result<String, Status> {
        match self.shared.authenticate(req)?.role {
            Role::Admin(name) => Ok(name),
            other => {
                tracing::warn!(role = ?other, "Admin call refused: not an admin certificate");
                Err(Status::permission_denied(
                    "only admin certificates may call the Admin service",
                ))
            }
        }
    }
}

#[tonic::async_trait]
impl v1::admin_server::Admin for AdminService {
    type ApplyStream = ApplyStream;
    type RollbackStream = ApplyStream;
    type LogsStream = super::logs::LogsStream;

    async fn drift(
        &self,
        request: Request<v1::DriftRequest>,
    ) -> Result<Response<v1::DriftResponse>, Status> {
        self.admin(&request)?;
        super::drift::drift(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn logs(
        &self,
        request: Request<v1::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        self.admin(&request)?;
        super::logs::logs(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn logs_top(
        &self,
        request: Request<v1::LogsRequest>,
    ) -> Result<Response<v1::LogsTopResponse>, Status> {
        self.admin(&request)?;
        super::logs::top(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn rollback(
        &self,
        request: Request<v1::RollbackRequest>,
    ) -> Result<Response<Self::ApplyStream>, Status> {
        let author = self.admin(&request)?;
        let req =
            super::rollout::start::rollback_request(&self.shared, request.into_inner()).await?;
        super::apply::apply(&self.shared, &author, req, Kind::Rollback)
            .await
            .map(Response::new)
    }

    async fn rollout_abort(
        &self,
        request: Request<v1::RolloutAbortRequest>,
    ) -> Result<Response<v1::RolloutAbortResponse>, Status> {
        let author = self.admin(&request)?;
        super::rollout::start::abort(&self.shared, &author, request.get_ref().rollout_id)
            .await
            .map(Response::new)
    }

    async fn rollouts(
        &self,
        request: Request<v1::RolloutsRequest>,
    ) -> Result<Response<v1::RolloutsResponse>, Status> {
        self.admin(&request)?;
        super::rollout::list(&self.shared, request.into_inner())
            .await
            .map(Response::new)
            .map_err(super::wire::internal)
    }

    async fn apply(
        &self,
        request: Request<v1::ApplyRequest>,
    ) -> Result<Response<Self::ApplyStream>, Status> {
        let author = self.admin(&request)?;
        super::apply::apply(&self.shared, &author, request.into_inner(), Kind::Apply)
            .await
            .map(Response::new)
    }

    async fn status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        self.admin(&request)?;
        let hosts = self
            .shared
            .store
            .call(store::list_hosts)
            .await
            .map_err(super::wire::internal)?;
        let now = store::now_ms();
        let mut hosts = hosts
            .into_iter()
            .map(|h| v1::HostStatus {
                connected: self.shared.registry.is_connected(&h.name)
                    || self.shared.elsewhere(&h, now),
                conditions: self.shared.registry.conditions(&h.name),
                hash_match: !h.expected_hash.is_empty() && h.expected_hash == h.reported_hash,
                host: h.name,
                last_seen_unix_ms: h.last_seen_ms,
                desired_revision: h.desired_revision,
                applied_revision: h.applied_revision,
                expected_hash: h.expected_hash,
                reported_hash: h.reported_hash,
                agent_version: h.agent_version,
                last_error: h.last_error,
                peer: h.peer,
                ..Default::default()
            })
            .collect::<Vec<_>>();
        super::drift::attest(&self.shared, &mut hosts).await?;
        Ok(Response::new(v1::StatusResponse {
            hosts,
            counters: Some(self.shared.counters()),
        }))
    }

    async fn history(
        &self,
        request: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::HistoryResponse>, Status> {
        self.admin(&request)?;
        let limit = request.get_ref().limit;
        let revs = self
            .shared
            .store
            .call(move |c| store::list_revisions(c, limit))
            .await
            .map_err(super::wire::internal)?;
        Ok(Response::new(v1::HistoryResponse {
            revisions: revs
                .into_iter()
                .map(|r| v1::RevisionInfo {
                    revision: r.revision,
                    created_unix_ms: r.created_ms,
                    author: r.author,
                    site_name: r.site_name,
                    inventory_name: r.inventory_name,
                    limit: r.limit,
                    hosts: r.hosts,
                    applied: r.applied,
                })
                .collect(),
        }))
    }
}
