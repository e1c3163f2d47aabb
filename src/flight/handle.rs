//! What a Flight SQL client carries between calls, and the translations
//! between Flight SQL and DataFusion: statement handles (stateless: the
//! database, the SQL and the bound parameters travel in the handle),
//! InfluxDB 3 tickets, `?` placeholders, parameter binding, and the
//! schemas results are sent with. Pure: no I/O, no node.

use std::collections::HashMap;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{DataFusionError, ParamValues, ScalarValue};
use datafusion::logical_expr::LogicalPlan;
use prost::Message;

/// A statement as the server hands it to the client: in the ticket of a
/// query's endpoint (`TicketStatementQuery.statement_handle`) and as a
/// prepared statement's handle. The server keeps nothing per statement,
/// so a handle stays valid across connections and restarts.
#[derive(Clone, PartialEq, Message)]
pub struct StatementHandle {
    /// The default schema (database) the SQL runs in.
    #[prost(string, tag = "1")]
    pub database: String,
    /// The SQL, `?` placeholders already numbered (`$1`, `$2`, ...).
    #[prost(string, tag = "2")]
    pub sql: String,
    /// The bound parameters: an Arrow IPC stream of one row, column `i`
    /// for `$i+1`; empty when none are bound.
    #[prost(bytes = "vec", tag = "3")]
    pub params: Vec<u8>,
}

impl StatementHandle {
    pub fn new(database: &str, sql: &str) -> StatementHandle {
        StatementHandle {
            database: database.to_string(),
            sql: number_placeholders(sql),
            params: Vec::new(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<StatementHandle, HandleError> {
        StatementHandle::decode(bytes).map_err(|_| HandleError::BadHandle)
    }

    /// This statement with `row` (one row) as its parameters.
    pub fn with_params(&self, row: &RecordBatch) -> Result<StatementHandle, HandleError> {
        let mut bytes = Vec::new();
        let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut bytes, &row.schema())
            .map_err(|e| HandleError::Params(e.to_string()))?;
        w.write(row)
            .and_then(|_| w.finish())
            .map_err(|e| HandleError::Params(e.to_string()))?;
        drop(w);
        Ok(StatementHandle {
            params: bytes,
            ..self.clone()
        })
    }

    /// The bound parameters, `$1` first.
    pub fn param_values(&self) -> Result<Vec<ScalarValue>, HandleError> {
        if self.params.is_empty() {
            return Ok(Vec::new());
        }
        let reader = arrow_ipc::reader::StreamReader::try_new(self.params.as_slice(), None)
            .map_err(|_| HandleError::BadHandle)?;
        let mut rows = Vec::new();
        for b in reader {
            rows.push(b.map_err(|_| HandleError::BadHandle)?);
        }
        match rows.as_slice() {
            [row] => row_values(row),
            _ => Err(HandleError::BadHandle),
        }
    }
}

/// Why a handle, a ticket or parameters cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandleError {
    #[error("the statement handle or ticket was not made by this server")]
    BadHandle,
    #[error("parameters: {0}")]
    Params(String),
    #[error("parameters: bind exactly one row (got {0}); run the statement once per row")]
    ParamRows(usize),
    #[error("InfluxDB ticket: {0}")]
    Ticket(String),
    #[error("query_type {0:?} is not supported: tidemark answers only \"sql\" over Flight")]
    QueryType(String),
}

/// Column `i` of `row`'s only row, as the value of `$i+1`.
pub fn row_values(row: &RecordBatch) -> Result<Vec<ScalarValue>, HandleError> {
    if row.num_rows() != 1 {
        return Err(HandleError::ParamRows(row.num_rows()));
    }
    row.columns()
        .iter()
        .map(|c| {
            ScalarValue::try_from_array(c, 0).map_err(|e| HandleError::Params(e.strip_backtrace()))
        })
        .collect()
}

/// The ticket InfluxDB 3's client libraries (`influxdb3-python`,
/// `influxdb3-go`, ...) send to `DoGet`: JSON, not a Flight SQL command.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct InfluxTicket {
    #[serde(default)]
    pub database: Option<String>,
    pub sql_query: String,
    #[serde(default)]
    pub query_type: Option<String>,
    /// Named parameters (`$name` in the SQL).
    #[serde(default)]
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
}

