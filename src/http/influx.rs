//! InfluxDB 1.x compatibility: `GET`/`HEAD /ping` and the part of
//! `/query` that clients send before they write (`SHOW DATABASES`,
//! `SHOW MEASUREMENTS`, `CREATE DATABASE`), in InfluxDB's JSON shape.
//!
//! Any other InfluxQL is refused with 400 and a pointer to SQL: tidemark
//! does not translate InfluxQL. `CREATE DATABASE` is accepted and does
//! nothing (a database exists once written to), so `SHOW DATABASES` lists
//! the databases that hold data.
//!
//! The query text is parsed by the pure [`parse`] and answered by the pure
//! [`execute`] over the catalog's (database, measurement) pairs; the
//! handlers around them only read the request and the catalog.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{Request, Response};
use crate::context::CoreCtx;

/// The InfluxDB version `/ping` and `/query` announce in
/// `X-Influxdb-Version`: the last 1.x release, whose API this mirrors.
pub const INFLUXDB_VERSION: &str = "1.8.10";

/// What to use instead of InfluxQL, in every refusal.
const USE_SQL: &str = "query with SQL at POST /api/v1/query (or the PostgreSQL/Flight SQL ports)";

/// The headers InfluxDB 1.x puts on its answers (clients read the version
/// from `/ping`), plus tidemark's own version.
fn with_version_headers(resp: Response) -> Response {
    resp.with_header("X-Influxdb-Version", INFLUXDB_VERSION)
        .with_header("X-Influxdb-Build", "OSS")
        .with_header("X-Tidemark-Version", env!("CARGO_PKG_VERSION"))
}

/// `GET`/`HEAD /ping`: 204 with the version headers; `?verbose=true` (any
/// value but empty, `0` or `false`, as InfluxDB reads it) answers 200 with
/// `{"version": ...}`.
pub fn ping(req: &Request) -> Response {
    let verbose = req
        .query_param("verbose")
        .is_some_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    let resp = if verbose && req.method == "GET" {
        Response::json(200, &json!({"version": INFLUXDB_VERSION}))
    } else {
        Response::no_content()
    };
    with_version_headers(resp)
}

/// `GET`/`POST /query`: `q` from the query string, or from an
/// `application/x-www-form-urlencoded` body (which wins, as in InfluxDB);
/// `db` is the database of `SHOW MEASUREMENTS` without `ON`; `pretty=true`
/// indents the JSON. `epoch`, `chunked` and `u` are accepted and have no
/// effect on these statements (`p` is the token, read by auth).
pub fn query(ctx: &CoreCtx, req: &Request) -> Response {
    let resp = query_inner(ctx, req);
    with_version_headers(resp)
}

fn query_inner(ctx: &CoreCtx, req: &Request) -> Response {
    let form = form_body(req);
    let param = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| req.query_param(name))
    };
    let Some(q) = param("q").filter(|q| !q.trim().is_empty()) else {
        return Response::error(
            400,
            format!("missing required parameter \"q\" (one or more InfluxQL statements; tidemark answers SHOW DATABASES, SHOW MEASUREMENTS and CREATE DATABASE, else {USE_SQL})"),
        );
    };
    let statements = match parse(&q) {
        Ok(s) => s,
        Err(e) => return Response::error(400, e.to_string()),
    };
    if !ctx.node.is_ready() {
        return Response::error(503, "the node is recovering its WAL; retry shortly");
    }
    let tables: Vec<(String, String)> = ctx
        .node
        .catalog
        .tables()
        .into_iter()
        .map(|(k, _)| (k.database().to_string(), k.measurement().to_string()))
        .collect();
    let db = param("db").filter(|d| !d.is_empty());
    let body = execute(&statements, db.as_deref(), &tables);
    let pretty = param("pretty").is_some_and(|p| p == "true");
    let bytes = if pretty {
        serde_json::to_vec_pretty(&body)
    } else {
        serde_json::to_vec(&body)
    };
    Response {
        status: 200,
        headers: vec![("Content-Type", "application/json".into())],
        body: bytes.expect("JSON values serialize"),
    }
}

