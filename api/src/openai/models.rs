//! GET /v1/models and GET /v1/models/{id}. The id route is a catch-all so ids containing `/`
//! work both raw and percent-encoded (axum decodes `%2F`).

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;

use crate::error::ApiError;
use crate::AppState;

/// The OpenAI `Model` object.
#[derive(Debug, Clone, Serialize)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    /// Unix seconds at server start.
    pub created: u64,
    pub owned_by: &'static str,
}

/// `ListModelsResponse`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

fn model_object(state: &AppState, id: String) -> ModelObject {
    ModelObject {
        id,
        object: "model",
        created: state.created(),
        owned_by: "ai-sandbox",
    }
}

/// GET /v1/models: the one model we serve.
pub async fn list(State(state): State<AppState>) -> Result<Json<ModelList>, ApiError> {
    let b = state.backend()?;
    let id = state.served_id(b.as_ref());
    Ok(Json(ModelList {
        object: "list",
        data: vec![model_object(&state, id)],
    }))
}

/// GET /v1/models/{id}: our model under any accepted id (see `AppState::resolve_model`), else 404.
pub async fn retrieve(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    let b = state.backend()?;
    let id = id.strip_prefix('/').unwrap_or(&id);
    let served = state.resolve_model(b.as_ref(), Some(id))?;
    Ok(Json(model_object(&state, served)))
}
