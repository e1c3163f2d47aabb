//! Errors of ingest decoders: each names where (line or record number), what
//! (the field or tag, if any) and why.

use std::fmt;

/// What a position in a request body counts: lines (line protocol) or
/// records (MessagePack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Line,
    Record,
}

/// One problem with one line or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestError {
    /// 1-based line or record number; 0 when it concerns the whole body.
    pub at: usize,
    /// The tag or field at fault, if any.
    pub column: Option<String>,
    pub reason: String,
}

impl IngestError {
    pub fn new(at: usize, reason: impl Into<String>) -> IngestError {
        IngestError {
            at,
            column: None,
            reason: reason.into(),
        }
    }

    pub fn column(at: usize, column: &str, reason: impl Into<String>) -> IngestError {
        IngestError {
            at,
            column: Some(column.to_string()),
            reason: reason.into(),
        }
    }
}

/// The first errors of a request (at most [`IngestErrors::MAX`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestErrors {
    pub unit: Unit,
    pub errors: Vec<IngestError>,
    /// Whether more errors were found than are listed.
    pub more: bool,
}

impl IngestErrors {
    /// How many errors a response lists.
    pub const MAX: usize = 10;

    pub fn new(unit: Unit) -> IngestErrors {
        IngestErrors {
            unit,
            errors: Vec::new(),
            more: false,
        }
    }

    pub fn one(unit: Unit, e: IngestError) -> IngestErrors {
        IngestErrors {
            unit,
            errors: vec![e],
            more: false,
        }
    }

    pub fn push(&mut self, e: IngestError) {
        if self.errors.len() < Self::MAX {
            self.errors.push(e);
        } else {
            self.more = true;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for IngestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(c) => write!(f, "{c:?}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl fmt::Display for IngestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.unit {
            Unit::Line => "line",
            Unit::Record => "record",
        };
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if e.at > 0 {
                write!(f, "{unit} {}: ", e.at)?;
            }
            write!(f, "{e}")?;
        }
        if self.more {
            f.write_str("; (more errors not shown)")?;
        }
        Ok(())
    }
}

impl std::error::Error for IngestErrors {}
