//! `date_trunc` with a fast path for UTC timestamps.
//!
//! Every `time` column is `Timestamp(ns, "UTC")`. DataFusion's `date_trunc`
//! truncates to hour and day with plain arithmetic only when the timestamp
//! has no time zone; with any zone, UTC included, it converts every value
//! through chrono, which made `GROUP BY date_trunc('hour', time)` spend most
//! of its time there. In UTC an hour and a day are fixed lengths, so this
//! wrapper truncates those arithmetically and hands everything else to
//! DataFusion's function unchanged.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use datafusion::arrow::datatypes::{
    ArrowTimestampType, DataType, FieldRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::{Result, ScalarValue};
use datafusion::functions::datetime::date_trunc::DateTruncFunc;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

/// `date_trunc` (and its alias `datetrunc`), registered over DataFusion's.
#[derive(Debug, PartialEq, Eq, Hash, Default)]
pub struct UtcDateTrunc {
    inner: DateTruncFunc,
}

impl UtcDateTrunc {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(UtcDateTrunc::default())
    }
}

fn is_utc(tz: &str) -> bool {
    matches!(tz, "UTC" | "+00:00")
}

/// The truncation step in the unit of the timestamps, for the granularities
/// DataFusion does not already handle arithmetically with a time zone.
fn utc_step(granularity: &str, unit: TimeUnit) -> Option<i64> {
    let secs = match granularity.to_ascii_lowercase().as_str() {
        "hour" => 3_600,
        "day" => 86_400,
        _ => return None,
    };
    Some(match unit {
        TimeUnit::Second => secs,
        TimeUnit::Millisecond => secs * 1_000,
        TimeUnit::Microsecond => secs * 1_000_000,
        TimeUnit::Nanosecond => secs * 1_000_000_000,
    })
}

fn truncate<T: ArrowTimestampType>(array: &ArrayRef, step: i64) -> ArrayRef {
    let a: &PrimitiveArray<T> = array.as_primitive();
    let out: PrimitiveArray<T> = a.unary(|v| v - v.rem_euclid(step));
    Arc::new(out.with_timezone_opt(a.timezone().map(Arc::<str>::from)))
}

/// The fast path, if it applies: a literal hour/day granularity over an
/// array of UTC timestamps.
fn fast_path(args: &ScalarFunctionArgs) -> Option<ArrayRef> {
    let [ColumnarValue::Scalar(g), ColumnarValue::Array(array)] = args.args.as_slice() else {
        return None;
    };
    let granularity = match g {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s,
        _ => return None,
    };
    let DataType::Timestamp(unit, Some(tz)) = array.data_type() else {
        return None;
    };
    if !is_utc(tz) {
        return None;
    }
    let step = utc_step(granularity, *unit)?;
    Some(match unit {
        TimeUnit::Second => truncate::<TimestampSecondType>(array, step),
        TimeUnit::Millisecond => truncate::<TimestampMillisecondType>(array, step),
        TimeUnit::Microsecond => truncate::<TimestampMicrosecondType>(array, step),
        TimeUnit::Nanosecond => truncate::<TimestampNanosecondType>(array, step),
    })
}

impl ScalarUDFImpl for UtcDateTrunc {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match fast_path(&args) {
            Some(array) => Ok(ColumnarValue::Array(array)),
            None => self.inner.invoke_with_args(args),
        }
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn output_ordering(&self, input: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(input)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::TimestampNanosecondArray;
    use datafusion::arrow::datatypes::Field;
    use datafusion::config::ConfigOptions;

    /// Runs `date_trunc(granularity, times)` through `f`.
    fn run(f: &dyn ScalarUDFImpl, granularity: &str, times: &ArrayRef) -> ArrayRef {
        let args = vec![
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(granularity.into()))),
            ColumnarValue::Array(Arc::clone(times)),
        ];
        let arg_fields = vec![
            Arc::new(Field::new("g", DataType::Utf8, false)),
            Arc::new(Field::new("t", times.data_type().clone(), true)),
        ];
        let out = f
            .invoke_with_args(ScalarFunctionArgs {
                args,
                arg_fields,
                number_rows: times.len(),
                return_field: Arc::new(Field::new("r", times.data_type().clone(), true)),
                config_options: Arc::new(ConfigOptions::default()),
            })
            .expect("date_trunc runs");
        out.into_array(times.len()).expect("an array")
    }

    #[test]
    fn same_as_datafusion_for_utc_and_other_zones() {
        // Around the epoch, negative values, exact boundaries, and a null.
        let values = [
            Some(-86_400_000_000_001),
            Some(-1),
            Some(0),
            Some(1),
            Some(3_599_999_999_999),
            Some(3_600_000_000_000),
            Some(1_767_275_595_123_456_789),
            None,
        ];
        let ours = UtcDateTrunc::default();
        let theirs = DateTruncFunc::new();
        for tz in [Some("UTC"), Some("+00:00"), Some("Europe/Paris"), None] {
            let times: ArrayRef =
                Arc::new(TimestampNanosecondArray::from(values.to_vec()).with_timezone_opt(tz));
            for g in ["hour", "day", "HOUR", "minute", "month", "year"] {
                let a = run(&ours, g, &times);
                let b = run(&theirs, g, &times);
                assert_eq!(a.as_ref(), b.as_ref(), "{g} {tz:?}");
                assert_eq!(a.data_type(), times.data_type());
            }
        }
    }

    #[test]
    fn fast_path_only_for_utc_hour_and_day() {
        let utc: ArrayRef =
            Arc::new(TimestampNanosecondArray::from(vec![1_500_000_000_000]).with_timezone("UTC"));
        let paris: ArrayRef = Arc::new(
            TimestampNanosecondArray::from(vec![1_500_000_000_000]).with_timezone("Europe/Paris"),
        );
        let args = |g: &str, t: &ArrayRef| ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Scalar(ScalarValue::Utf8(Some(g.into()))),
                ColumnarValue::Array(Arc::clone(t)),
            ],
            arg_fields: vec![],
            number_rows: 1,
            return_field: Arc::new(Field::new("r", t.data_type().clone(), true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        assert!(fast_path(&args("hour", &utc)).is_some());
        assert!(fast_path(&args("day", &utc)).is_some());
        assert!(fast_path(&args("month", &utc)).is_none());
        assert!(fast_path(&args("hour", &paris)).is_none());
    }
}