/// The fields of a form body (`application/x-www-form-urlencoded`), else
/// none.
fn form_body(req: &Request) -> Vec<(String, String)> {
    let is_form = req.header("content-type").is_some_and(|t| {
        t.split(';').next().is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
    });
    if req.method != "POST" || !is_form {
        return Vec::new();
    }
    form_urlencoded::parse(&req.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A statement tidemark answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    ShowDatabases,
    /// `SHOW MEASUREMENTS [ON db] [WITH MEASUREMENT = name] [LIMIT n]
    /// [OFFSET n]`.
    ShowMeasurements {
        on: Option<String>,
        named: Option<String>,
        limit: Option<usize>,
        offset: usize,
    },
    /// Accepted; a database is created by its first write.
    CreateDatabase {
        name: String,
    },
}

/// Why a query is refused (each is a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfluxQlError {
    #[error("InfluxQL {kind} is not supported: tidemark answers only SHOW DATABASES, SHOW MEASUREMENTS and CREATE DATABASE in InfluxQL; {USE_SQL}")]
    Unsupported { kind: String },
    #[error("{statement} with {clause} is not supported: {hint}")]
    UnsupportedClause {
        statement: &'static str,
        clause: String,
        hint: &'static str,
    },
    #[error("error parsing query: {0}")]
    Syntax(String),
    #[error("the query holds no statement")]
    Empty,
    #[error("CREATE DATABASE: {0}")]
    InvalidDatabase(String),
}

/// The statement keywords of InfluxQL 1.x: a statement starting with one
/// of these is InfluxQL tidemark does not answer (else it is not InfluxQL).
const STATEMENT_KEYWORDS: &[&str] = &[
    "SELECT", "SHOW", "CREATE", "DROP", "DELETE", "ALTER", "GRANT", "REVOKE", "EXPLAIN", "KILL",
    "SET",
];

/// Words that continue a statement's kind after SHOW, CREATE, DROP,
/// ALTER or EXPLAIN (`SHOW TAG KEYS`, `DROP RETENTION POLICY`).
const KIND_WORDS: &[&str] = &[
    "ALL",
    "ANALYZE",
    "CARDINALITY",
    "CONTINUOUS",
    "DATABASE",
    "DATABASES",
    "DIAGNOSTICS",
    "EXACT",
    "FIELD",
    "GRANTS",
    "GROUPS",
    "KEY",
    "KEYS",
    "MEASUREMENT",
    "MEASUREMENTS",
    "POLICIES",
    "POLICY",
    "PRIVILEGES",
    "QUERIES",
    "QUERY",
    "RETENTION",
    "SERIES",
    "SHARD",
    "SHARDS",
    "STATS",
    "SUBSCRIPTION",
    "SUBSCRIPTIONS",
    "TAG",
    "USER",
    "USERS",
    "VALUES",
];

/// A token of InfluxQL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An unquoted identifier, keyword or number.
    Word(String),
    /// A double-quoted identifier, unescaped.
    Quoted(String),
    /// A single-quoted string, unescaped.
    Str(String),
    /// `/.../` after `=~` or `!~`.
    Regex(String),
    /// An operator or punctuation (`=`, `=~`, `,`, `*`, ...).
    Op(String),
    Semicolon,
}

impl Token {
    /// The token as written (for messages).
    fn show(&self) -> String {
        match self {
            Token::Word(w) => w.clone(),
            Token::Quoted(s) => format!("{s:?}"),
            Token::Str(s) => format!("'{s}'"),
            Token::Regex(r) => format!("/{r}/"),
            Token::Op(o) => o.clone(),
            Token::Semicolon => ";".into(),
        }
    }

