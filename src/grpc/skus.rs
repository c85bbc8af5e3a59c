//! `flashsale.v1.Skus`: load, read and restock a SKU; the writes by the admin token.

use std::time::Instant;

use tonic::{Request, Response, Status};

use super::convert::epoch_ms;
use super::{answer, authorization, proto};
use crate::api::skus::{self, SkuInput};
use crate::api::AppState;
use crate::store::Loaded;

/// The service, over the engine's shared state.
pub struct SkusService {
    pub(super) state: AppState,
}

const ROUTE_PUT: &str = "/flashsale.v1.Skus/Put";
const ROUTE_GET: &str = "/flashsale.v1.Skus/Get";
const ROUTE_RESTOCK: &str = "/flashsale.v1.Skus/Restock";

#[tonic::async_trait]
impl proto::skus_server::Skus for SkusService {
    async fn put(
        &self,
        request: Request<proto::PutSkuRequest>,
    ) -> Result<Response<proto::PutSkuResponse>, Status> {
        let started = Instant::now();
        let admin = self.state.admin(authorization(&request));
        let body = request.into_inner();
        let resource = format!("skus/{}", body.sku);
        let result = async {
            admin?;
            let input = SkuInput {
                stock: body.stock,
                per_user_limit: body.per_user_limit.map(u64::from),
                hold_seconds: body.hold_seconds,
                shards: body.shards.map(u64::from),
                starts_at_ms: epoch_ms("starts_at", body.starts_at)?,
                ends_at_ms: epoch_ms("ends_at", body.ends_at)?,
            };
            let (loaded, view) = skus::put_sku(&self.state, body.sku, input).await?;
            Ok(proto::PutSkuResponse {
                sku: Some(view.into()),
                created: matches!(loaded, Loaded::Created),
            })
        }
        .await;
        answer(&self.state, ROUTE_PUT, None, started, &resource, result)
    }

    async fn get(
        &self,
        request: Request<proto::GetSkuRequest>,
    ) -> Result<Response<proto::Sku>, Status> {
        let started = Instant::now();
        let sku = request.into_inner().sku;
        let resource = format!("skus/{sku}");
        let result = skus::get_sku(&self.state, sku).await.map(Into::into);
        answer(&self.state, ROUTE_GET, None, started, &resource, result)
    }

    async fn restock(
        &self,
        request: Request<proto::RestockRequest>,
    ) -> Result<Response<proto::Sku>, Status> {
        let started = Instant::now();
        let admin = self.state.admin(authorization(&request));
        let body = request.into_inner();
        let resource = format!("skus/{}", body.sku);
        let result = async {
            admin?;
            skus::restock(
                &self.state,
                body.sku,
                Some(body.quantity),
                body.operation_id,
            )
            .await
            .map(Into::into)
        }
        .await;
        answer(&self.state, ROUTE_RESTOCK, None, started, &resource, result)
    }
}
