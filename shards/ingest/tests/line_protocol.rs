//! Line protocol: examples of every syntax rule and error, and a property
//! test of the fast parser against a simple reference parser.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{rows, Row, V};
use proptest::prelude::*;
use tidemark_ingest::line_protocol::parse;
use tidemark_ingest::Precision;

const NOW: i64 = 1_700_000_000_123_456_789;

fn ok(body: &str) -> Vec<Row> {
    rows(
        &parse(body.as_bytes(), "db", Precision::Nanoseconds, NOW)
            .unwrap()
            .batches,
    )
}

fn err(body: &str) -> String {
    parse(body.as_bytes(), "db", Precision::Nanoseconds, NOW)
        .unwrap_err()
        .to_string()
}

fn cols(pairs: &[(&str, V)]) -> BTreeMap<String, V> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[test]
fn every_value_type_and_tags() {
    let got = ok("cpu,host=a,region=eu f=1.5,i=-3i,u=7u,s=\"hi\",b=t,neg=-2,e=1e3 1000\n");
    assert_eq!(
        got,
        vec![(
            "cpu".into(),
            1000,
            cols(&[
                ("host", V::Tag("a".into())),
                ("region", V::Tag("eu".into())),
                ("f", V::F(1.5)),
                ("i", V::I(-3)),
                ("u", V::U(7)),
                ("s", V::S("hi".into())),
                ("b", V::B(true)),
                ("neg", V::F(-2.0)),
                ("e", V::F(1000.0)),
            ])
        )]
    );
}

#[test]
fn booleans_comments_blank_lines_crlf_and_missing_timestamps() {
    let body = "# a comment\n\n  \r\nm b1=t,b2=T,b3=true,b4=True,b5=TRUE\r\nm c1=f,c2=F,c3=false,c4=False,c5=FALSE\n   # indented comment\n";
    let got = ok(body);
    assert_eq!(got.len(), 2);
    assert!(got[0].2.values().all(|v| *v == V::B(true)));
    assert!(got[1].2.values().all(|v| *v == V::B(false)));
    assert_eq!(got[0].1, NOW, "missing timestamp = receive time");
}

