//! The API commands: `login`, `sg`, `rule`, `instance`, `project`, `audit`, `template`. They
//! talk to the manager named in the `[cli]` section of the configuration (written by
//! `deskport login` and `deskport up`). Every listing takes `--json`, which prints the API's
//! own JSON.

use deskport_api::v1::*;
use deskport_api::{Client, ClientError};
use serde::Serialize;
use uuid::Uuid;

use crate::cli::UsageError;
use crate::config::cli::{CliSettings, ProfileTrust};
use crate::config::ConfigFile;
use crate::prompt::read_password;

fn refused(err: ClientError) -> anyhow::Error {
    anyhow::anyhow!("{err}")
}

fn client(settings: &CliSettings) -> anyhow::Result<Client> {
    let (Some(url), Some(token)) = (&settings.url, &settings.token) else {
        anyhow::bail!("not logged in to a manager: run 'deskport login URL' (or 'deskport up')");
    };
    let trust = crate::config::cli::server_trust(settings)?;
    Client::with_trust(url, Some(token.clone()), Some(&trust)).map_err(refused)
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row);
    }
}

fn notices(list: &[Notice]) {
    for n in list {
        let kind = if n.code == "open_to_internet" {
            "warning"
        } else {
            "note"
        };
        eprintln!("{kind}: {}", n.message);
    }
}

// ---- login ----

/// Log in to a manager: ask it for an API token and keep URL and token in the CLI config.
///
/// An https:// manager's certificate is checked against --manager-fingerprint or --ca-file
/// (kept in the config for the commands that follow), else by trust on first use: the first
/// certificate seen for HOST:PORT is remembered in the known-hosts file (the one `deskport
/// connect` uses) and a different one later is refused, like ssh.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The manager's URL, e.g. https://manager.example:8080.
    url: String,
    /// Trust the manager only with this certificate (SHA-256 fingerprint, `SHA256:ab:cd:…` as
    /// `deskport manager` prints it and the console shows it).
    #[arg(long, value_name = "SHA256:FP", conflicts_with = "ca_file")]
    manager_fingerprint: Option<String>,
    /// Trust the manager's certificate when this CA (PEM file) signed it for the URL's host.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// User name.
    #[arg(long, default_value = "admin")]
    user: String,
    /// Read the password from standard input (else it is asked for on the terminal).
    #[arg(long)]
    password_stdin: bool,
}

pub fn login(args: LoginArgs, file: &ConfigFile, settings: &CliSettings) -> anyhow::Result<()> {
    let url = args.url.trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(UsageError(format!("{url:?} is not an http:// or https:// URL")).into());
    }
    let profile = ProfileTrust {
        fingerprint: match &args.manager_fingerprint {
            Some(fp) => Some(
                deskport_api::parse_fingerprint(fp)
                    .map_err(|e| anyhow::anyhow!("--manager-fingerprint: {e}"))?,
            ),
            None => None,
        },
        ca_file: args.ca_file.clone(),
    };
    let trust = crate::config::cli::server_trust(&CliSettings {
        fingerprint: profile.fingerprint.clone(),
        ca_file: profile.ca_file.clone(),
        ..settings.clone()
    })?;
    let password = read_password(
        args.password_stdin,
        &format!("password for {} at {url}: ", args.user),
    )?;
    let host = std::process::Command::new("hostname")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let request = TokenRequest {
        username: args.user.clone(),
        password,
        name: Some(format!(
            "deskport CLI on {}",
            if host.is_empty() { "?" } else { &host }
        )),
    };
    let client = Client::with_trust(&url, None, Some(&trust)).map_err(refused)?;
    let response =
        crate::runtime::block_on_here(async { client.token(&request).await.map_err(refused) })?;
    if let (Some(fp), deskport_api::ServerTrust::KnownHosts(path)) =
        (client.remembered_fingerprint(), &trust)
    {
        println!(
            "first connection to this manager: its certificate SHA256:{fp} is now trusted              (remembered in {}; compare it with the one the manager printed at start)",
            path.display()
        );
    }
    crate::config::cli::write_profile(&file.path, &url, &response.token, &profile)?;
    println!(
        "logged in to {url} as {}; token saved in {}",
        args.user,
        file.path.display()
    );
    Ok(())
}

