//! The HTTP API under `/api/v1`: one module per group of resources; the OpenAPI document is
//! generated from the handlers' annotations.

pub mod accounts;
pub mod feed;
pub mod groups;
pub mod instances;

use std::net::IpAddr;

use axum::Json;
use deskport_store::{Actor, User};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn actor(user: &User, addr: IpAddr) -> Actor {
    Actor {
        name: user.name.clone(),
        source: Some(addr.to_string()),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "deskport", description = "Security groups, instances and Remote Desktop settings. Resource and field names follow OpenStack Neutron."),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API router (to be nested under `/api/v1`) and its OpenAPI document.
pub fn router() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(accounts::create_token, accounts::list_tokens))
        .routes(routes!(accounts::delete_token))
        .routes(routes!(accounts::list_projects, accounts::create_project))
        .routes(routes!(accounts::get_project, accounts::delete_project))
        .routes(routes!(accounts::set_member, accounts::remove_member))
        .routes(routes!(accounts::list_users, accounts::create_user))
        .routes(routes!(accounts::get_user, accounts::delete_user))
        .routes(routes!(groups::list_groups, groups::create_group))
        .routes(routes!(groups::get_group, groups::delete_group))
        .routes(routes!(groups::list_rules, groups::create_rule))
        .routes(routes!(groups::get_rule, groups::delete_rule))
        .routes(routes!(groups::list_templates))
        .routes(routes!(
            instances::list_instances,
            instances::create_instance
        ))
        .routes(routes!(instances::get_instance, instances::delete_instance))
        .routes(routes!(instances::set_remote_desktop))
        .routes(routes!(instances::attach_group))
        .routes(routes!(instances::detach_group))
        .routes(routes!(feed::list_audit))
        .routes(routes!(feed::agent_policy))
        .routes(routes!(feed::agent_report))
        .split_for_parts();
    // The paths are served under /api/v1.
    api.servers = Some(vec![utoipa::openapi::Server::new("/api/v1")]);
    let document = api.clone();
    let router = router.route(
        "/openapi.json",
        axum::routing::get(move || {
            let doc = document.clone();
            async move { Json(doc) }
        }),
    );
    (router, api)
}
