//! The changes a user makes, whether through the API or the console: each checks the user's
//! role in the project of what it touches ([`require`]: reader < member < admin), then calls
//! the store, which validates and audits. Both front-ends call these, so they cannot disagree
//! on who may do what. Objects outside the user's view are "not found" (404), never
//! "forbidden", so their existence does not leak.

use std::net::{IpAddr, SocketAddr};

use axum::http::StatusCode;
use deskport_policy::{GroupId, Note, Quota, RuleId, RuleSpec};
use deskport_store::{
    Actor, ApiToken, GatewayToken, GroupRecord, Instance, NewInstance, Project, Role, RuleRecord,
    Store, User, GATEWAY_TOKEN_MAX_TTL, GATEWAY_TOKEN_MIN_TTL, GATEWAY_TOKEN_TTL,
};
use uuid::Uuid;

use crate::auth::{hash_password_async, new_token};
use crate::error::{ApiError, ApiResult};

/// The one role check: 404 if `user` is not a member of `project` at all (existence is not
/// leaked), 403 if its role there is below `role`.
pub fn require(user: &User, project: Uuid, role: Role) -> ApiResult<()> {
    match user.role_in(project) {
        None => Err(ApiError::not_found("project")),
        Some(r) if r >= role => Ok(()),
        Some(r) => Err(ApiError::forbidden(format!(
            "your role in this project is {}; this needs {}",
            r.as_str(),
            role.as_str()
        ))),
    }
}

/// Whether `user` has at least `role` in `project` (what a page offers to do).
pub fn allowed(user: &User, project: Uuid, role: Role) -> bool {
    require(user, project, role).is_ok()
}

/// A user's changes, from a client address, to the projects in its view.
#[derive(Debug)]
pub struct Ops<'a> {
    store: &'a Store,
    quota: Quota,
    user: &'a User,
    /// Every project of the user (the API), or the one the console shows.
    view: Vec<Uuid>,
    actor: Actor,
}

/// `IP` or `IP:PORT` (IPv6 with a port in brackets).
fn address(text: &str, field: &str, default_port: u16) -> ApiResult<(IpAddr, u16)> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip, default_port));
    }
    match text.parse::<SocketAddr>() {
        Ok(sa) if sa.port() != 0 => Ok((sa.ip(), sa.port())),
        _ => Err(ApiError::bad_request(
            "invalid_address",
            format!("{field} {text:?} is not an IP address or IP:PORT"),
        )
        .field(field)),
    }
}

/// What a new instance is given: names and addresses as typed.
#[derive(Debug, Clone, Copy)]
pub struct InstanceInput<'t> {
    pub name: &'t str,
    /// `IP` or `IP:PORT` (RDP on 3389 by default).
    pub public_address: &'t str,
    /// Where the gateway forwards to, `IP` or `IP:PORT`.
    pub internal_address: Option<&'t str>,
    /// Group names or ids; none: the project's `default` group.
    pub security_groups: &'t [String],
}

impl<'a> Ops<'a> {
    /// `user`'s changes from `addr`, seeing the projects in `view`.
    pub fn new(
        store: &'a Store,
        quota: Quota,
        user: &'a User,
        addr: IpAddr,
        view: Vec<Uuid>,
    ) -> Self {
        Self {
            store,
            quota,
            user,
            view,
            actor: Actor {
                name: user.name.clone(),
                source: Some(addr.to_string()),
            },
        }
    }

    /// The role check for this user.
    pub fn require(&self, project: Uuid, role: Role) -> ApiResult<()> {
        require(self.user, project, role)
    }