// ---- lookups by name ----

/// The project named `name` (or, without a name, `None`: the server's default).
async fn project_id(c: &Client, name: Option<&str>) -> anyhow::Result<Option<Uuid>> {
    let Some(name) = name else { return Ok(None) };
    let projects = c.projects().await.map_err(refused)?;
    projects
        .projects
        .iter()
        .find(|p| p.name == name || p.id.to_string() == name)
        .map(|p| Some(p.id))
        .ok_or_else(|| anyhow::anyhow!("there is no project {name:?} that you can see"))
}

async fn find_group(c: &Client, name: &str, project: Option<Uuid>) -> anyhow::Result<GroupView> {
    let groups = c.groups().await.map_err(refused)?;
    let matching: Vec<GroupView> = groups
        .security_groups
        .into_iter()
        .filter(|g| g.name == name || g.id.to_string() == name)
        .filter(|g| project.is_none_or(|p| g.project_id == p))
        .collect();
    let mut matching = matching.into_iter();
    match (matching.next(), matching.next()) {
        (None, _) => anyhow::bail!("there is no security group {name:?}"),
        (Some(g), None) => Ok(g),
        (Some(_), Some(_)) => {
            anyhow::bail!("several projects have a security group {name:?}: give --project")
        }
    }
}

async fn find_instance(
    c: &Client,
    name: &str,
    project: Option<Uuid>,
) -> anyhow::Result<InstanceView> {
    let list = c.instances().await.map_err(refused)?;
    let matching: Vec<InstanceView> = list
        .instances
        .into_iter()
        .filter(|i| i.name == name || i.id.to_string() == name)
        .filter(|i| project.is_none_or(|p| i.project_id == p))
        .collect();
    let mut matching = matching.into_iter();
    match (matching.next(), matching.next()) {
        (None, _) => anyhow::bail!("there is no instance {name:?}"),
        (Some(i), None) => Ok(i),
        (Some(_), Some(_)) => {
            anyhow::bail!("several projects have an instance {name:?}: give --project")
        }
    }
}

// ---- sg ----

/// Security groups.
#[derive(Debug, clap::Args)]
pub struct SgArgs {
    #[command(subcommand)]
    what: SgCommand,
    /// The project (name or id) when you belong to several.
    #[arg(long, global = true)]
    project: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum SgCommand {
    /// List security groups.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create a security group.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a security group (not `default`, not while attached or referenced).
    Delete { name: String },
}

pub fn sg(args: SgArgs, settings: &CliSettings) -> anyhow::Result<()> {
    let c = client(settings)?;
    crate::runtime::block_on_here(async {
        let project = project_id(&c, args.project.as_deref()).await?;
        match args.what {
            SgCommand::List { json } => {
                let mut list = c.groups().await.map_err(refused)?;
                list.security_groups
                    .retain(|g| project.is_none_or(|p| g.project_id == p));
                if json {
                    return print_json(&list);
                }
                table(
                    &["NAME", "RULES", "DESCRIPTION", "ID"],
                    list.security_groups
                        .iter()
                        .map(|g| {
                            vec![
                                g.name.clone(),
                                g.security_group_rules.len().to_string(),
                                g.description.clone(),
                                g.id.to_string(),
                            ]
                        })
                        .collect(),
                );
            }
            SgCommand::Create {
                name,
                description,
                json,
            } => {
                let created = c
                    .create_group(CreateGroup {
                        name,
                        description,
                        project_id: project,
                    })
                    .await
                    .map_err(refused)?;
                if json {
                    return print_json(&created);
                }
                println!(
                    "created security group {} ({})",
                    created.security_group.name, created.security_group.id
                );
            }
            SgCommand::Delete { name } => {
                let g = find_group(&c, &name, project).await?;
                c.delete_group(g.id).await.map_err(refused)?;
                println!("deleted security group {}", g.name);
            }
        }
        Ok(())
    })
}

// ---- rule ----

/// Security-group rules.
#[derive(Debug, clap::Args)]
pub struct RuleArgs {
    #[command(subcommand)]
    what: RuleCommand,
    /// The project (name or id) when you belong to several.
    #[arg(long, global = true)]
    project: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum RuleCommand {
    /// List the rules of a group.
    List {
        #[arg(long, value_name = "NAME")]
        group: String,
        #[arg(long)]
        json: bool,
    },
    /// Add a rule: a template (`--template rdp`) or a protocol and port range.
    Add(AddRule),
    /// Delete a rule by its id (live connections it allowed are cut).
    Delete { id: Uuid },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["template", "protocol"])))]