impl InfluxTicket {
    /// Whether `ticket` is JSON (a Flight SQL ticket is a protobuf `Any`,
    /// whose first byte is the tag of its `type_url`, 0x0a).
    pub fn looks_like(ticket: &[u8]) -> bool {
        ticket
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{')
    }

    /// Parses and checks a ticket: only `query_type` "sql" (or none).
    pub fn parse(ticket: &[u8]) -> Result<InfluxTicket, HandleError> {
        let t: InfluxTicket =
            serde_json::from_slice(ticket).map_err(|e| HandleError::Ticket(e.to_string()))?;
        match t.query_type.as_deref() {
            None | Some("sql") => Ok(t),
            Some(other) => Err(HandleError::QueryType(other.to_string())),
        }
    }

    /// The named parameters as DataFusion values.
    pub fn param_values(&self) -> Result<HashMap<String, ScalarValue>, HandleError> {
        let Some(params) = &self.params else {
            return Ok(HashMap::new());
        };
        params
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    serde_json::Value::Null => ScalarValue::Null,
                    serde_json::Value::Bool(b) => ScalarValue::Boolean(Some(*b)),
                    serde_json::Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
                    serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                        (Some(i), _, _) => ScalarValue::Int64(Some(i)),
                        (None, Some(u), _) => ScalarValue::UInt64(Some(u)),
                        (_, _, Some(f)) => ScalarValue::Float64(Some(f)),
                        _ => return Err(HandleError::Params(format!("{k}: {n} is not a number"))),
                    },
                    other => {
                        return Err(HandleError::Params(format!(
                            "{k}: {other} is not a string, number, boolean or null"
                        )))
                    }
                };
                Ok((k.trim_start_matches('$').to_string(), value))
            })
            .collect()
    }
}

/// `sql` with every `?` placeholder (ADBC's and JDBC's style) replaced by
/// `$1`, `$2`, ... in order, which is what DataFusion binds. Question
/// marks in string literals, quoted identifiers and comments stay.
pub fn number_placeholders(sql: &str) -> String {
    if !sql.contains('?') {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                // Up to the closing quote; a doubled quote is an escape and
                // reads as a close and a reopen, which copies it unchanged.
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                out.push(c);
                let mut prev = ' ';
                for d in chars.by_ref() {
                    out.push(d);
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
            }
            '?' => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            c => out.push(c),
        }
    }
    out
}

/// The parameters `plan` takes, in order (`$1` first), with the types
/// DataFusion inferred (`Null` where it could not), as the parameter
/// schema of a prepared statement.
pub fn parameter_schema(plan: &LogicalPlan) -> Result<Schema, DataFusionError> {
    let types = plan.get_parameter_types()?;
    let mut named: Vec<(usize, String, DataType)> = types
        .into_iter()
        .map(|(name, t)| {
            let pos = name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(usize::MAX);
            (pos, name, t.unwrap_or(DataType::Null))
        })
        .collect();
    named.sort();
    Ok(Schema::new(
        named
            .into_iter()
            .map(|(_, name, t)| Field::new(name, t, true))
            .collect::<Vec<_>>(),
    ))
}

/// `plan` with its placeholders replaced by `values`: a list (`$1`, `$2`,
/// ...) or a map (`$name`). A value of another type than the one inferred
/// for its placeholder is cast to it when it can be (a client's
/// microsecond timestamp compared with `time`, in nanoseconds).
pub fn bind(plan: LogicalPlan, values: ParamValues) -> Result<LogicalPlan, DataFusionError> {
    let types = plan.get_parameter_types()?;
    if types.is_empty() && values_empty(&values) {
        return Ok(plan);
    }
    let cast = |name: &str, v: ScalarValue| -> ScalarValue {
        match types.get(name) {
            Some(Some(t)) if v.data_type() != *t && !v.is_null() => v.cast_to(t).unwrap_or(v),
            _ => v,
        }
    };
    let values = match values {
        ParamValues::List(list) => ParamValues::List(
            list.into_iter()
                .enumerate()
                .map(|(i, mut v)| {
                    v.value = cast(&format!("${}", i + 1), v.value);
                    v
                })
                .collect(),
        ),
        ParamValues::Map(map) => ParamValues::Map(
            map.into_iter()
                .map(|(k, mut v)| {
                    v.value = cast(&format!("${k}"), v.value);
                    (k, v)
                })
                .collect(),
        ),
    };
    plan.with_param_values(values)
}

