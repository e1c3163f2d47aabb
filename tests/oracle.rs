//! Correctness oracle: a generated data set is written over HTTP and
//! flushed; TSBS-style queries then run on tidemark and on DuckDB (the PyPI
//! `duckdb` package, through `tests/oracle.py`) over the same Parquet files,
//! and the results must be equal.
#![allow(clippy::unwrap_used)]

mod common;

use common::oracle::{check_against_duckdb, dataset};
use common::*;

#[test]
fn tsbs_queries_agree_with_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let data = dataset();
    for chunk in data.lines().collect::<Vec<_>>().chunks(3000) {
        let body = chunk.join("\n");
        assert_eq!(node.write_lp("bench", &body).status, 204);
    }
    node.flush();
    check_against_duckdb(&node, "bench");
}
