//! The HTTP API under `/api/v1`: one module per group of resources; the OpenAPI document is
//! generated from the handlers' annotations.

pub mod accounts;
pub mod feed;
pub mod groups;
pub mod instances;
pub mod rd_gateway;

use std::net::IpAddr;

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::ops::Ops;
use crate::state::AppState;

/// The caller's changes from `addr`, to every project it belongs to (403 for agent tokens).
fn ops<'a>(s: &'a AppState, caller: &'a Caller, addr: IpAddr) -> ApiResult<Ops<'a>> {
    let user = caller.user()?;
    Ok(s.ops(user, addr, user.project_ids()))
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

/// Documents the answers every operation can give besides its own: 401 without a valid token,
/// 403 for agent tokens and insufficient roles, 404 for ids you cannot see, 400 for bad query
/// parameters, and for operations with a body 400, 413 and 415.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |text: &str| {
            ResponseBuilder::new()
                .description(text)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.delete.as_mut(),
            ];
            for op in operations.into_iter().flatten() {
                let mut codes = vec![
                    ("400", "Invalid request"),
                    ("401", "No valid bearer token"),
                    ("403", "Not allowed for this token or role"),
                    ("404", "Not found (or not visible to you)"),
                ];
                if op.request_body.is_some() {
                    codes.push(("413", "Body too large"));
                    codes.push(("415", "Body is not JSON"));
                }
                for (code, text) in codes {
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| error(text).into());
                }
            }
        }
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
        .routes(routes!(
            instances::create_rdp_token,
            instances::list_rdp_tokens
        ))
        .routes(routes!(instances::revoke_rdp_token))
        .routes(routes!(instances::attach_group))
        .routes(routes!(instances::detach_group))
        .routes(routes!(feed::list_audit))
        .routes(routes!(feed::agent_policy))
        .routes(routes!(feed::agent_report))
        .routes(routes!(rd_gateway::open))
        .routes(routes!(rd_gateway::check))
        .routes(routes!(rd_gateway::event))
        .routes(routes!(rd_gateway::changes))
        .split_for_parts();
    // After the routes are in: the modifiers of `ApiDoc` run before.
    CommonResponses.modify(&mut api);
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
