//! Storage of custom event definitions (`custom_event_definitions`, with
//! every version kept in `custom_event_definition_versions`).
//!
//! Each write is one transaction; a trigger (migration 0003) notifies the
//! channel [`NOTIFY_CHANNEL`] on commit, which the schema sync task of every
//! process listens to. Validation of names and schemas is the caller's
//! business (the API); this module only stores.

use chrono::{DateTime, SecondsFormat, Utc};
use dataflows::validate::DefinitionSpec;
use serde_json::{json, Value};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{Pool, SinkError};

/// The channel notified on every change of the definitions.
pub const NOTIFY_CHANNEL: &str = "custom_event_definitions";

/// A stored definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Definition {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub schema: Value,
    pub version: i32,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Definition {
    fn from_row(row: &Row) -> Self {
        Definition {
            id: row.get("id"),
            name: row.get("name"),
            display_name: row.get("display_name"),
            description: row.get("description"),
            schema: row.get("schema"),
            version: row.get("version"),
            is_active: row.get("is_active"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
        }
    }

    /// The definition as the API's JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "schema": self.schema,
            "version": self.version,
            "is_active": self.is_active,
            "created_at": self.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "updated_at": self.updated_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        })
    }
}

/// A definition to create.
#[derive(Clone, Debug)]
pub struct NewDefinition {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub schema: Value,
    pub is_active: bool,
}

/// Changes to a definition; `None` keeps the stored value.
#[derive(Clone, Debug, Default)]
pub struct DefinitionUpdate {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub schema: Option<Value>,
    pub is_active: Option<bool>,
}

const COLUMNS: &str =
    "id, name, display_name, description, schema, version, is_active, created_at, updated_at";

async fn record_version(
    tx: &tokio_postgres::Transaction<'_>,
    d: &Definition,
) -> Result<(), SinkError> {
    tx.execute(
        "INSERT INTO custom_event_definition_versions (definition_id, version, schema, is_active)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        &[&d.id, &d.version, &d.schema, &d.is_active],
    )
    .await?;
    Ok(())
}

/// Records the version of the definition `row` returned (if any) and
/// commits; `None` when no row was written.
async fn commit_version(
    tx: deadpool_postgres::Transaction<'_>,
    row: Option<tokio_postgres::Row>,
) -> Result<Option<Definition>, SinkError> {
    let Some(row) = row else {
        return Ok(None);
    };
    let definition = Definition::from_row(&row);
    record_version(&tx, &definition).await?;
    tx.commit().await?;
    Ok(Some(definition))
}

/// Stores a new definition at version 1; `None` when the name exists.
pub async fn create(pool: &Pool, new: &NewDefinition) -> Result<Option<Definition>, SinkError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            &format!(
                "INSERT INTO custom_event_definitions
                   (id, name, display_name, description, schema, version, is_active)
                 VALUES ($1, $2, $3, $4, $5, 1, $6)
                 ON CONFLICT (name) DO NOTHING
                 RETURNING {COLUMNS}"
            ),
            &[
                &Uuid::new_v4(),
                &new.name,
                &new.display_name,
                &new.description,
                &new.schema,
                &new.is_active,
            ],
        )
        .await?;
    commit_version(tx, row).await
}

/// The definition named `name`.
pub async fn get(pool: &Pool, name: &str) -> Result<Option<Definition>, SinkError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM custom_event_definitions WHERE name = $1"),
            &[&name],
        )
        .await?;
    Ok(row.as_ref().map(Definition::from_row))
}

/// Every definition, active or not, by name.
pub async fn list(pool: &Pool) -> Result<Vec<Definition>, SinkError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM custom_event_definitions ORDER BY name"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(Definition::from_row).collect())
}

/// A new version of `name`: `version` + 1, a later `updated_at`; `None`
/// when unknown.
pub async fn update(
    pool: &Pool,
    name: &str,
    update: &DefinitionUpdate,
) -> Result<Option<Definition>, SinkError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE custom_event_definitions SET
                   display_name = COALESCE($2, display_name),
                   description = COALESCE($3, description),
                   schema = COALESCE($4, schema),
                   is_active = COALESCE($5, is_active),
                   version = version + 1,
                   updated_at = greatest(now(), updated_at + interval '1 microsecond')
                 WHERE name = $1
                 RETURNING {COLUMNS}"
            ),
            &[
                &name,
                &update.display_name,
                &update.description,
                &update.schema,
                &update.is_active,
            ],
        )
        .await?;
    commit_version(tx, row).await
}

/// Deactivates `name` (events of that type are no longer validated against
/// it); `None` when unknown.
pub async fn deactivate(pool: &Pool, name: &str) -> Result<Option<Definition>, SinkError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "UPDATE custom_event_definitions SET
                   is_active = false,
                   updated_at = greatest(now(), updated_at + interval '1 microsecond')
                 WHERE name = $1
                 RETURNING {COLUMNS}"
            ),
            &[&name],
        )
        .await?;
    Ok(row.as_ref().map(Definition::from_row))
}

/// The active definitions, as the validator registry takes them.
pub async fn load_active(pool: &Pool) -> Result<Vec<DefinitionSpec>, SinkError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT name, version, schema FROM custom_event_definitions WHERE is_active",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DefinitionSpec {
            name: r.get(0),
            version: r.get(1),
            schema: r.get(2),
        })
        .collect())
}