struct AddRule {
    /// The group to add the rule to.
    #[arg(long, value_name = "NAME")]
    group: String,
    /// A template: rdp, ssh, http, https, all_tcp, … (`deskport template list`).
    #[arg(long)]
    template: Option<String>,
    /// tcp, udp, icmp, icmpv6, any, or a number 0-255.
    #[arg(long)]
    protocol: Option<String>,
    /// A port or a range: 3389 or 3389-3390.
    #[arg(long, value_name = "PORT[-PORT]", value_parser = parse_ports)]
    port: Option<(u16, u16)>,
    /// ICMP type (with --protocol icmp).
    #[arg(long, value_name = "TYPE", conflicts_with = "port")]
    icmp_type: Option<u8>,
    /// ICMP code (with --icmp-type).
    #[arg(long, value_name = "CODE", requires = "icmp_type")]
    icmp_code: Option<u8>,
    /// ingress (default) or egress.
    #[arg(long, value_parser = ["ingress", "egress"])]
    direction: Option<String>,
    /// IPv4 or IPv6 (default: the CIDR's family, else IPv4).
    #[arg(long, value_parser = ["IPv4", "IPv6", "ipv4", "ipv6"])]
    ethertype: Option<String>,
    /// Who may connect: a CIDR such as 127.0.0.1/32 (default: everyone).
    #[arg(long, conflicts_with = "remote_group")]
    cidr: Option<String>,
    /// Who may connect: the members of this group.
    #[arg(long, value_name = "NAME")]
    remote_group: Option<String>,
    #[arg(long)]
    description: Option<String>,
    #[arg(long)]
    json: bool,
}

fn parse_ports(text: &str) -> Result<(u16, u16), String> {
    let port = |t: &str| {
        t.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| format!("{t:?} is not a port 1-65535"))
    };
    match text.split_once('-') {
        Some((a, b)) => Ok((port(a)?, port(b)?)),
        None => port(text).map(|p| (p, p)),
    }
}

fn rule_row(r: &RuleView, groups: &[GroupView]) -> Vec<String> {
    let ports = match (r.port_range_min, r.port_range_max) {
        (None, _) => "any".to_owned(),
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}-{b}"),
        (Some(a), None) => a.to_string(),
    };
    let remote = match (&r.remote_ip_prefix, r.remote_group_id) {
        (Some(p), _) => p.clone(),
        (None, Some(g)) => groups
            .iter()
            .find(|x| x.id == g)
            .map_or_else(|| g.to_string(), |x| format!("group {}", x.name)),
        (None, None) => "any".to_owned(),
    };
    vec![
        r.direction.clone(),
        r.ethertype.clone(),
        r.protocol.clone().unwrap_or_else(|| "any".to_owned()),
        ports,
        remote,
        r.description.clone(),
        r.id.to_string(),
    ]
}

const RULE_HEADER: [&str; 7] = [
    "DIRECTION",
    "ETHERTYPE",
    "PROTOCOL",
    "PORTS",
    "REMOTE",
    "DESCRIPTION",
    "ID",
];