fn values_empty(values: &ParamValues) -> bool {
    match values {
        ParamValues::List(l) => l.is_empty(),
        ParamValues::Map(m) => m.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};

    use super::*;

    #[test]
    fn placeholders_numbered_outside_quotes_and_comments() {
        assert_eq!(
            number_placeholders("SELECT * FROM cpu WHERE time >= ? AND time < ?"),
            "SELECT * FROM cpu WHERE time >= $1 AND time < $2"
        );
        assert_eq!(
            number_placeholders(
                "SELECT '?', \"a?\", 'it''s ?' FROM t WHERE x = ? -- why?\nAND y = ? /* ? */"
            ),
            "SELECT '?', \"a?\", 'it''s ?' FROM t WHERE x = $1 -- why?\nAND y = $2 /* ? */"
        );
        assert_eq!(number_placeholders("SELECT 1"), "SELECT 1");
    }

    #[test]
    fn handle_round_trips_with_params() {
        let h = StatementHandle::new("bench", "SELECT ? + ?");
        assert_eq!(h.sql, "SELECT $1 + $2");
        assert_eq!(StatementHandle::from_bytes(&h.to_bytes()).unwrap(), h);
        assert_eq!(h.param_values().unwrap(), vec![]);

        let row = RecordBatch::try_from_iter([
            (
                "a",
                Arc::new(TimestampMicrosecondArray::from(vec![5]).with_timezone("UTC")) as _,
            ),
            ("b", Arc::new(StringArray::from(vec!["x"])) as _),
        ])
        .unwrap();
        let bound = h.with_params(&row).unwrap();
        let back = StatementHandle::from_bytes(&bound.to_bytes()).unwrap();
        assert_eq!(
            back.param_values().unwrap(),
            vec![
                ScalarValue::TimestampMicrosecond(Some(5), Some("UTC".into())),
                ScalarValue::Utf8(Some("x".into())),
            ]
        );
        assert_eq!(
            StatementHandle::from_bytes(b"\xff\xff"),
            Err(HandleError::BadHandle)
        );
    }

    #[test]
    fn parameters_bind_one_row() {
        let two = RecordBatch::try_from_iter([("a", Arc::new(Int64Array::from(vec![1, 2])) as _)])
            .unwrap();
        assert_eq!(row_values(&two), Err(HandleError::ParamRows(2)));
    }

    #[test]
    fn influx_tickets() {
        let t = br#" {"database": "db1", "sql_query": "SELECT $x", "query_type": "sql", "params": {"x": 3, "y": "s"}}"#;
        assert!(InfluxTicket::looks_like(t));
        assert!(!InfluxTicket::looks_like(b"\x0a\x05hello"));
        let t = InfluxTicket::parse(t).unwrap();
        assert_eq!(t.database.as_deref(), Some("db1"));
        let p = t.param_values().unwrap();
        assert_eq!(p["x"], ScalarValue::Int64(Some(3)));
        assert_eq!(p["y"], ScalarValue::Utf8(Some("s".into())));
        let e = InfluxTicket::parse(
            br#"{"database": "d", "sql_query": "SELECT 1", "query_type": "influxql"}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("\"influxql\" is not supported"),
            "{e}"
        );
        assert!(matches!(
            InfluxTicket::parse(b"{not json"),
            Err(HandleError::Ticket(_))
        ));
    }

    #[tokio::test]
    async fn parameters_typed_in_order_and_cast_when_bound() {
        use datafusion::arrow::array::TimestampNanosecondArray;
        let ctx = datafusion::prelude::SessionContext::new();
        let t = RecordBatch::try_from_iter([
            (
                "time",
                Arc::new(
                    TimestampNanosecondArray::from(vec![1_000, 2_000, 3_000]).with_timezone("UTC"),
                ) as _,
            ),
            ("v", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
        ])
        .unwrap();
        ctx.register_batch("t", t).unwrap();
        let sql = number_placeholders("SELECT v FROM t WHERE v < ? AND time >= ? ORDER BY v");
        let plan = ctx.state().create_logical_plan(&sql).await.unwrap();
        let params = parameter_schema(&plan).unwrap();
        let names: Vec<&str> = params.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["$1", "$2"]);
        assert_eq!(params.field(0).data_type(), &DataType::Int64);
        // A client's microsecond timestamp against nanosecond `time`.
        let values = vec![
            ScalarValue::Int64(Some(3)),
            ScalarValue::TimestampMicrosecond(Some(2), Some("UTC".into())),
        ];
        let bound = bind(plan, values.into()).unwrap();
        let got = ctx
            .execute_logical_plan(bound)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let v: Vec<i64> = got
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(v, [2]);
    }
}
