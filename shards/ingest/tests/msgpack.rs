//! Arc MessagePack: columnar, row and batch forms, unit detection, errors,
//! and a property test that columnar and row encodings of the same rows
//! decode to the same rows.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::mp::{bytes, map, s, M};
use common::{rows, V};
use proptest::prelude::*;
use tidemark_ingest::msgpack::parse;

const NOW: i64 = 1_700_000_000_000_000_000;

fn ok(m: &M) -> Vec<common::Row> {
    rows(&parse(&bytes(m), "db", NOW).unwrap().batches)
}

fn err(b: &[u8]) -> String {
    parse(b, "db", NOW).unwrap_err().to_string()
}

fn cols(pairs: &[(&str, V)]) -> BTreeMap<String, V> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[test]
fn columnar_with_unit_detection_and_type_inference() {
    let body = map(vec![
        ("m", s("cpu")),
        (
            "columns",
            map(vec![
                (
                    "time",
                    M::A(vec![M::I(1_700_000_000_000), M::I(1_700_000_001_000)]),
                ),
                ("host", M::A(vec![s("a"), s("b")])),
                ("usage", M::A(vec![M::I(1), M::F(2.5)])),
                ("count", M::A(vec![M::I(3), M::Nil])),
                ("up", M::A(vec![M::B(true), M::B(false)])),
                ("all_nil", M::A(vec![M::Nil, M::Nil])),
            ]),
        ),
    ]);
    let got = ok(&body);
    assert_eq!(
        got,
        vec![
            (
                "cpu".into(),
                1_700_000_000_000_000_000,
                cols(&[
                    ("host", V::Tag("a".into())),
                    ("usage", V::F(1.0)),
                    ("count", V::I(3)),
                    ("up", V::B(true)),
                ])
            ),
            (
                "cpu".into(),
                1_700_000_001_000_000_000,
                cols(&[
                    ("host", V::Tag("b".into())),
                    ("usage", V::F(2.5)),
                    ("up", V::B(false))
                ])
            ),
        ]
    );
}

#[test]
fn tag_keys_choose_the_tags() {
    let body = map(vec![
        ("m", s("logs")),
        ("tag_keys", M::A(vec![s("host")])),
        (
            "columns",
            map(vec![
                ("time", M::A(vec![M::I(1_700_000_000)])),
                ("host", M::A(vec![s("a")])),
                ("message", M::A(vec![s("hello")])),
            ]),
        ),
    ]);
    let got = ok(&body);
    assert_eq!(got[0].1, 1_700_000_000_000_000_000, "seconds detected");
    assert_eq!(
        got[0].2,
        cols(&[
            ("host", V::Tag("a".into())),
            ("message", V::S("hello".into()))
        ])
    );
}

#[test]
fn time_units_by_magnitude() {
    for (t, want) in [
        (1_700_000_000i64, 1_700_000_000_000_000_000i64),
        (1_700_000_000_000, 1_700_000_000_000_000_000),
        (1_700_000_000_000_000, 1_700_000_000_000_000_000),
        (1_700_000_000_000_000_123, 1_700_000_000_000_000_123),
    ] {
        let body = map(vec![
            ("m", s("m")),
            ("t", M::I(t)),
            ("fields", map(vec![("v", M::F(1.0))])),
        ]);
        assert_eq!(ok(&body)[0].1, want, "t = {t}");
    }
    let body = map(vec![
        ("m", s("m")),
        ("t", M::F(1_700_000_000.5)),
        ("fields", map(vec![("v", M::I(1))])),
    ]);
    assert_eq!(ok(&body)[0].1, 1_700_000_000_500_000_000);
}

#[test]
fn row_format_host_fields_array_and_missing_time() {
    let body = M::A(vec![
        map(vec![
            ("m", s("cpu")),
            ("t", M::I(1_700_000_000_000)),
            ("h", s("server1")),
            (
                "tags",
                map(vec![("region", s("eu")), ("host", s("ignored"))]),
            ),
            (
                "fields",
                map(vec![
                    ("usage", M::F(0.5)),
                    ("n", M::U(u64::MAX)),
                    ("msg", s("x")),
                ]),
            ),
        ]),
        map(vec![
            ("m", s("cpu")),
            ("h", M::I(7)),
            ("f", M::A(vec![M::F(1.0), M::B(true)])),
        ]),
        map(vec![
            ("m", s("cpu")),
            ("tags", map(vec![("host", s("kept"))])),
            ("fields", map(vec![("usage", M::F(1.5))])),
        ]),
    ]);
    let got = ok(&body);
    assert_eq!(
        got[0].2,
        cols(&[
            ("region", V::Tag("eu".into())),
            ("host", V::Tag("server1".into())),
            ("usage", V::F(0.5)),
            ("n", V::U(u64::MAX)),
            ("msg", V::S("x".into())),
        ])
    );
    assert_eq!(got[1].1, NOW, "no t: the time of the request");
    assert_eq!(
        got[1].2,
        cols(&[
            ("host", V::Tag("host_7".into())),
            ("field_0", V::F(1.0)),
            ("field_1", V::B(true)),
        ])
    );
    assert_eq!(
        got[2].2["host"],
        V::Tag("kept".into()),
        "tags.host stays without h"
    );
}

