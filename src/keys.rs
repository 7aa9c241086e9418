//! `analytics api-key create|list|revoke`: manages the API keys checked on
//! `/api/v1/*` when `security.api_key_enabled` is set. Only a hash of each
//! key is stored (`sink::api_keys`), so `create` prints the key once, on
//! stdout and alone (scripts can capture it); `list` shows names, prefixes
//! and scopes, never a secret.

use anyhow::Context;
use clap::Subcommand;
use sink::api_keys::{self, KeyInfo};

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key and print it; it cannot be shown again.
    Create {
        /// Unique among active keys: 1 to 64 characters of A-Z a-z 0-9 . _ -
        #[arg(long)]
        name: String,
        /// Comma-separated: ingest, read, admin (admin implies the others).
        #[arg(long)]
        scopes: String,
    },
    /// List every key (active and revoked) without secrets.
    List,
    /// Revoke the active key named NAME.
    Revoke {
        /// The key's name.
        name: String,
    },
}

pub fn run(config: &Config, command: KeyCommand) -> anyhow::Result<()> {
    crate::run::runtime()?.block_on(async {
        let pool = crate::run::prepare_database(config).await?;
        match command {
            KeyCommand::Create { name, scopes } => {
                let scopes = api_keys::parse_scopes(&scopes)?;
                let (key, info) = api_keys::create(&pool, &name, &scopes)
                    .await
                    .context("create api key")?;
                eprintln!(
                    "created api key {:?} (prefix {}, scopes {}); store it now, it cannot be shown again:",
                    info.name,
                    info.prefix,
                    scope_list(&info)
                );
                println!("{}", key.key);
                if !config.security.api_key_enabled {
                    eprintln!("note: security.api_key_enabled is false, keys are not checked");
                }
            }
            KeyCommand::List => {
                let keys = api_keys::list(&pool).await.context("list api keys")?;
                println!(
                    "{:<24} {:<20} {:<20} {:<25} REVOKED",
                    "NAME", "KEY", "SCOPES", "CREATED"
                );
                for k in &keys {
                    println!(
                        "{:<24} {:<20} {:<20} {:<25} {}",
                        k.name,
                        format!("{}{}_…", api_keys::KEY_START, k.prefix),
                        scope_list(k),
                        k.created_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                        k.revoked_at
                            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                            .unwrap_or_else(|| "-".into())
                    );
                }
            }
            KeyCommand::Revoke { name } => {
                if !api_keys::revoke(&pool, &name)
                    .await
                    .context("revoke api key")?
                {
                    anyhow::bail!("no active api key named {name:?}");
                }
                println!(
                    "revoked api key {name:?}; running services refuse it within security.api_key_cache_ttl ({})",
                    humantime::format_duration(config.security.api_key_cache_ttl)
                );
            }
        }
        anyhow::Ok(())
    })
}

fn scope_list(key: &KeyInfo) -> String {
    key.scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}