    fn require_admin(&self, what: &str) -> ApiResult<()> {
        if self.user.is_admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("only administrators {what}")))
        }
    }

    // ---- security groups and rules ----

    /// Creates an empty group (members).
    pub async fn create_group(
        &self,
        project: Uuid,
        name: &str,
        description: &str,
    ) -> ApiResult<GroupRecord> {
        self.require(project, Role::Member)?;
        Ok(self
            .store
            .create_group(&self.actor, project, name, description, self.quota)
            .await?)
    }

    /// Deletes a group (members) and returns what it was.
    pub async fn delete_group(&self, id: GroupId) -> ApiResult<GroupRecord> {
        let group = self.store.group(&self.view, id).await?;
        self.require(group.project_id, Role::Member)?;
        self.store.delete_group(&self.actor, id).await?;
        Ok(group)
    }

    /// Adds a rule to a group (members); the store validates it.
    pub async fn create_rule(
        &self,
        group: GroupId,
        spec: &RuleSpec,
    ) -> ApiResult<(RuleRecord, Vec<Note>)> {
        let record = self
            .store
            .group(&self.view, group)
            .await
            .map_err(|e| ApiError::from(e).field("security_group_id"))?;
        self.require(record.project_id, Role::Member)?;
        Ok(self
            .store
            .create_rule(&self.actor, group, spec, self.quota)
            .await?)
    }

    /// Deletes a rule (members) and returns what it was.
    pub async fn delete_rule(&self, id: RuleId) -> ApiResult<RuleRecord> {
        let rule = self.store.rule(&self.view, id).await?;
        self.require(rule.project_id, Role::Member)?;
        self.store.delete_rule(&self.actor, id).await?;
        Ok(rule)
    }

    // ---- instances ----

    /// Creates an instance (members) and its agent token, returned only this once.
    pub async fn create_instance(
        &self,
        project: Uuid,
        input: InstanceInput<'_>,
    ) -> ApiResult<(Instance, String)> {
        self.require(project, Role::Member)?;
        if !deskport_policy::valid_name(input.name) {
            return Err(ApiError::bad_request(
                "invalid_name",
                "an instance name is 1-255 characters, without control characters or surrounding spaces",
            )
            .field("name"));
        }
        let (public_address, public_rdp_port) =
            address(input.public_address, "public_address", 3389)?;
        let (internal_address, rdp_port) = match input.internal_address {
            Some(text) => {
                let (ip, port) = address(text, "internal_address", 3389)?;
                (Some(ip), port)
            }
            None => (None, 3389),
        };
        let all = self.store.list_groups(&[project]).await?;
        let mut groups = Vec::new();
        for text in input.security_groups {
            let found = all
                .iter()
                .find(|g| g.group.name == *text || g.group.id.to_string() == *text)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        "security_group_not_found",
                        format!("there is no security group {text:?}"),
                    )
                    .field("security_groups")
                })?;
            groups.push(found.group.id);
        }
        let (token, hash) = new_token("dpa_");
        let instance = self
            .store
            .create_instance(
                &self.actor,
                &NewInstance {
                    project_id: project,
                    name: input.name.to_owned(),
                    public_address,
                    public_rdp_port,
                    internal_address,
                    rdp_port,
                    groups,
                    agent_token_hash: hash,
                },
            )
            .await?;
        Ok((instance, token))
    }

    /// A visible instance that the user may change (members).
    async fn changeable_instance(&self, id: Uuid) -> ApiResult<Instance> {
        let instance = self.store.instance(&self.view, id).await?;
        self.require(instance.project_id, Role::Member)?;
        Ok(instance)
    }

    pub async fn delete_instance(&self, id: Uuid) -> ApiResult<()> {
        self.changeable_instance(id).await?;
        Ok(self.store.delete_instance(&self.actor, id).await?)
    }

    /// Switches Remote Desktop, NLA only and gateway access (members); `None` keeps a switch.
    pub async fn set_remote_desktop(
        &self,
        id: Uuid,
        enabled: Option<bool>,
        nla_only: Option<bool>,
        gateway: Option<bool>,
    ) -> ApiResult<Instance> {
        self.changeable_instance(id).await?;
        Ok(self
            .store
            .set_remote_desktop(&self.actor, id, enabled, nla_only, gateway)
            .await?)
    }

    // ---- RD Gateway tokens ----

    /// Mints an RD Gateway token for this user to reach a visible instance, for `ttl_seconds`
    /// (30 to 3600, 300 by default): the record and the secret, shown once. Any role will do,
    /// readers included: the gateway admits any member of the project, and a token only
    /// carries RDP to the instance's RDP service, whose own logon (the instance's accounts,
    /// NLA) still decides who gets a desktop — as a reader may read the public address and
    /// connect there when a rule lets it.
    pub async fn mint_rdp_token(
        &self,
        instance: Uuid,
        ttl_seconds: Option<u64>,
    ) -> ApiResult<(Instance, GatewayToken, String)> {
        let ttl = match ttl_seconds {
            None => GATEWAY_TOKEN_TTL,
            Some(secs) => std::time::Duration::from_secs(secs),
        };
        if !(GATEWAY_TOKEN_MIN_TTL..=GATEWAY_TOKEN_MAX_TTL).contains(&ttl) {
            return Err(ApiError::bad_request(
                "invalid_ttl",
                format!(
                    "ttl_seconds is {} to {}",
                    GATEWAY_TOKEN_MIN_TTL.as_secs(),
                    GATEWAY_TOKEN_MAX_TTL.as_secs()
                ),
            )
            .field("ttl_seconds"));
        }
        let found = self.store.instance(&self.view, instance).await?;
        self.require(found.project_id, Role::Reader)?;
        let (token, secret) = self
            .store
            .mint_gateway_token(&self.actor, self.user.id, instance, ttl)
            .await?;
        Ok((found, token, secret))
    }

    /// Whether this user may see and revoke every token of `project`'s instances (its
    /// admins and administrators), not only its own.
    fn sees_every_token(&self, project: Uuid) -> bool {
        self.user.is_admin || allowed(self.user, project, Role::Admin)
    }

    /// This user's RD Gateway tokens for a visible instance; everyone's for the project's
    /// admins. Oldest first, revoked and expired ones included.
    pub async fn rdp_tokens(&self, instance: Uuid) -> ApiResult<Vec<GatewayToken>> {
        let found = self.store.instance(&self.view, instance).await?;
        self.require(found.project_id, Role::Reader)?;
        let mut tokens = self.store.list_gateway_tokens(&self.view, instance).await?;
        if !self.sees_every_token(found.project_id) {
            tokens.retain(|t| t.user_id == self.user.id);
        }
        Ok(tokens)
    }

    /// Revokes an RD Gateway token: one's own, or any of the project's for its admins.
    /// Another user's token is "not found" to whoever may not list it.
    pub async fn revoke_rdp_token(&self, id: Uuid) -> ApiResult<GatewayToken> {
        let token = self.store.gateway_token(&self.view, id).await?;
        let instance = self.store.instance(&self.view, token.instance_id).await?;
        if token.user_id != self.user.id && !self.sees_every_token(instance.project_id) {
            return Err(ApiError::not_found("gateway token"));
        }
        Ok(self
            .store
            .revoke_gateway_token(&self.actor, &self.view, id)
            .await?)
    }

    /// Attaches a group of the instance's project, by name or id (members).
    pub async fn attach_group(&self, id: Uuid, group: &str) -> ApiResult<Instance> {
        let instance = self.changeable_instance(id).await?;
        let groups = self.store.list_groups(&[instance.project_id]).await?;
        let group = groups
            .iter()
            .find(|g| g.group.name == group || g.group.id.to_string() == group)
            .ok_or_else(|| ApiError::not_found("security group").field("security_group"))?;
        Ok(self
            .store
            .attach_group(&self.actor, id, group.group.id)
            .await?)
    }

    pub async fn detach_group(&self, id: Uuid, group: GroupId) -> ApiResult<Instance> {
        self.changeable_instance(id).await?;
        Ok(self.store.detach_group(&self.actor, id, group).await?)
    }

    // ---- projects, members, users, tokens ----

    /// Creates a project (administrators); the user becomes its admin.
    pub async fn create_project(&self, name: &str, description: &str) -> ApiResult<Project> {
        self.require_admin("create projects")?;
        if !deskport_policy::valid_name(name) {
            return Err(ApiError::bad_request(
                "invalid_name",
                "a project name is 1-255 characters, without control characters or surrounding spaces",
            )
            .field("name"));
        }
        Ok(self
            .store
            .create_project(&self.actor, name, description, self.user.id)
            .await?)
    }

    /// Deletes a project and everything in it (its admins).
    pub async fn delete_project(&self, id: Uuid) -> ApiResult<()> {
        self.require(id, Role::Admin)?;
        Ok(self.store.delete_project(&self.actor, id).await?)
    }

    /// Gives a user a role (`admin`, `member`, `reader`) in a project (its admins).
    pub async fn set_member(&self, project: Uuid, member: Uuid, role: &str) -> ApiResult<()> {
        self.require(project, Role::Admin)?;
        let role = Role::parse(role).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_role",
                format!("role {role:?} is not admin, member or reader"),
            )
            .field("role")
        })?;
        Ok(self
            .store
            .set_membership(&self.actor, project, member, role)
            .await?)
    }

    pub async fn remove_member(&self, project: Uuid, member: Uuid) -> ApiResult<()> {
        self.require(project, Role::Admin)?;
        Ok(self
            .store
            .remove_membership(&self.actor, project, member)
            .await?)
    }

    /// Creates a user (administrators).
    pub async fn create_user(
        &self,
        name: &str,
        password: String,
        is_admin: bool,
    ) -> ApiResult<User> {
        self.require_admin("create users")?;
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
        if !valid {
            return Err(ApiError::bad_request(
                "invalid_name",
                "a user name is 1-64 letters, digits or . _ - @",
            )
            .field("name"));
        }
        if password.chars().count() < 8 {
            return Err(ApiError::bad_request(
                "weak_password",
                "a password has at least 8 characters",
            )
            .field("password"));
        }
        let hash = hash_password_async(password).await?;
        Ok(self
            .store
            .create_user(&self.actor, name, &hash, is_admin)
            .await?)
    }

    pub async fn delete_user(&self, id: Uuid) -> ApiResult<()> {
        self.require_admin("delete users")?;
        Ok(self.store.delete_user(&self.actor, id).await?)
    }

    /// A new API token of the user (the secret, shown once, and its record).
    pub async fn create_token(&self, name: &str) -> ApiResult<(String, ApiToken)> {
        let (token, hash) = new_token("dpt_");
        let record = self
            .store
            .create_api_token(&self.actor, self.user.id, name, &hash)
            .await?;
        Ok((token, record))
    }

    /// Revokes one of the user's API tokens.
    pub async fn delete_token(&self, id: Uuid) -> ApiResult<()> {
        Ok(self
            .store
            .delete_api_token(&self.actor, self.user.id, id)
            .await?)
    }
}