    /// Whether this is the keyword `kw` (upper case), in any case.
    fn is(&self, kw: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    /// An identifier (unquoted or double-quoted).
    fn ident(&self) -> Option<&str> {
        match self {
            Token::Word(w) | Token::Quoted(w) => Some(w),
            _ => None,
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Splits InfluxQL into tokens: comments (`-- ...`, `/* ... */`) and
/// white space dropped, quotes resolved.
fn lex(q: &str) -> Result<Vec<Token>, InfluxQlError> {
    let mut out = Vec::new();
    let mut chars = q.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                let mut closed = false;
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        closed = true;
                        break;
                    }
                    prev = c;
                }
                if !closed {
                    return Err(InfluxQlError::Syntax("unterminated comment".into()));
                }
            }
            '/' if matches!(out.last(), Some(Token::Op(o)) if o == "=~" || o == "!~") => {
                let mut re = String::new();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' if chars.peek() == Some(&'/') => {
                            re.push('/');
                            chars.next();
                        }
                        '/' => {
                            closed = true;
                            break;
                        }
                        c => re.push(c),
                    }
                }
                if !closed {
                    return Err(InfluxQlError::Syntax("unterminated regex".into()));
                }
                out.push(Token::Regex(re));
            }
            '"' | '\'' => {
                let mut s = String::new();
                let mut closed = false;
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => match chars.next() {
                            Some(e) if e == c || e == '\\' => s.push(e),
                            Some('n') => s.push('\n'),
                            Some(e) => {
                                s.push('\\');
                                s.push(e);
                            }
                            None => break,
                        },
                        d if d == c => {
                            closed = true;
                            break;
                        }
                        d => s.push(d),
                    }
                }
                if !closed {
                    let what = if c == '"' { "identifier" } else { "string" };
                    return Err(InfluxQlError::Syntax(format!("unterminated quoted {what}")));
                }
                out.push(if c == '"' {
                    Token::Quoted(s)
                } else {
                    Token::Str(s)
                });
            }
            ';' => out.push(Token::Semicolon),
            c if is_word_char(c) => {
                let mut w = String::from(c);
                // `-` continues a word (tidemark's names allow it), unless
                // it starts a comment.
                while let Some(&d) = chars.peek() {
                    if is_word_char(d) {
                        w.push(d);
                        chars.next();
                    } else if d == '-' {
                        let mut ahead = chars.clone();
                        ahead.next();
                        if ahead.peek() == Some(&'-') {
                            break;
                        }
                        w.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Token::Word(w));
            }
            c => {
                let mut op = String::from(c);
                if let Some(&d) = chars.peek() {
                    let two = matches!(
                        (c, d),
                        ('=' | '!', '~') | ('!' | '<' | '>', '=') | ('<', '>')
                    );
                    if two {
                        op.push(d);
                        chars.next();
                    }
                }
                out.push(Token::Op(op));
            }
        }
    }
    Ok(out)
}

/// Parses `q` (statements separated by `;`) into the statements tidemark
/// answers; any other statement refuses the whole query.
pub fn parse(q: &str) -> Result<Vec<Statement>, InfluxQlError> {
    let tokens = lex(q)?;
    let statements: Vec<Statement> = tokens
        .split(|t| *t == Token::Semicolon)
        .filter(|s| !s.is_empty())
        .map(parse_statement)
        .collect::<Result<_, _>>()?;
    if statements.is_empty() {
        return Err(InfluxQlError::Empty);
    }
    Ok(statements)
}

/// The kind of a statement for messages: its leading keywords in upper
/// case (`SELECT`, `SHOW TAG KEYS`, `DROP RETENTION POLICY`).
fn kind(tokens: &[Token]) -> String {
    let Some(Token::Word(first)) = tokens.first() else {
        return tokens.first().map(Token::show).unwrap_or_default();
    };
    let mut words = vec![first.to_ascii_uppercase()];
    if ["SHOW", "CREATE", "DROP", "ALTER", "EXPLAIN"].contains(&words[0].as_str()) {
        for t in &tokens[1..] {
            match t {
                Token::Word(w) if KIND_WORDS.contains(&w.to_ascii_uppercase().as_str()) => {
                    words.push(w.to_ascii_uppercase())
                }
                _ => break,
            }
        }
    }
    words.join(" ")
}