#[test]
fn escapes() {
    let got = ok(r#"meas,ta\ g\=k=v\,a\ l\=ue fi\,eld\ k\=ey="quote \" and \\ back\slash",x=1 5"#);
    assert_eq!(got[0].0, "meas");
    assert_eq!(
        got[0].2,
        cols(&[
            ("ta g=k", V::Tag("v,a l=ue".into())),
            ("fi,eld k=ey", V::S(r#"quote " and \ back\slash"#.into())),
            ("x", V::F(1.0)),
        ])
    );
}

#[test]
fn escaped_measurement_names_are_unescaped_then_checked() {
    assert_eq!(
        err(r"my\ meas\,x v=1"),
        "line 1: invalid measurement name \"my meas,x\": may hold only letters, digits, '_' and '-'"
    );
}

#[test]
fn precisions() {
    for (p, factor) in [
        (Precision::Nanoseconds, 1),
        (Precision::Microseconds, 1_000),
        (Precision::Milliseconds, 1_000_000),
        (Precision::Seconds, 1_000_000_000),
    ] {
        let d = parse(b"m v=1 1700000000", "db", p, NOW).unwrap();
        assert_eq!(rows(&d.batches)[0].1, 1_700_000_000 * factor);
    }
    let e = parse(b"m v=1 9223372036854775807", "db", Precision::Seconds, NOW).unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 1: timestamp 9223372036854775807 is out of range"
    );
}

#[test]
fn several_measurements_and_sparse_columns() {
    let d = parse(
        b"a x=1 1\nb y=2i 2\na z=\"s\" 3\n",
        "db",
        Precision::Nanoseconds,
        NOW,
    )
    .unwrap();
    assert_eq!(d.batches.len(), 2);
    assert_eq!(d.batches[0].num_rows(), 2);
    let a = d.batches[0].batch();
    assert_eq!(a.column_by_name("x").unwrap().null_count(), 1);
    assert_eq!(a.column_by_name("z").unwrap().null_count(), 1);
}

#[test]
fn errors_name_the_line_the_field_and_the_reason() {
    let cases = [
        ("m", "line 1: missing fields"),
        ("m ", "line 1: missing fields"),
        (",t=1 v=1", "line 1: missing measurement"),
        ("m,t v=1", "line 1: \"t\": tag without '=' and value"),
        ("m,t= v=1", "line 1: \"t\": tag without a value"),
        ("m v", "line 1: \"v\": field without '=' and value"),
        ("m v=", "line 1: \"v\": missing field value"),
        ("m v=abc", "line 1: \"v\": invalid value \"abc\""),
        ("m v=1.2.3", "line 1: \"v\": invalid float \"1.2.3\""),
        ("m v=1xi", "line 1: \"v\": invalid integer \"1xi\""),
        ("m v=-1u", "line 1: \"v\": invalid unsigned integer \"-1u\""),
        (
            "m v=99999999999999999999i",
            "line 1: \"v\": integer 99999999999999999999i is out of range",
        ),
        (
            "m v=\"open",
            "line 1: \"v\": string value without a closing quote",
        ),
        ("m v=inf", "line 1: \"v\": invalid value \"inf\""),
        ("m v=1 12x", "line 1: invalid timestamp \"12x\""),
        (
            "m v=1 1 2",
            "line 1: unexpected text after the timestamp: \"2\"",
        ),
        ("m v=1,v=2", "line 1: \"v\": appears twice"),
        (
            "m time=1",
            "line 1: \"time\": is reserved for the timestamp",
        ),
        (
            "1m v=1",
            "line 1: invalid measurement name \"1m\": must start with a letter",
        ),
        (
            "m.x v=1",
            "line 1: invalid measurement name \"m.x\": may hold only letters, digits, '_' and '-'",
        ),
    ];
    for (body, want) in cases {
        assert_eq!(err(body), want, "body {body:?}");
    }
    // A type conflict within the request names the line of each.
    assert_eq!(
        err("m v=1\nm v=2i\n"),
        "line 2: \"v\": is integer here but float in line 1"
    );
    // Several errors are listed, with their lines; nothing is returned.
    assert_eq!(
        err("m v=1\nbad\nm v=2\nm v=\n"),
        "line 2: missing fields; line 4: \"v\": missing field value"
    );
    assert_eq!(
        parse(b"m v=1\n\xff\n", "db", Precision::Nanoseconds, NOW)
            .unwrap_err()
            .to_string(),
        "line 2: is not valid UTF-8"
    );
}

// ---------------------------------------------------------------------------
// Reference parser: a deliberately plain char-by-char state machine.

#[derive(Debug, Clone, PartialEq)]
struct RefLine {
    measurement: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, V)>,
    time: Option<i64>,
}

fn ref_parse(body: &str) -> Vec<RefLine> {
    let mut out = Vec::new();
    for line in body.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        // Reads until an unescaped stop char; `esc` are the escapable chars.
        let read = |i: &mut usize, stops: &[char], esc: &[char]| -> String {
            let mut s = String::new();
            while *i < chars.len() {
                let c = chars[*i];
                if c == '\\' && *i + 1 < chars.len() && esc.contains(&chars[*i + 1]) {
                    s.push(chars[*i + 1]);
                    *i += 2;
                } else if stops.contains(&c) {
                    break;
                } else {
                    s.push(c);
                    *i += 1;
                }
            }
            s
        };
        let measurement = read(&mut i, &[',', ' '], &[',', ' ']);
        let mut tags = Vec::new();
        while i < chars.len() && chars[i] == ',' {
            i += 1;
            let k = read(&mut i, &['=', ',', ' '], &[',', '=', ' ']);
            i += 1; // '='
            let v = read(&mut i, &[',', ' '], &[',', '=', ' ']);
            tags.push((k, v));
        }
        while i < chars.len() && chars[i] == ' ' {
            i += 1;
        }
        let mut fields = Vec::new();
        loop {
            let k = read(&mut i, &['=', ',', ' '], &[',', '=', ' ']);
            i += 1; // '='
            let v = if chars[i] == '"' {
                i += 1;
                let mut s = String::new();
                while chars[i] != '"' {
                    if chars[i] == '\\' && (chars[i + 1] == '"' || chars[i + 1] == '\\') {
                        s.push(chars[i + 1]);
                        i += 2;
                    } else {
                        s.push(chars[i]);
                        i += 1;
                    }
                }
                i += 1;
                V::S(s)
            } else {
                let mut tok = String::new();
                while i < chars.len() && chars[i] != ',' && chars[i] != ' ' {
                    tok.push(chars[i]);
                    i += 1;
                }
                if let Some(n) = tok.strip_suffix('i') {
                    V::I(n.parse().unwrap())
                } else if let Some(n) = tok.strip_suffix('u') {
                    V::U(n.parse().unwrap())
                } else if ["t", "T", "true", "True", "TRUE"].contains(&tok.as_str()) {
                    V::B(true)
                } else if ["f", "F", "false", "False", "FALSE"].contains(&tok.as_str()) {
                    V::B(false)
                } else {
                    V::F(tok.parse().unwrap())
                }
            };
            fields.push((k, v));
            if i < chars.len() && chars[i] == ',' {
                i += 1;
            } else {
                break;
            }
        }
        let rest: String = chars[i..].iter().collect();
        let rest = rest.trim();
        let time = if rest.is_empty() {
            None
        } else {
            Some(rest.parse().unwrap())
        };
        out.push(RefLine {
            measurement,
            tags,
            fields,
            time,
        });
    }
    out
}

// ---------------------------------------------------------------------------
// Generator of random valid lines, written with escapes.

