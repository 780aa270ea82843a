//! `POST /rabbitmq/auth/{user,vhost,resource,topic}`: RabbitMQ's HTTP auth backend
//! (`rabbitmq_auth_backend_http`) asking locusd's policy (`mqtt::external_auth`), so devices
//! connected to a RabbitMQ cluster have exactly the rights they have on the embedded broker.
//!
//! Off unless `[http] rabbitmq_auth_backend = true` (then 404). Open routes: RabbitMQ sends no
//! bearer token; what they tell is whether a token is valid and what it allows, which a
//! client learns by connecting anyway. Answers are the bare words `allow` and `deny`, with no
//! newline (RabbitMQ reads a trailing newline as part of the answer).

use super::{ApiError, ApiState};
use crate::mqtt::external_auth::{ResourceForm, TopicForm, UserForm, VhostForm};
use axum::extract::{Form, State};

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allow"
    } else {
        "deny"
    }
}

fn external(state: &ApiState) -> Result<&crate::mqtt::external_auth::ExternalAuth, ApiError> {
    state.external_auth.as_deref().ok_or_else(|| {
        ApiError::not_found(
            "the RabbitMQ auth backend is off: set [http] rabbitmq_auth_backend = true",
        )
    })
}

pub(super) async fn user(
    State(state): State<ApiState>,
    Form(form): Form<UserForm>,
) -> Result<&'static str, ApiError> {
    Ok(verdict(external(&state)?.user(&form)))
}

pub(super) async fn vhost(
    State(state): State<ApiState>,
    Form(form): Form<VhostForm>,
) -> Result<&'static str, ApiError> {
    Ok(verdict(external(&state)?.vhost(&form)))
}

pub(super) async fn resource(
    State(state): State<ApiState>,
    Form(form): Form<ResourceForm>,
) -> Result<&'static str, ApiError> {
    Ok(verdict(external(&state)?.resource(&form)))
}

pub(super) async fn topic(
    State(state): State<ApiState>,
    Form(form): Form<TopicForm>,
) -> Result<&'static str, ApiError> {
    Ok(verdict(external(&state)?.topic(&form)))
}
