//! `GET /v1/skus`: every SKU the engine can answer for (loaded ones from Redis, retired
//! ones from the ledger), in name order, paged by a cursor and filtered by status.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::ApiQuery;
use super::skus::{SkuStatus, SkuView};
use super::{ApiError, AppState, Problem};
use crate::api::skus::current_view;
use crate::ids::Sku;
use crate::ledger::LedgerRepo;

/// SKUs in a page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 50;
/// The most SKUs in a page.
pub const MAX_PAGE: usize = 200;

/// The list's query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only SKUs with this status.
    #[param(value_type = Option<SkuStatus>)]
    pub status: Option<String>,
    /// SKUs per page: 1 to 200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    /// The cursor: the `next` of the page before (SKUs after this one, in name order).
    #[param(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub after: Option<String>,
}

/// A page of SKUs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SkuPage {
    /// The SKUs, in name order.
    pub skus: Vec<SkuView>,
    /// The cursor of the next page (pass it as `after`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// What the query asks for, checked.
struct Wanted {
    status: Option<SkuStatus>,
    limit: usize,
    after: Option<Sku>,
}

fn invalid(code: &'static str, detail: String) -> ApiError {
    ApiError::Invalid { code, detail }
}

impl TryFrom<ListQuery> for Wanted {
    type Error = ApiError;

    fn try_from(query: ListQuery) -> Result<Self, ApiError> {
        let status = query
            .status
            .map(|text| {
                serde_json::from_value::<SkuStatus>(serde_json::Value::String(text.clone()))
                    .map_err(|_| {
                        invalid(
                            "invalid_status",
                            format!(
                                "status {text:?} is none of scheduled, live, sold_out, ended, \
                                 settled, retiring, retired"
                            ),
                        )
                    })
            })
            .transpose()?;
        let limit = match query.limit {
            None => DEFAULT_PAGE,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "invalid_limit",
                        format!("limit must be a whole number from 1 to {MAX_PAGE}"),
                    )
                })?,
        };
        let after = query.after.map(Sku::new).transpose()?;
        Ok(Self {
            status,
            limit,
            after,
        })
    }
}

/// Lists SKUs: loaded ones (from Redis) and retired ones (from the ledger), in name order,
/// `limit` at a time; `next` is the cursor of the page after. With `status`, only SKUs
/// that have it when the page is read (a SKU's status moves on with time: a page read
/// later may list it under another).
#[utoipa::path(
    get,
    path = "/v1/skus",
    tag = "skus",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of SKUs", body = SkuPage),
        (status = 400, description = "invalid_query: a parameter this route does not take", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_status, invalid_limit, invalid_sku (the cursor)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_skus(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<SkuPage>, ApiError> {
    let wanted = Wanted::try_from(query)?;
    let _permit = state.call_permit()?;
    Ok(Json(page(&state, &wanted).await?))
}

/// The first page of every SKU, whatever its status (the sale page's list).
pub(super) async fn first_page(state: &AppState) -> Result<SkuPage, ApiError> {
    let wanted = Wanted {
        status: None,
        limit: MAX_PAGE,
        after: None,
    };
    page(state, &wanted).await
}

/// The page `wanted` asks for.
async fn page(state: &AppState, wanted: &Wanted) -> Result<SkuPage, ApiError> {
    let mut names: BTreeSet<Sku> = state.store.skus().await?.into_iter().collect();
    if let Some(ledger) = state.ledger.get() {
        // The ledger being down leaves the retired SKUs out, not the list.
        match ledger.retired_skus().await {
            Ok(retired) => names.extend(retired.into_iter().filter_map(|s| Sku::new(s).ok())),
            Err(error) => tracing::warn!(%error, "ledger unavailable: retired SKUs not listed"),
        }
    }
    let mut skus = Vec::new();
    let mut next = None;
    let after = wanted.after.as_ref();
    for sku in names.iter().filter(|sku| after.is_none_or(|a| *sku > a)) {
        if skus.len() == wanted.limit {
            next = skus.last().map(|view: &SkuView| view.sku.clone());
            break;
        }
        let view = match current_view(state, sku).await {
            Ok(view) => view,
            // Retired or replaced between the listing and its read.
            Err(ApiError::Store(crate::store::StoreError::UnknownSku)) => continue,
            Err(error) => return Err(error),
        };
        if wanted.status.is_none_or(|status| view.status == status) {
            skus.push(view);
        }
    }
    Ok(SkuPage { skus, next })
}
