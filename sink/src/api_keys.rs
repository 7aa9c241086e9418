//! API keys: generation, parsing, hashing, and their rows in `api_keys`
//! (name, scopes, created_at, revoked_at).
//!
//! A key reads `ak_<prefix>_<secret>`: `prefix` is 8 random alphanumerics,
//! stored in clear so that keys can be listed and told apart; `secret` is
//! 43 random alphanumerics (62^43 ≈ 2^256). The key itself is never
//! stored: only SHA-256 of the whole key.
//!
//! Why a plain SHA-256 and not a password hash (argon2, bcrypt, scrypt):
//! those are slow on purpose, to make guessing a low-entropy password from
//! a stolen hash expensive. A key here carries 256 random bits, so guessing
//! it from its hash is infeasible with any hash function; a slow hash would
//! only cost CPU on every uncached request. A fast, unsalted, deterministic
//! hash also lets a presented key be found with one index lookup on
//! `key_hash` (a per-key salt would need a lookup by prefix first, and
//! buys nothing when no precomputed table can cover 2^256 inputs).

use chrono::{DateTime, Utc};
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;

use crate::{Pool, SinkError};

/// Every key starts with this.
pub const KEY_START: &str = "ak_";
/// Length of the clear prefix.
pub const PREFIX_LEN: usize = 8;
/// Length of the secret part.
pub const SECRET_LEN: usize = 43;
/// Longest key name.
pub const MAX_NAME_LEN: usize = 64;

/// What a key may do. `Admin` implies every other scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `POST /api/v1/events`.
    Ingest,
    /// `GET /api/v1/*` (but internal endpoints).
    Read,
    /// `/api/v1/internal/*`, definition writes, dead-letter replay.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Ingest, Scope::Read, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `granted` allows `required` (`admin` allows everything).
pub fn allows(granted: &[Scope], required: Scope) -> bool {
    granted.iter().any(|&s| s == required || s == Scope::Admin)
}

/// Parses a comma-separated scope list (`"ingest,read"`): sorted, without
/// duplicates, at least one.
pub fn parse_scopes(list: &str) -> Result<Vec<Scope>, SinkError> {
    let mut scopes = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let scope = Scope::parse(part).ok_or_else(|| {
            SinkError::ApiKey(format!(
                "unknown scope {part:?} (expected ingest, read or admin)"
            ))
        })?;
        scopes.push(scope);
    }
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(SinkError::ApiKey("at least one scope is required".into()));
    }
    Ok(scopes)
}

/// A name is 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
pub fn check_name(name: &str) -> Result<(), SinkError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SinkError::ApiKey(format!(
            "invalid key name {name:?}: 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// SHA-256 of a key, as stored and as cached.
pub type KeyHash = [u8; 32];

/// A freshly generated key: shown once, then only its hash is kept.
#[derive(Clone)]
pub struct NewKey {
    pub key: String,
    pub prefix: String,
    pub hash: KeyHash,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Draws a new key from the thread-local CSPRNG (ChaCha, seeded by the OS).
pub fn generate() -> NewKey {
    let mut rng = rand::rng();
    let prefix = Alphanumeric.sample_string(&mut rng, PREFIX_LEN);
    let secret = Alphanumeric.sample_string(&mut rng, SECRET_LEN);
    let key = format!("{KEY_START}{prefix}_{secret}");
    let hash = hash_key(&key);
    NewKey { key, prefix, hash }
}

pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// The prefix of a well-formed key; `None` if `key` cannot be one (no
/// storage lookup is worth doing then).
pub fn parse_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_START)?;
    let (prefix, secret) = rest.split_once('_')?;
    let alnum =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_alphanumeric());
    (alnum(prefix, PREFIX_LEN) && alnum(secret, SECRET_LEN)).then_some(prefix)
}

