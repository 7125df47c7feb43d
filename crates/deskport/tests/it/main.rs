//! End-to-end tests of the `deskport` binary: one test binary (one link) with a module per area.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod classic_orders;
mod cli_config;
mod cli_manager;
mod client;
mod console;
mod console_desktop;
mod desktop_session;
mod drives;
mod firewall_feed;
mod firewall_gateway;
mod firewall_nft;
mod fuzz_corpus;
mod hosts;
mod manager_https;
mod manager_postgres;
mod openapi;
mod package;
mod rdp;
mod rdp_manager;
mod rdp_sessions;
mod sound;
mod support;
mod up;