fn parse_statement(tokens: &[Token]) -> Result<Statement, InfluxQlError> {
    let at = |i: usize| tokens.get(i);
    let is = |i: usize, kw: &str| at(i).is_some_and(|t| t.is(kw));
    if is(0, "SHOW") && is(1, "DATABASES") {
        return match at(2) {
            None => Ok(Statement::ShowDatabases),
            Some(t) => Err(unexpected(t, "SHOW DATABASES", "the end of the statement")),
        };
    }
    if is(0, "SHOW") && is(1, "MEASUREMENTS") {
        return parse_show_measurements(&tokens[2..]);
    }
    if is(0, "CREATE") && is(1, "DATABASE") {
        let Some(name) = at(2).and_then(Token::ident) else {
            let found = at(2).map_or("the end of the statement".into(), Token::show);
            return Err(InfluxQlError::Syntax(format!(
                "found {found}, expected a database name after CREATE DATABASE"
            )));
        };
        if let Some(t) = at(3) {
            if t.is("WITH") {
                return Err(InfluxQlError::UnsupportedClause {
                    statement: "CREATE DATABASE",
                    clause: "WITH (retention policy)".into(),
                    hint: "tidemark has no retention policies; set a database's retention with PUT /api/v1/databases/{db}/retention",
                });
            }
            return Err(unexpected(
                t,
                "CREATE DATABASE <name>",
                "the end of the statement",
            ));
        }
        if let Err(e) = tidemark_shards::schema::validate_database_name(name) {
            return Err(InfluxQlError::InvalidDatabase(e.to_string()));
        }
        return Ok(Statement::CreateDatabase {
            name: name.to_string(),
        });
    }
    let kind = kind(tokens);
    let first = kind.split(' ').next().unwrap_or_default();
    if STATEMENT_KEYWORDS.contains(&first) {
        Err(InfluxQlError::Unsupported { kind })
    } else {
        Err(InfluxQlError::Syntax(format!(
            "found {}, expected an InfluxQL statement (tidemark answers SHOW DATABASES, SHOW MEASUREMENTS and CREATE DATABASE; else {USE_SQL})",
            tokens[0].show()
        )))
    }
}

fn unexpected(found: &Token, after: &str, expected: &str) -> InfluxQlError {
    InfluxQlError::Syntax(format!(
        "found {} after {after}, expected {expected}",
        found.show()
    ))
}

/// The clauses after `SHOW MEASUREMENTS`.
fn parse_show_measurements(mut rest: &[Token]) -> Result<Statement, InfluxQlError> {
    const STMT: &str = "SHOW MEASUREMENTS";
    const HINT: &str = "GET /api/v1/measurements lists every measurement and its columns; or query with SQL at POST /api/v1/query";
    let mut on = None;
    let mut named = None;
    let mut limit = None;
    let mut offset = 0;
    let number = |t: Option<&Token>, what: &str| match t {
        Some(Token::Word(w)) => w.parse::<usize>().map_err(|_| {
            InfluxQlError::Syntax(format!("{what} needs a non-negative integer, found {w}"))
        }),
        t => Err(InfluxQlError::Syntax(format!(
            "{what} needs a non-negative integer, found {}",
            t.map_or("the end of the statement".into(), Token::show)
        ))),
    };
    while let Some(t) = rest.first() {
        if t.is("ON") {
            let Some(db) = rest.get(1).and_then(Token::ident) else {
                return Err(InfluxQlError::Syntax(
                    "ON needs a database name in SHOW MEASUREMENTS".into(),
                ));
            };
            on = Some(db.to_string());
            rest = &rest[2..];
        } else if t.is("WITH") && rest.get(1).is_some_and(|t| t.is("MEASUREMENT")) {
            match (rest.get(2), rest.get(3).and_then(Token::ident)) {
                (Some(Token::Op(op)), Some(name)) if op == "=" => {
                    named = Some(name.to_string());
                    rest = &rest[4..];
                }
                (Some(Token::Op(op)), _) => {
                    return Err(InfluxQlError::UnsupportedClause {
                        statement: STMT,
                        clause: format!("WITH MEASUREMENT {op}"),
                        hint: HINT,
                    })
                }
                _ => {
                    return Err(InfluxQlError::Syntax(
                        "WITH MEASUREMENT needs = <name> in SHOW MEASUREMENTS".into(),
                    ))
                }
            }
        } else if t.is("LIMIT") {
            limit = Some(number(rest.get(1), "LIMIT")?);
            rest = &rest[2..];
        } else if t.is("OFFSET") {
            offset = number(rest.get(1), "OFFSET")?;
            rest = &rest[2..];
        } else if t.is("WHERE") {
            return Err(InfluxQlError::UnsupportedClause {
                statement: STMT,
                clause: "WHERE".into(),
                hint: HINT,
            });
        } else {
            return Err(unexpected(t, STMT, "ON, WITH MEASUREMENT, LIMIT or OFFSET"));
        }
    }
    Ok(Statement::ShowMeasurements {
        on,
        named,
        limit,
        offset,
    })
}