fn esc(s: &str, special: &[char]) -> String {
    let mut o = String::new();
    for c in s.chars() {
        if special.contains(&c) {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        // Any text without control characters that does not end in a
        // backslash (line protocol cannot express a trailing backslash
        // before a separator).
        "[a-zA-Z0-9 ,=\\\\é_\"-]{1,8}".prop_filter("no trailing backslash", |s| !s.ends_with('\\')),
        // Names as most clients write them: lines of only these take the
        // plain-line parser.
        "[a-z][a-z0-9_.]{0,20}",
    ]
}

fn value() -> impl Strategy<Value = V> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(V::F),
        any::<i64>().prop_map(V::I),
        any::<u64>().prop_map(V::U),
        "[a-z \"\\\\,=é]{0,8}".prop_map(V::S),
        any::<bool>().prop_map(V::B),
    ]
}

#[derive(Debug, Clone)]
struct GenLine {
    measurement: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, V)>,
    time: Option<i64>,
}

fn gen_line() -> impl Strategy<Value = GenLine> {
    (
        "[a-zA-Z][a-zA-Z0-9_-]{0,6}",
        proptest::collection::btree_map(name(), name(), 0..4),
        proptest::collection::btree_map(name(), value(), 1..5),
        proptest::option::of(any::<i64>()),
    )
        .prop_map(|(measurement, tags, fields, time)| GenLine {
            measurement,
            tags: tags.into_iter().collect(),
            fields: fields.into_iter().collect(),
            time,
        })
}

fn write(l: &GenLine) -> String {
    let mut s = esc(&l.measurement, &[',', ' ']);
    for (k, v) in &l.tags {
        s += &format!(",{}={}", esc(k, &[',', '=', ' ']), esc(v, &[',', '=', ' ']));
    }
    s.push(' ');
    let fields: Vec<String> = l
        .fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                V::F(f) => format!("{f:?}"),
                V::I(i) => format!("{i}i"),
                V::U(u) => format!("{u}u"),
                V::S(x) => format!("\"{}\"", esc(x, &['"', '\\'])),
                V::B(b) => {
                    if *b {
                        "true".into()
                    } else {
                        "F".into()
                    }
                }
                V::Tag(_) => unreachable!(),
            };
            format!("{}={}", esc(k, &[',', '=', ' ']), v)
        })
        .collect();
    s += &fields.join(",");
    if let Some(t) = l.time {
        s += &format!(" {t}");
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn fast_parser_agrees_with_reference_parser(lines in proptest::collection::vec(gen_line(), 1..12)) {
        // Keep one type per (measurement, column) and no tag/field name
        // clash, as a valid request must.
        let mut kinds: BTreeMap<(String, String), std::mem::Discriminant<V>> = BTreeMap::new();
        let mut lines = lines;
        lines.retain(|l| {
            let mut ok = l.tags.iter().all(|(k, _)| !l.fields.iter().any(|(f, _)| f == k))
                && l.tags.iter().map(|(k, _)| k).chain(l.fields.iter().map(|(k, _)| k)).all(|k| k != "time");
            let entries: Vec<(String, std::mem::Discriminant<V>)> = l.tags.iter().map(|(k, _)| (k.clone(), std::mem::discriminant(&V::Tag(String::new()))))
                .chain(l.fields.iter().map(|(k, v)| (k.clone(), std::mem::discriminant(v)))).collect();
            for (k, d) in &entries {
                if let Some(prev) = kinds.get(&(l.measurement.clone(), k.clone())) {
                    ok &= prev == d;
                }
            }
            if ok {
                for (k, d) in entries {
                    kinds.insert((l.measurement.clone(), k), d);
                }
            }
            ok
        });
        prop_assume!(!lines.is_empty());
        let body: String = lines.iter().map(write).collect::<Vec<_>>().join("\n");

        let reference = ref_parse(&body);
        prop_assert_eq!(reference.len(), lines.len());
        for (r, l) in reference.iter().zip(&lines) {
            prop_assert_eq!(&r.measurement, &l.measurement);
            prop_assert_eq!(&r.tags, &l.tags);
            prop_assert_eq!(&r.fields, &l.fields);
            prop_assert_eq!(r.time, l.time);
        }

        let decoded = parse(body.as_bytes(), "db", Precision::Nanoseconds, NOW)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{body}")))?;
        let fast = rows(&decoded.batches);
        // The fast parser groups rows by measurement; order the reference the same way.
        let mut order: Vec<String> = Vec::new();
        for r in &reference {
            if !order.contains(&r.measurement) { order.push(r.measurement.clone()); }
        }
        let mut want: Vec<Row> = Vec::new();
        for m in &order {
            for r in reference.iter().filter(|r| &r.measurement == m) {
                let mut c = BTreeMap::new();
                for (k, v) in &r.tags { c.insert(k.clone(), V::Tag(v.clone())); }
                for (k, v) in &r.fields { c.insert(k.clone(), v.clone()); }
                want.push((m.clone(), r.time.unwrap_or(NOW), c));
            }
        }
        prop_assert_eq!(fast, want);
    }
}