pub fn rule(args: RuleArgs, settings: &CliSettings) -> anyhow::Result<()> {
    let c = client(settings)?;
    crate::runtime::block_on_here(async {
        let project = project_id(&c, args.project.as_deref()).await?;
        match args.what {
            RuleCommand::List { group, json } => {
                let g = find_group(&c, &group, project).await?;
                let list = c.rules(Some(g.id)).await.map_err(refused)?;
                if json {
                    return print_json(&list);
                }
                let groups = c.groups().await.map_err(refused)?.security_groups;
                table(
                    &RULE_HEADER,
                    list.security_group_rules
                        .iter()
                        .map(|r| rule_row(r, &groups))
                        .collect(),
                );
            }
            RuleCommand::Add(a) => {
                let g = find_group(&c, &a.group, project).await?;
                let remote_group_id = match &a.remote_group {
                    Some(name) => Some(
                        find_group(&c, name, Some(g.project_id))
                            .await?
                            .id
                            .to_string(),
                    ),
                    None => None,
                };
                let (min, max) = match (a.port, a.icmp_type) {
                    (Some((lo, hi)), _) => (Some(i64::from(lo)), Some(i64::from(hi))),
                    (None, Some(t)) => (Some(i64::from(t)), a.icmp_code.map(i64::from)),
                    (None, None) => (None, None),
                };
                let created = c
                    .create_rule(CreateRule {
                        security_group_id: g.id,
                        template: a.template,
                        direction: a.direction,
                        ethertype: a.ethertype,
                        protocol: a.protocol.map(ProtocolValue::Name),
                        port_range_min: min,
                        port_range_max: max,
                        remote_ip_prefix: a.cidr,
                        remote_group_id,
                        description: a.description,
                    })
                    .await
                    .map_err(refused)?;
                notices(&created.notices);
                if a.json {
                    return print_json(&created);
                }
                let groups = c.groups().await.map_err(refused)?.security_groups;
                println!("added to {}:", g.name);
                table(
                    &RULE_HEADER,
                    vec![rule_row(&created.security_group_rule, &groups)],
                );
            }
            RuleCommand::Delete { id } => {
                c.delete_rule(id).await.map_err(refused)?;
                println!("deleted rule {id}");
            }
        }
        Ok(())
    })
}

// ---- instance ----