/// A stored key, as listed (never its secret).
#[derive(Clone, Debug)]
pub struct KeyInfo {
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What a verified, active key may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveKey {
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<Scope>,
}

fn scopes_of(stored: Vec<String>) -> Vec<Scope> {
    stored.iter().filter_map(|s| Scope::parse(s)).collect()
}

/// Stores a new key named `name`; returns it (the only time the key is
/// available) with its row. Fails if an active key already has the name.
pub async fn create(
    pool: &Pool,
    name: &str,
    scopes: &[Scope],
) -> Result<(NewKey, KeyInfo), SinkError> {
    check_name(name)?;
    if scopes.is_empty() {
        return Err(SinkError::ApiKey("at least one scope is required".into()));
    }
    let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let client = pool.get().await?;
    // A prefix collision (62^8 values) is retried with a new key.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let new = generate();
        let result = client
            .query_one(
                "INSERT INTO api_keys (name, prefix, key_hash, scopes) VALUES ($1, $2, $3, $4)
                 RETURNING created_at",
                &[&name, &new.prefix, &new.hash.as_slice(), &names],
            )
            .await;
        match result {
            Ok(row) => {
                let info = KeyInfo {
                    name: name.to_string(),
                    prefix: new.prefix.clone(),
                    scopes: scopes.to_vec(),
                    created_at: row.get(0),
                    revoked_at: None,
                };
                return Ok((new, info));
            }
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                let constraint = e
                    .as_db_error()
                    .and_then(|d| d.constraint())
                    .unwrap_or_default();
                if constraint == "api_keys_active_name_idx" {
                    return Err(SinkError::KeyNameTaken(name.to_string()));
                }
                if attempts >= 3 {
                    return Err(e.into());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Every key, active and revoked, oldest first.
pub async fn list(pool: &Pool) -> Result<Vec<KeyInfo>, SinkError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT name, prefix, scopes, created_at, revoked_at FROM api_keys ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| KeyInfo {
            name: r.get(0),
            prefix: r.get(1),
            scopes: scopes_of(r.get(2)),
            created_at: r.get(3),
            revoked_at: r.get(4),
        })
        .collect())
}

/// Revokes the active key named `name`; `false` if there is none.
pub async fn revoke(pool: &Pool, name: &str) -> Result<bool, SinkError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL",
            &[&name],
        )
        .await?;
    Ok(n > 0)
}

/// The active key whose hash is `hash`, if any.
pub async fn lookup(pool: &Pool, hash: &KeyHash) -> Result<Option<ActiveKey>, SinkError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT name, prefix, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            &[&hash.as_slice()],
        )
        .await?;
    Ok(row.map(|r| ActiveKey {
        name: r.get(0),
        prefix: r.get(1),
        scopes: scopes_of(r.get(2)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash_stably() {
        let a = generate();
        let b = generate();
        assert_ne!(a.key, b.key);
        assert_ne!(a.prefix, b.prefix);
        assert_eq!(a.key.len(), KEY_START.len() + PREFIX_LEN + 1 + SECRET_LEN);
        assert_eq!(parse_key(&a.key), Some(a.prefix.as_str()));
        assert_eq!(hash_key(&a.key), a.hash);
        assert_ne!(a.hash, b.hash);
        assert!(
            !format!("{a:?}").contains(&a.key[12..]),
            "Debug hides the key"
        );
    }

    #[test]
    fn sha256_is_the_stored_hash() {
        // FIPS 180-2 test vector.
        let h = hash_key("abc");
        assert_eq!(
            h[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "sha-256(\"abc\") = ba7816bf..."
        );
        assert_eq!(h[28..], [0xf2, 0x00, 0x15, 0xad]);
    }

    #[test]
    fn malformed_keys_are_refused() {
        let good = generate().key;
        let cases = [
            String::new(),
            "ak_".into(),
            good.replacen("ak_", "ak-", 1),
            good[..good.len() - 1].into(),
            format!("{good}x"),
            good.replacen('_', "", 2),
            format!("ak_abcdefg!_{}", "a".repeat(SECRET_LEN)),
            format!("ak_abcdefgh_{}é", "a".repeat(SECRET_LEN - 1)),
            format!(" {good}"),
        ];
        for case in cases {
            assert_eq!(parse_key(&case), None, "{case:?}");
        }
    }

    #[test]
    fn scopes_parse_and_admin_implies_all() {
        assert_eq!(
            parse_scopes("read, ingest,read").expect("valid"),
            vec![Scope::Ingest, Scope::Read]
        );
        assert!(parse_scopes("").is_err());
        assert!(parse_scopes("read,write").is_err());
        assert!(allows(&[Scope::Read], Scope::Read));
        assert!(!allows(&[Scope::Read], Scope::Ingest));
        assert!(!allows(&[Scope::Ingest, Scope::Read], Scope::Admin));
        for s in Scope::ALL {
            assert!(allows(&[Scope::Admin], s));
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("dashboard-1.prod_a").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("has space").is_err());
        assert!(check_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }
}