/// Answers `statements` over the catalog's (database, measurement) pairs:
/// `{"results": [{"statement_id": i, ...}, ...]}`. `db` is the request's
/// `db` parameter.
pub fn execute(statements: &[Statement], db: Option<&str>, tables: &[(String, String)]) -> Value {
    // As in InfluxDB, a series without rows has no "values".
    let names = |name: &str, values: Vec<&str>| -> Value {
        let mut series = json!({"name": name, "columns": ["name"]});
        if !values.is_empty() {
            series["values"] = values.into_iter().map(|v| json!([v])).collect();
        }
        json!([series])
    };
    let results: Vec<Value> = statements
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut r = json!({"statement_id": i});
            match s {
                Statement::ShowDatabases => {
                    let dbs: BTreeSet<&str> = tables.iter().map(|(d, _)| d.as_str()).collect();
                    r["series"] = names("databases", dbs.into_iter().collect());
                }
                Statement::ShowMeasurements {
                    on,
                    named,
                    limit,
                    offset,
                } => match on.as_deref().or(db) {
                    None => r["error"] = json!("database name required"),
                    Some(db) => {
                        let found: BTreeSet<&str> = tables
                            .iter()
                            .filter(|(d, m)| d == db && named.as_ref().is_none_or(|n| n == m))
                            .map(|(_, m)| m.as_str())
                            .collect();
                        let found: Vec<&str> = found
                            .into_iter()
                            .skip(*offset)
                            .take(limit.unwrap_or(usize::MAX))
                            .collect();
                        if !found.is_empty() {
                            r["series"] = names("measurements", found);
                        }
                    }
                },
                Statement::CreateDatabase { .. } => {}
            }
            r
        })
        .collect();
    json!({ "results": results })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show_measurements(on: Option<&str>) -> Statement {
        Statement::ShowMeasurements {
            on: on.map(str::to_string),
            named: None,
            limit: None,
            offset: 0,
        }
    }

    #[test]
    fn supported_statements_in_any_case_and_quoting() {
        assert_eq!(parse("SHOW DATABASES"), Ok(vec![Statement::ShowDatabases]));
        assert_eq!(
            parse("  show   databases ;"),
            Ok(vec![Statement::ShowDatabases])
        );
        assert_eq!(
            parse("Show Measurements"),
            Ok(vec![show_measurements(None)])
        );
        assert_eq!(
            parse(r#"SHOW MEASUREMENTS ON "tele\"graf""#),
            Ok(vec![show_measurements(Some("tele\"graf"))])
        );
        assert_eq!(
            parse("show measurements on my-db with measurement = \"cpu\" limit 10 offset 2"),
            Ok(vec![Statement::ShowMeasurements {
                on: Some("my-db".into()),
                named: Some("cpu".into()),
                limit: Some(10),
                offset: 2,
            }])
        );
        assert_eq!(
            parse(r#"CREATE DATABASE "x""#),
            Ok(vec![Statement::CreateDatabase { name: "x".into() }])
        );
        assert_eq!(
            parse("create database telegraf -- the default"),
            Ok(vec![Statement::CreateDatabase {
                name: "telegraf".into()
            }])
        );
    }

    #[test]
    fn several_statements() {
        assert_eq!(
            parse("CREATE DATABASE a; SHOW DATABASES;/* c; */SHOW MEASUREMENTS ON \"a;b\""),
            Ok(vec![
                Statement::CreateDatabase { name: "a".into() },
                Statement::ShowDatabases,
                show_measurements(Some("a;b")),
            ])
        );
    }

    #[test]
    fn other_influxql_is_refused_by_kind_with_a_pointer_to_sql() {
        for (q, kind) in [
            ("SELECT mean(usage) FROM cpu", "SELECT"),
            ("select * from series", "SELECT"),
            ("SHOW SERIES FROM cpu", "SHOW SERIES"),
            ("show tag keys on db from cpu", "SHOW TAG KEYS"),
            ("SHOW RETENTION POLICIES ON db", "SHOW RETENTION POLICIES"),
            ("DROP DATABASE x", "DROP DATABASE"),
            ("DELETE FROM cpu", "DELETE"),
            ("SHOW DATABASES; SELECT 1", "SELECT"),
            (
                "CREATE RETENTION POLICY p ON db DURATION 1d REPLICATION 1",
                "CREATE RETENTION POLICY",
            ),
        ] {
            let e = parse(q).unwrap_err();
            assert_eq!(e, InfluxQlError::Unsupported { kind: kind.into() }, "{q}");
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("InfluxQL {kind} is not supported")),
                "{msg}"
            );
            assert!(msg.contains("POST /api/v1/query"), "{msg}");
        }
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert_eq!(parse(""), Err(InfluxQlError::Empty));
        assert_eq!(parse(" ; -- nothing"), Err(InfluxQlError::Empty));
        let syntax = |q: &str| match parse(q) {
            Err(InfluxQlError::Syntax(m)) => m,
            other => panic!("{q}: {other:?}"),
        };
        assert!(syntax("CREATE DATABASE").contains("expected a database name"));
        assert!(syntax("SHOW DATABASES now").contains("found now"));
        assert!(syntax("SHOW MEASUREMENTS LIMIT x").contains("LIMIT needs"));
        assert!(syntax("SHOW MEASUREMENTS ON").contains("ON needs a database"));
        assert!(syntax("SHOW MEASUREMENTS ON \"db").contains("unterminated"));
        assert!(syntax("hello world").contains("found hello"));
        assert!(matches!(
            parse("CREATE DATABASE \"1bad\""),
            Err(InfluxQlError::InvalidDatabase(_))
        ));
        assert!(matches!(
            parse("CREATE DATABASE x WITH DURATION 30d"),
            Err(InfluxQlError::UnsupportedClause { .. })
        ));
        for q in [
            "SHOW MEASUREMENTS WHERE host = 'a'",
            "SHOW MEASUREMENTS WITH MEASUREMENT =~ /c;pu/ LIMIT 5",
        ] {
            let e = parse(q).unwrap_err();
            assert!(
                matches!(e, InfluxQlError::UnsupportedClause { .. }),
                "{q}: {e:?}"
            );
            assert!(e.to_string().contains("/api/v1/measurements"), "{e}");
        }
    }

    fn tables() -> Vec<(String, String)> {
        [("b", "mem"), ("a", "disk"), ("b", "cpu"), ("a", "cpu")]
            .iter()
            .map(|(d, m)| (d.to_string(), m.to_string()))
            .collect()
    }

    #[test]
    fn results_in_influxdb_shape() {
        let t = tables();
        assert_eq!(
            execute(&[Statement::ShowDatabases], None, &t),
            json!({"results": [{"statement_id": 0, "series": [
                {"name": "databases", "columns": ["name"], "values": [["a"], ["b"]]}]}]})
        );
        assert_eq!(
            execute(&[show_measurements(None)], Some("b"), &t),
            json!({"results": [{"statement_id": 0, "series": [
                {"name": "measurements", "columns": ["name"], "values": [["cpu"], ["mem"]]}]}]})
        );
        // ON wins over db; nothing found: no series at all.
        assert_eq!(
            execute(&[show_measurements(Some("none"))], Some("b"), &t),
            json!({"results": [{"statement_id": 0}]})
        );
        assert_eq!(
            execute(&[show_measurements(None)], None, &t),
            json!({"results": [{"statement_id": 0, "error": "database name required"}]})
        );
        let limited = Statement::ShowMeasurements {
            on: Some("a".into()),
            named: None,
            limit: Some(1),
            offset: 1,
        };
        assert_eq!(
            execute(
                &[Statement::CreateDatabase { name: "x".into() }, limited],
                None,
                &t
            ),
            json!({"results": [{"statement_id": 0}, {"statement_id": 1, "series": [
                {"name": "measurements", "columns": ["name"], "values": [["disk"]]}]}]})
        );
        assert_eq!(
            execute(&[Statement::ShowDatabases], None, &[]),
            json!({"results": [{"statement_id": 0, "series": [
                {"name": "databases", "columns": ["name"]}]}]})
        );
    }
}