/// Instances and their Remote Desktop settings.
#[derive(Debug, clap::Args)]
pub struct InstanceArgs {
    #[command(subcommand)]
    what: InstanceCommand,
    /// The project (name or id) when you belong to several.
    #[arg(long, global = true)]
    project: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum InstanceCommand {
    /// List instances.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show an instance: addresses, groups, Remote Desktop, certificate, connect commands.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Create an instance (in the `default` group unless --group is given).
    Create {
        name: String,
        /// The address clients connect to: IP, or IP:PORT for another RDP port than 3389.
        #[arg(long, value_name = "PUBLIC_IP")]
        address: String,
        /// Where the instance really listens: IP or IP:PORT (its RDP server's port).
        #[arg(long, value_name = "IP[:PORT]")]
        internal_address: Option<String>,
        /// A security group to attach (repeatable).
        #[arg(long = "group", value_name = "NAME")]
        groups: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete an instance.
    Delete { name: String },
    /// The Remote Desktop switches: allow remote connections, NLA only, and gateway access.
    #[command(group(clap::ArgGroup::new("switch").required(true).multiple(true).args(["enable", "disable", "nla_only", "no_nla_only", "gateway", "no_gateway"])))]
    Rdp {
        name: String,
        /// Allow remote connections to this computer.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Refuse remote connections.
        #[arg(long)]
        disable: bool,
        /// Allow connections only from computers running Remote Desktop with NLA.
        #[arg(long, conflicts_with = "no_nla_only")]
        nla_only: bool,
        /// Also allow clients without NLA (e.g. rdesktop).
        #[arg(long)]
        no_nla_only: bool,
        /// Gateway access: let the project's members connect through the manager's RD Gateway
        /// (on its HTTPS port) with a token from `instance rdp-token` (on by default).
        #[arg(long, conflicts_with = "no_gateway")]
        gateway: bool,
        /// Refuse connections through the RD Gateway (live ones are cut within a second).
        #[arg(long)]
        no_gateway: bool,
        #[arg(long)]
        json: bool,
    },
    /// Mint a short-lived RD Gateway token for yourself to reach the instance through the
    /// manager's HTTPS port; prints how to use it, then the token alone on the last line
    /// (`TOKEN=$(deskport instance rdp-token NAME | tail -1)`). It opens connections until it
    /// expires (one client run may open several); connections it opened live on until they
    /// end, the token is revoked, either switch goes off or you leave the project.
    /// With --revoke ID: revoke a token instead (yours, or any for a project admin).
    RdpToken {
        name: String,
        /// How long the token opens connections, in seconds (30 to 3600).
        #[arg(
            long,
            value_name = "SECONDS",
            default_value_t = 300,
            conflicts_with = "revoke"
        )]
        ttl: u64,
        /// Revoke the token with this id (from `instance rdp-tokens`).
        #[arg(long, value_name = "ID")]
        revoke: Option<Uuid>,
        #[arg(long, conflicts_with = "revoke")]
        json: bool,
    },
    /// List your RD Gateway tokens for an instance (a project admin: everyone's); never their
    /// secrets.
    RdpTokens {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Attach a security group.
    Attach { name: String, group: String },
    /// Detach a security group.
    Detach { name: String, group: String },
}

/// The RD Gateway's `HOST:PORT` for clients: the manager URL's host and port (443 for https,
/// 80 for http when the URL names none).
fn gateway_host(base: &str) -> String {
    let (default, rest) = match base.split_once("://") {
        Some(("http", rest)) => (80, rest),
        Some((_, rest)) => (443, rest),
        None => (443, base),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{default}")
    }
}

fn onoff(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn show_instance(i: &InstanceView) {
    let groups: Vec<&str> = i.security_groups.iter().map(|g| g.name.as_str()).collect();
    println!("name:              {}", i.name);
    println!("id:                {}", i.id);
    println!(
        "public address:    {} (RDP port {})",
        i.public_address, i.public_rdp_port
    );
    println!(
        "internal address:  {} (RDP port {})",
        i.internal_address.as_deref().unwrap_or("same as public"),
        i.rdp_port
    );
    println!("security groups:   {}", groups.join(", "));
    println!(
        "remote desktop:    {}",
        if i.remote_desktop.enabled {
            "enabled"
        } else {
            "disabled"
        }
    );
    println!("NLA only:          {}", onoff(i.remote_desktop.nla_only));
    println!("gateway access:    {}", onoff(i.remote_desktop.gateway));
    println!(
        "certificate:       {}",
        i.cert_fingerprint
            .as_deref()
            .map_or("not reported yet".to_owned(), |f| format!("SHA256 {f}"))
    );
    println!("connect:           {}", i.connect.rdesktop);
    println!("                   {}", i.connect.xfreerdp);
    println!("                   {}", i.connect.deskport);
}

pub fn instance(args: InstanceArgs, settings: &CliSettings) -> anyhow::Result<()> {
    let c = client(settings)?;
    crate::runtime::block_on_here(async {
        let project = project_id(&c, args.project.as_deref()).await?;
        match args.what {
            InstanceCommand::List { json } => {
                let mut list = c.instances().await.map_err(refused)?;
                list.instances
                    .retain(|i| project.is_none_or(|p| i.project_id == p));
                if json {
                    return print_json(&list);
                }
                table(
                    &[
                        "NAME",
                        "PUBLIC",
                        "INTERNAL",
                        "GROUPS",
                        "REMOTE DESKTOP",
                        "NLA ONLY",
                    ],
                    list.instances
                        .iter()
                        .map(|i| {
                            vec![
                                format!("{}:{}", i.public_address, i.public_rdp_port),
                                format!(
                                    "{}:{}",
                                    i.internal_address.as_deref().unwrap_or(&i.public_address),
                                    i.rdp_port
                                ),
                                i.security_groups
                                    .iter()
                                    .map(|g| g.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(","),
                                if i.remote_desktop.enabled {
                                    "enabled"
                                } else {
                                    "disabled"
                                }
                                .to_owned(),
                                onoff(i.remote_desktop.nla_only).to_owned(),
                            ]
                        })
                        .zip(&list.instances)
                        .map(|(mut row, i)| {
                            row.insert(0, i.name.clone());
                            row
                        })
                        .collect(),
                );
            }
            InstanceCommand::Show { name, json } => {
                let i = find_instance(&c, &name, project).await?;
                if json {
                    return print_json(&InstanceEnvelope { instance: i });
                }
                show_instance(&i);
            }
            InstanceCommand::Create {
                name,
                address,
                internal_address,
                groups,
                json,
            } => {
                let created = c
                    .create_instance(CreateInstance {
                        name,
                        public_address: address,
                        internal_address,
                        security_groups: groups,
                        project_id: project,
                    })
                    .await
                    .map_err(refused)?;
                if json {
                    return print_json(&created);
                }
                show_instance(&created.instance);
                println!("agent token:       {}  (shown once)", created.agent_token);
            }
            InstanceCommand::Delete { name } => {
                let i = find_instance(&c, &name, project).await?;
                c.delete_instance(i.id).await.map_err(refused)?;
                println!("deleted instance {}", i.name);
            }
            InstanceCommand::Rdp {
                name,
                enable,
                disable,
                nla_only,
                no_nla_only,
                gateway,
                no_gateway,
                json,
            } => {
                let i = find_instance(&c, &name, project).await?;
                let update = UpdateRemoteDesktop {
                    enabled: (enable || disable).then_some(enable),
                    nla_only: (nla_only || no_nla_only).then_some(nla_only),
                    gateway: (gateway || no_gateway).then_some(gateway),
                };
                let updated = c.set_remote_desktop(i.id, update).await.map_err(refused)?;
                if json {
                    return print_json(&updated);
                }
                let rd = updated.instance.remote_desktop;
                println!(
                    "{}: remote desktop {}, NLA only {}, gateway access {}",
                    updated.instance.name,
                    if rd.enabled { "enabled" } else { "disabled" },
                    onoff(rd.nla_only),
                    onoff(rd.gateway)
                );
            }
            InstanceCommand::RdpToken {
                name,
                revoke: Some(id),
                ..
            } => {
                let i = find_instance(&c, &name, project).await?;
                c.revoke_rdp_token(id).await.map_err(refused)?;
                println!("revoked gateway token {id} of {}", i.name);
            }
            InstanceCommand::RdpToken {
                name,
                ttl,
                revoke: None,
                json,
            } => {
                let i = find_instance(&c, &name, project).await?;
                let request = CreateRdpToken {
                    ttl_seconds: Some(ttl),
                };
                let minted = c.create_rdp_token(i.id, &request).await.map_err(refused)?;
                if json {
                    return print_json(&minted);
                }
                let gateway = gateway_host(c.base());
                let user = i
                    .connect
                    .xfreerdp
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("/u:"))
                    .unwrap_or("USER");
                let target = match i.public_address.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V6(a)) => format!("[{a}]:{}", i.public_rdp_port),
                    _ => format!("{}:{}", i.public_address, i.public_rdp_port),
                };
                println!(
                    "gateway token {} for {}, opens connections until {}",
                    minted.id, i.name, minted.expires_at
                );
                println!("connect through the manager's RD Gateway ({gateway}):");
                println!(
                    "  xfreerdp /v:{target} /g:{gateway} /gat:{} /gt:http /u:{user}",
                    minted.token
                );
                println!(
                    "  or in a .rdp file: gatewayhostname:s:{gateway}, gatewayusagemethod:i:1, \
                     gatewaycredentialssource:i:5, gatewayaccesstoken:s:TOKEN"
                );
                println!("{}", minted.token);
            }
            InstanceCommand::RdpTokens { name, json } => {
                let i = find_instance(&c, &name, project).await?;
                let list = c.rdp_tokens(i.id).await.map_err(refused)?;
                if json {
                    return print_json(&list);
                }
                table(
                    &["ID", "USER", "CREATED", "EXPIRES", "REVOKED"],
                    list.rdp_tokens
                        .iter()
                        .map(|t| {
                            vec![
                                t.id.to_string(),
                                t.user_name.clone().unwrap_or_else(|| t.user_id.to_string()),
                                t.created_at.clone(),
                                t.expires_at.clone(),
                                t.revoked_at.clone().unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect(),
                );
            }
            InstanceCommand::Attach { name, group } => {
                let i = find_instance(&c, &name, project).await?;
                c.attach_group(i.id, &group).await.map_err(refused)?;
                println!("attached {group} to {}", i.name);
            }
            InstanceCommand::Detach { name, group } => {
                let i = find_instance(&c, &name, project).await?;
                let g = i
                    .security_groups
                    .iter()
                    .find(|g| g.name == group || g.id.to_string() == group)
                    .ok_or_else(|| anyhow::anyhow!("{group:?} is not attached to {}", i.name))?;
                c.detach_group(i.id, g.id).await.map_err(refused)?;
                println!("detached {} from {}", g.name, i.name);
            }
        }
        Ok(())
    })
}

// ---- project, template, audit ----

/// Projects you belong to.
#[derive(Debug, clap::Args)]
pub struct ProjectArgs {
    #[command(subcommand)]
    what: ListOnly,
}

/// The rule templates (the console's *Rule* menu).
#[derive(Debug, clap::Args)]
pub struct TemplateArgs {
    #[command(subcommand)]
    what: ListOnly,
}

#[derive(Debug, clap::Subcommand)]
enum ListOnly {
    /// List them.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn project(args: ProjectArgs, settings: &CliSettings) -> anyhow::Result<()> {
    let c = client(settings)?;
    let ListOnly::List { json } = args.what;
    let list = crate::runtime::block_on_here(async { c.projects().await.map_err(refused) })?;
    if json {
        return print_json(&list);
    }
    table(
        &["NAME", "DESCRIPTION", "ID"],
        list.projects
            .iter()
            .map(|p| vec![p.name.clone(), p.description.clone(), p.id.to_string()])
            .collect(),
    );
    Ok(())
}

pub fn template(args: TemplateArgs, settings: &CliSettings) -> anyhow::Result<()> {
    let c = client(settings)?;
    let ListOnly::List { json } = args.what;
    let list = crate::runtime::block_on_here(async { c.templates().await.map_err(refused) })?;
    if json {
        return print_json(&list);
    }
    table(
        &["ID", "LABEL", "PROTOCOL", "PORTS"],
        list.templates
            .iter()
            .map(|t| {
                let ports = match (t.port_range_min, t.port_range_max) {
                    (Some(a), Some(b)) if a == b => a.to_string(),
                    (Some(a), Some(b)) => format!("{a}-{b}"),
                    _ if t.custom => "(you give them)".to_owned(),
                    _ => "any".to_owned(),
                };
                vec![
                    t.id.clone(),
                    t.label.clone(),
                    t.protocol.clone().unwrap_or_else(|| "(you give it)".into()),
                    ports,
                ]
            })
            .collect(),
    );
    Ok(())
}

/// The audit log: who changed what, when, from where.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    what: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AuditCommand {
    /// List events, newest first.
    List {
        /// E.g. security_group_rule.create.
        #[arg(long)]
        action: Option<String>,
        /// A user name.
        #[arg(long)]
        actor: Option<String>,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

pub fn audit(args: AuditArgs, settings: &CliSettings) -> anyhow::Result<()> {
    let c = client(settings)?;
    let AuditCommand::List {
        action,
        actor,
        limit,
        json,
    } = args.what;
    let mut query = format!("?limit={limit}");
    for (key, value) in [("action", action), ("actor", actor)] {
        if let Some(v) = value {
            query += &format!("&{key}={}", url_encode(&v));
        }
    }
    let list = crate::runtime::block_on_here(async { c.audit(&query).await.map_err(refused) })?;
    if json {
        return print_json(&list);
    }
    table(
        &["TIME", "ACTOR", "SOURCE", "ACTION", "SUMMARY"],
        list.audit_events
            .iter()
            .map(|e| {
                vec![
                    e.created_at.clone(),
                    e.actor.clone(),
                    e.source.clone().unwrap_or_default(),
                    e.action.clone(),
                    e.summary.clone(),
                ]
            })
            .collect(),
    );
    Ok(())
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_gateway_is_the_manager_urls_host_and_port() {
        for (url, host) in [
            ("https://manager.example", "manager.example:443"),
            ("https://manager.example:8443/", "manager.example:8443"),
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://127.0.0.1", "127.0.0.1:80"),
            ("https://[2001:db8::1]", "[2001:db8::1]:443"),
            ("https://[2001:db8::1]:9443", "[2001:db8::1]:9443"),
        ] {
            assert_eq!(super::gateway_host(url), host, "{url}");
        }
    }
}
