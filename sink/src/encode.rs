//! Binary encodings for COPY that avoid converting through other types:
//! timestamps as microseconds, JSON text as `jsonb`.

use bytes::{BufMut, BytesMut};
use dataflows::rows::{JSONB_VERSION, PG_EPOCH_OFFSET_US};
use postgres_types::{to_sql_checked, IsNull, ToSql, Type};

/// A `timestamptz` given as microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug)]
pub struct PgMicros(pub i64);

impl ToSql for PgMicros {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_i64(self.0 - PG_EPOCH_OFFSET_US);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ || *ty == Type::TIMESTAMP
    }

    to_sql_checked!();
}

/// A `jsonb` value given as JSON text that is known to be valid.
#[derive(Clone, Copy, Debug)]
pub struct RawJsonb<'a>(pub &'a str);

impl ToSql for RawJsonb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(JSONB_VERSION);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}