#[test]
fn batch_wrapper_and_mixed_forms() {
    let columnar = map(vec![
        ("m", s("a")),
        (
            "columns",
            map(vec![
                ("time", M::A(vec![M::I(1_700_000_000)])),
                ("v", M::A(vec![M::F(1.0)])),
            ]),
        ),
    ]);
    let row = map(vec![
        ("m", s("b")),
        ("t", M::I(1_700_000_000)),
        ("fields", map(vec![("v", M::I(2))])),
    ]);
    let got = ok(&map(vec![("batch", M::A(vec![columnar, row]))]));
    assert_eq!(got.len(), 2);
    let names: Vec<&str> = got.iter().map(|r| r.0.as_str()).collect();
    assert!(names.contains(&"a") && names.contains(&"b"));
}

#[test]
fn errors_name_the_record_the_column_and_the_reason() {
    let good = map(vec![("m", s("m")), ("fields", map(vec![("v", M::F(1.0))]))]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "truncated MessagePack data"),
        (vec![0xc1], "invalid MessagePack marker 0xc1"),
        (
            bytes(&M::I(3)),
            "body is integer, expected a map or an array of maps",
        ),
        (bytes(&good)[..5].to_vec(), "truncated MessagePack data"),
        (
            [bytes(&good), vec![0x00]].concat(),
            "1 trailing bytes after the MessagePack value",
        ),
        (
            bytes(&map(vec![("fields", map(vec![("v", M::F(1.0))]))])),
            "record 1: missing measurement \"m\"",
        ),
        (
            bytes(&map(vec![("m", s("m"))])),
            "record 1: record has no fields",
        ),
        (
            bytes(&map(vec![
                ("m", s("9x")),
                ("fields", map(vec![("v", M::F(1.0))])),
            ])),
            "record 1: invalid measurement name \"9x\": must start with a letter",
        ),
        (
            bytes(&M::A(vec![
                good.clone(),
                map(vec![
                    ("m", s("m")),
                    ("fields", map(vec![("v", M::A(vec![]))])),
                ]),
            ])),
            "record 2: \"v\": field is array, expected a scalar",
        ),
        (
            bytes(&M::A(vec![good.clone(), M::I(1)])),
            "record 2: is integer, expected a map",
        ),
        (
            bytes(&map(vec![
                ("m", s("m")),
                (
                    "columns",
                    map(vec![
                        ("time", M::A(vec![M::I(1), M::I(2)])),
                        ("v", M::A(vec![M::F(1.0)])),
                    ]),
                ),
            ])),
            "record 1: \"v\": has 1 values but \"time\" has 2",
        ),
        (
            bytes(&map(vec![
                ("m", s("m")),
                ("columns", map(vec![("v", M::A(vec![M::F(1.0), s("x")]))])),
            ])),
            "record 1: \"v\": mixes float and str values",
        ),
        (
            bytes(&map(vec![
                ("m", s("m")),
                (
                    "columns",
                    map(vec![
                        ("time", M::A(vec![s("x")])),
                        ("v", M::A(vec![M::F(1.0)])),
                    ]),
                ),
            ])),
            "record 1: \"time\": time is string, expected a number",
        ),
        (
            bytes(&M::A(vec![
                good.clone(),
                map(vec![("m", s("m")), ("fields", map(vec![("v", M::I(1))]))]),
            ])),
            "record 2: \"v\": is integer here but float in record 1",
        ),
    ];
    for (body, want) in cases {
        assert_eq!(err(&body), want);
    }
}

#[test]
fn declared_lengths_do_not_size_allocations() {
    // {"m":"cpu","columns":{"time": array32 of 0xffffffff items}} in 26 bytes,
    // and a tag_keys array32 of the same length (found by reading the fuzzer's
    // target code): refused as truncated, without allocating for 2^32 items.
    for hex in [
        "82a16da3637075a7636f6c756d6e7381a474696d65ddffffffff",
        "83a16da3637075a7636f6c756d6e7381a1769101a87461675f6b657973ddffffffff",
    ] {
        let body: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert!(
            err(&body).contains("truncated MessagePack data"),
            "{}",
            err(&body)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// The same rows sent columnar and row by row decode to the same rows.
    #[test]
    fn columnar_and_row_agree(
        rows_in in proptest::collection::vec(
            (1_600_000_000_000i64..1_800_000_000_000, "[a-c]{1,3}", proptest::option::of(-1e9f64..1e9), proptest::option::of(any::<i64>()), any::<bool>()),
            1..40)
    ) {
        let times = M::A(rows_in.iter().map(|r| M::I(r.0)).collect());
        let hosts = M::A(rows_in.iter().map(|r| s(&r.1)).collect());
        let usage = M::A(rows_in.iter().map(|r| r.2.map_or(M::Nil, M::F)).collect());
        let count = M::A(rows_in.iter().map(|r| r.3.map_or(M::Nil, M::I)).collect());
        let up = M::A(rows_in.iter().map(|r| M::B(r.4)).collect());
        let columnar = map(vec![("m", s("cpu")), ("columns", map(vec![
            ("time", times), ("host", hosts), ("usage", usage), ("count", count), ("up", up)]))]);
        let row_records = M::A(rows_in.iter().map(|r| {
            let mut fields = vec![("up", M::B(r.4))];
            if let Some(u) = r.2 { fields.push(("usage", M::F(u))); }
            if let Some(c) = r.3 { fields.push(("count", M::I(c))); }
            map(vec![("m", s("cpu")), ("t", M::I(r.0)), ("h", s(&r.1)), ("fields", map(fields))])
        }).collect());
        let a = rows(&parse(&bytes(&columnar), "db", NOW).unwrap().batches);
        let b = rows(&parse(&bytes(&row_records), "db", NOW).unwrap().batches);
        // Columns that are all null in the columnar form are absent, as in rows.
        prop_assert_eq!(a, b);
    }
}
