//! InfluxDB line protocol.
//!
//! ```text
//! measurement[,tag_key=tag_value...] field_key=field_value[,field_key=field_value...] [timestamp]
//! ```
//!
//! * Measurement names escape `,` and space with `\`; tag keys, tag values
//!   and field keys escape `,`, `=` and space. A `\` before any other byte is
//!   a literal backslash.
//! * Field values: floats (`1`, `-1.5`, `1e3`), integers `12i`, unsigned
//!   integers `12u`, strings in double quotes (escaping `"` and `\` with `\`),
//!   booleans `t T true True TRUE f F false False FALSE`.
//! * The timestamp is an integer in the request's precision; without one the
//!   row gets the time the request was received.
//! * Blank lines and lines starting with `#` are skipped; `\r\n` line endings
//!   are accepted.
//!
//! The parser builds Arrow columns directly (one builder per column), with no
//! row maps in between. A request is all or nothing: with any error nothing
//! is returned but the first errors, each naming the line and the field.

use std::borrow::Cow;

use crate::builder::{push_reserved, Decoded, RequestBuilder, Value};
use crate::error::{IngestError, IngestErrors, Unit};
use crate::precision::Precision;

/// Parses a whole line-protocol body for database `database`.
/// `now_ns` is the timestamp of rows that carry none.
pub fn parse(
    body: &[u8],
    database: &str,
    precision: Precision,
    now_ns: i64,
) -> Result<Decoded, IngestErrors> {
    let mut request = RequestBuilder::new("line");
    let mut errors = IngestErrors::new(Unit::Line);
    let mut values: Vec<(Cow<'_, str>, Value<'_>)> = Vec::with_capacity(16);
    let mut specials = Specials::default();
    let mut start = 0;
    let mut n = 0;
    // Lines end at `\n`; a body ending with one has no empty last line.
    while start < body.len() {
        n += 1;
        let end = specials.classify_line(body, start);
        let raw = &body[start..end];
        start = end + 1;
        let text = if specials.ascii {
            // SAFETY: every byte of the line is below 0x80
            // (`classify_line` saw no high bit), and ASCII is UTF-8.
            unsafe { std::str::from_utf8_unchecked(raw) }
        } else {
            // A line ends at `\n`, which no multi-byte UTF-8 sequence
            // holds: checking each line checks the body.
            match std::str::from_utf8(raw) {
                Ok(t) => t,
                Err(_) => {
                    errors.push(IngestError::new(n, "is not valid UTF-8"));
                    continue;
                }
            }
        };
        let mut line = text.strip_suffix('\r').unwrap_or(text);
        if line.starts_with([' ', '\t']) {
            // Rare: the special bytes are found again from the first
            // non-blank one.
            line = line.trim_start_matches([' ', '\t']);
            specials.classify_line(line.as_bytes(), 0);
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        values.clear();
        let plain = if specials.plain {
            parse_plain(line, &specials, &mut values, precision)
        } else {
            None
        };
        let parsed = match plain {
            Some(p) => p,
            None => {
                // Not plain, or not well-formed: the general parser takes
                // it and names the error.
                values.clear();
                match parse_line(line, &specials, &mut values, precision) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.push(e.at(n));
                        continue;
                    }
                }
            }
        };
        if !errors.is_empty() {
            // Keep reporting syntax errors, but build nothing more.
            continue;
        }
        let time = parsed.time.unwrap_or(now_ns);
        request.progress(start, body.len());
        let pushed = request
            .table(database, &parsed.measurement, n)
            .and_then(|t| t.push_row(n, time, &values));
        if let Err(e) = pushed {
            errors.push(e);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(request.finish())
}

/// A parse error before the line number is known.
struct LineError {
    column: Option<String>,
    reason: String,
}

impl LineError {
    fn new(reason: impl Into<String>) -> LineError {
        LineError {
            column: None,
            reason: reason.into(),
        }
    }
    fn column(column: &str, reason: impl Into<String>) -> LineError {
        LineError {
            column: Some(column.to_string()),
            reason: reason.into(),
        }
    }
    fn at(self, line: usize) -> IngestError {
        IngestError {
            at: line,
            column: self.column,
            reason: self.reason,
        }
    }
}

struct ParsedLine<'a> {
    measurement: Cow<'a, str>,
    time: Option<i64>,
}

/// A byte class table: `true` for the bytes that end a token, and for `\`
/// where it may start an escape. Every stop is one of [`SPECIAL`]'s bytes.
struct Stops([bool; 256]);

impl Stops {
    /// Stops at `stops`, and at `\` when `escapes`.
    const fn new(stops: &[u8], escapes: bool) -> Stops {
        let mut t = [false; 256];
        let mut i = 0;
        while i < stops.len() {
            t[stops[i] as usize] = true;
            i += 1;
        }
        t[b'\\' as usize] = escapes;
        Stops(t)
    }
}

/// Ends a measurement or a tag value.
static MEASUREMENT_STOPS: Stops = Stops::new(b", ", true);
/// Ends a tag or field key.
static KEY_STOPS: Stops = Stops::new(b",= ", true);
/// Ends an unquoted field value.
static VALUE_STOPS: Stops = Stops::new(b", \t", false);

/// Ends a timestamp.
static SPACE_STOPS: Stops = Stops::new(b" \t", false);

/// The bytes a token can end at (the union of the stops above): a line's
/// scan jumps from one to the next instead of testing every byte.
const SPECIAL: [u8; 5] = [b',', b' ', b'=', b'\\', b'\t'];

/// Where a line's [`SPECIAL`] bytes are: bit `i % 64` of word `i / 64` is
/// set when byte `i` is one. Built 16 bytes at a time (SSE2 compares on
/// x86_64); the parser then finds a token's end with a `trailing_zeros`
/// instead of a loop over its bytes that mispredicts its exit at every
/// token (the byte-by-byte scan was a third of a line-protocol node's CPU).
#[derive(Default)]
struct Specials {
    words: Vec<u64>,
    /// The line has no `\\`, tab or `"`: no escapes, no quoted strings, and
    /// every special byte is a `,`, `=` or space ([`parse_plain`]).
    plain: bool,
    /// The line is ASCII. It may say `false` of an ASCII line (the bytes
    /// after its `\n` in its last block count), never `true` of another.
    ascii: bool,
}

impl Specials {
    /// Classifies the line of `body` that starts at `start`, and returns
    /// where it ends: at its `\n`, or at the end of the body. The blocks
    /// are read from the body where 64 bytes remain (only the body's last
    /// block is copied), so one pass finds the line's end, its special
    /// bytes, and whether it is plain and ASCII: no separate search for
    /// the `\n`, UTF-8 check or copy of each line.
    fn classify_line(&mut self, body: &[u8], start: usize) -> usize {
        self.words.clear();
        let mut hard = false;
        let mut high = false;
        let mut at = start;
        loop {
            let m = match body.get(at..at + 64) {
                Some(block) => special_mask(block.try_into().expect("64 bytes")),
                None => {
                    // Zeros are neither special nor `\n`.
                    let mut block = [0u8; 64];
                    block[..body.len() - at].copy_from_slice(&body[at..]);
                    special_mask(&block)
                }
            };
            if m.newlines != 0 || at + 64 >= body.len() {
                let end = if m.newlines != 0 {
                    at + m.newlines.trailing_zeros() as usize
                } else {
                    body.len()
                };
                let len = end - at;
                if len > 0 {
                    self.words.push(m.specials & low_bits(len));
                }
                // The block's flags may come from the next line's bytes:
                // then this line's part decides.
                if m.hard && !hard {
                    hard = body[at..end].iter().any(|b| HARD.contains(b));
                }
                high |= m.high;
                self.plain = !hard;
                self.ascii = !high;
                return end;
            }
            self.words.push(m.specials);
            hard |= m.hard;
            high |= m.high;
            at += 64;
        }
    }

    /// The special bytes from the start of the line, in order.
    fn cursor(&self) -> Cursor<'_> {
        Cursor {
            words: &self.words,
            w: 0,
            bits: self.words.first().copied().unwrap_or(0),
        }
    }

    /// The first special byte at or after `from`, or `usize::MAX`.
    #[inline]
    fn next(&self, from: usize) -> usize {
        let mut w = from / 64;
        let Some(&first) = self.words.get(w) else {
            return usize::MAX;
        };
        let mut bits = first & (u64::MAX << (from % 64));
        while bits == 0 {
            w += 1;
            match self.words.get(w) {
                Some(&word) => bits = word,
                None => return usize::MAX,
            }
        }
        w * 64 + bits.trailing_zeros() as usize
    }
}

/// The bytes that make a line not plain ([`Specials::plain`]).
const HARD: [u8; 3] = [b'\\', b'\t', b'"'];

/// What [`special_mask`] finds in a 64-byte block.
struct BlockMask {
    /// Bit `i` set when byte `i` is one of [`SPECIAL`].
    specials: u64,
    /// Bit `i` set when byte `i` is `\n`.
    newlines: u64,
    /// Some byte is one of [`HARD`].
    hard: bool,
    /// Some byte is 0x80 or above (not ASCII).
    high: bool,
}

/// The bits below bit `n` (all of them from 64 on).
#[inline]
fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Classifies a 64-byte block, 16 bytes per SSE2 compare.
#[cfg(target_arch = "x86_64")]
#[inline]
fn special_mask(block: &[u8; 64]) -> BlockMask {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_setzero_si128,
    };
    let mut specials = 0u64;
    let mut newlines = 0u64;
    // SAFETY (every block below): SSE2 is part of every x86_64 target;
    // each load reads bytes 16k..16k + 16 of the 64-byte block (SSE2 loads
    // need no alignment).
    let (mut hard, mut any) = unsafe { (_mm_setzero_si128(), _mm_setzero_si128()) };
    for k in 0..4 {
        let (s, nl) = unsafe {
            let v = _mm_loadu_si128(block.as_ptr().add(16 * k).cast::<__m128i>());
            let eq = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
            // `\\` and tab are both special and hard.
            let escape_or_tab = _mm_or_si128(eq(HARD[0]), eq(HARD[1]));
            hard = _mm_or_si128(hard, _mm_or_si128(escape_or_tab, eq(HARD[2])));
            any = _mm_or_si128(any, v);
            let hit = _mm_or_si128(
                _mm_or_si128(eq(SPECIAL[0]), eq(SPECIAL[1])),
                _mm_or_si128(eq(SPECIAL[2]), escape_or_tab),
            );
            (_mm_movemask_epi8(hit), _mm_movemask_epi8(eq(b'\n')))
        };
        specials |= u64::from(s as u16) << (16 * k);
        newlines |= u64::from(nl as u16) << (16 * k);
    }
    // A byte's top bit is the movemask's bit.
    let (hard, high) = unsafe { (_mm_movemask_epi8(hard) != 0, _mm_movemask_epi8(any) != 0) };
    BlockMask {
        specials,
        newlines,
        hard,
        high,
    }
}

/// Classifies a 64-byte block.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn special_mask(block: &[u8; 64]) -> BlockMask {
    let mut m = BlockMask {
        specials: 0,
        newlines: 0,
        hard: false,
        high: false,
    };
    for (i, b) in block.iter().enumerate() {
        m.specials |= u64::from(SPECIAL.contains(b)) << i;
        m.newlines |= u64::from(*b == b'\n') << i;
        m.hard |= HARD.contains(b);
        m.high |= *b >= 0x80;
    }
    m
}

/// The special bytes of a line, one after another: each step clears the
/// lowest bit of a word, so finding the next token's end does not wait
/// for the byte loads of this one's (a chain of loads per token made the
/// general [`scan`] latency-bound).
struct Cursor<'s> {
    words: &'s [u64],
    w: usize,
    bits: u64,
}

impl Cursor<'_> {
    /// The position of the next special byte, or `usize::MAX`.
    #[inline]
    fn next(&mut self) -> usize {
        while self.bits == 0 {
            self.w += 1;
            match self.words.get(self.w) {
                Some(&word) => self.bits = word,
                None => return usize::MAX,
            }
        }
        let at = self.w * 64 + self.bits.trailing_zeros() as usize;
        self.bits &= self.bits - 1;
        at
    }

    /// The next special byte that is not `=` (which does not end a
    /// measurement or a tag value), or `usize::MAX`.
    #[inline]
    fn next_not_eq(&mut self, b: &[u8]) -> usize {
        loop {
            let at = self.next();
            if at >= b.len() || b[at] != b'=' {
                return at;
            }
        }
    }
}

/// Scans the line `b` (whose special bytes are `sp`) from `pos` to the
/// first unescaped stop byte (or the end). `\` followed by a byte in
/// `escapable` is an escape. Returns the end and whether any escape was
/// seen.
#[inline]
fn scan(b: &[u8], sp: &Specials, mut pos: usize, stops: &Stops, escapable: &[u8]) -> (usize, bool) {
    let mut escaped = false;
    loop {
        pos = sp.next(pos);
        if pos >= b.len() {
            return (b.len(), escaped);
        }
        let c = b[pos];
        if !stops.0[c as usize] {
            pos += 1;
            continue;
        }
        if c == b'\\' {
            if pos + 1 < b.len() && escapable.contains(&b[pos + 1]) {
                pos += 2;
                escaped = true;
            } else {
                pos += 1;
            }
            continue;
        }
        return (pos, escaped);
    }
}

/// `s` with every `\x` for `x` in `escapable` replaced by `x`. Inlined:
/// a token without escapes (almost all) is borrowed without a call (the
/// calls were 2.5% of a node's CPU under line protocol).
#[inline]
fn unescape<'a>(s: &'a str, escaped: bool, escapable: &[u8]) -> Cow<'a, str> {
    if escaped {
        Cow::Owned(unescape_owned(s, escapable))
    } else {
        Cow::Borrowed(s)
    }
}

#[inline(never)]
fn unescape_owned(s: &str, escapable: &[u8]) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() && escapable.contains(&b[i + 1]) {
            out.push(b[i + 1]);
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("removing ASCII escapes keeps UTF-8")
}

const MEASUREMENT_ESC: &[u8] = b", ";
const KEY_ESC: &[u8] = b",= ";

#[inline]
fn skip_spaces(b: &[u8], mut pos: usize) -> usize {
    while pos < b.len() && (b[pos] == b' ' || b[pos] == b'\t') {
        pos += 1;
    }
    pos
}

/// Parses a plain line ([`Specials::plain`]: no escapes, no quoted
/// strings, no tabs), where every `,`, `=` and space ends a token but `=`
/// inside a measurement or a tag value: the tokens' ends are the special
/// bytes in order ([`Cursor`]). `None` for anything this does not take
/// (several spaces between sections, a malformed line): [`parse_line`]
/// then parses the line and names the error. Whatever this returns is what
/// [`parse_line`] returns for the line (a property test checks it).
#[inline]
fn parse_plain<'a>(
    line: &'a str,
    sp: &Specials,
    values: &mut Vec<(Cow<'a, str>, Value<'a>)>,
    precision: Precision,
) -> Option<ParsedLine<'a>> {
    let b = line.as_bytes();
    let mut c = sp.cursor();
    // Measurement, ended by `,` or a space.
    let mut pos = c.next_not_eq(b);
    if pos == 0 || pos >= b.len() {
        return None;
    }
    let measurement = Cow::Borrowed(&line[..pos]);
    // Tags: `,key=value`, the value ended by `,` or a space.
    while b[pos] == b',' {
        values.reserve(1);
        let k = c.next();
        if k >= b.len() || b[k] != b'=' || k == pos + 1 {
            return None;
        }
        let v = c.next_not_eq(b);
        if v >= b.len() || v == k + 1 {
            return None;
        }
        push_reserved(
            values,
            Cow::Borrowed(&line[pos + 1..k]),
            Value::tag(Cow::Borrowed(&line[k + 1..v])),
        );
        pos = v;
    }
    // One space, then fields: `key=value`, separated by `,`.
    let mut start = pos + 1;
    if start >= b.len() || b[start] == b' ' {
        return None;
    }
    let end = loop {
        values.reserve(1);
        let k = c.next();
        if k >= b.len() || b[k] != b'=' || k == start {
            return None;
        }
        let v = c.next();
        let v = if v >= b.len() {
            b.len()
        } else if b[v] == b'=' {
            return None;
        } else {
            v
        };
        let key = Cow::Borrowed(&line[start..k]);
        let token = &line[k + 1..v];
        match simple_value(token.as_bytes()) {
            Some(value) => push_reserved(values, key, value),
            None => push_reserved(values, key, parse_scalar(token).ok()?),
        }
        if v < b.len() && b[v] == b',' {
            start = v + 1;
            continue;
        }
        break v;
    };
    // Then the end, or one space and a timestamp ending the line.
    if end == b.len() {
        return Some(ParsedLine {
            measurement,
            time: None,
        });
    }
    if c.next() != usize::MAX || end + 1 == b.len() {
        return None;
    }
    let raw = simple_int(&b[end + 1..])?;
    Some(ParsedLine {
        measurement,
        time: Some(precision.to_nanos(raw)?),
    })
}

fn parse_line<'a>(
    line: &'a str,
    sp: &Specials,
    values: &mut Vec<(Cow<'a, str>, Value<'a>)>,
    precision: Precision,
) -> Result<ParsedLine<'a>, LineError> {
    let b = line.as_bytes();
    let (end, esc) = scan(b, sp, 0, &MEASUREMENT_STOPS, MEASUREMENT_ESC);
    if end == 0 {
        return Err(LineError::new("missing measurement"));
    }
    let measurement = unescape(&line[..end], esc, MEASUREMENT_ESC);
    let mut pos = end;
    // Tags.
    while pos < b.len() && b[pos] == b',' {
        values.reserve(1);
        let (kend, kesc) = scan(b, sp, pos + 1, &KEY_STOPS, KEY_ESC);
        let key = unescape(&line[pos + 1..kend], kesc, KEY_ESC);
        if key.is_empty() {
            return Err(LineError::new("empty tag key"));
        }
        if kend >= b.len() || b[kend] != b'=' {
            return Err(LineError::column(&key, "tag without '=' and value"));
        }
        let (vend, vesc) = scan(b, sp, kend + 1, &MEASUREMENT_STOPS, KEY_ESC);
        if vend == kend + 1 {
            return Err(LineError::column(&key, "tag without a value"));
        }
        let value = unescape(&line[kend + 1..vend], vesc, KEY_ESC);
        push_reserved(values, key, Value::tag(value));
        pos = vend;
    }
    if pos >= b.len() {
        return Err(LineError::new("missing fields"));
    }
    pos = skip_spaces(b, pos);
    if pos >= b.len() {
        return Err(LineError::new("missing fields"));
    }
    // Fields.
    loop {
        values.reserve(1);
        let (kend, kesc) = scan(b, sp, pos, &KEY_STOPS, KEY_ESC);
        let key = unescape(&line[pos..kend], kesc, KEY_ESC);
        if key.is_empty() {
            return Err(LineError::new("empty field key"));
        }
        if kend >= b.len() || b[kend] != b'=' {
            return Err(LineError::column(&key, "field without '=' and value"));
        }
        let vstart = kend + 1;
        let (value, vend) = if b.get(vstart) == Some(&b'"') {
            parse_string(line, vstart).map_err(|r| LineError::column(&key, r))?
        } else {
            let (vend, _) = scan(b, sp, vstart, &VALUE_STOPS, b"");
            let token = &line[vstart..vend];
            (
                parse_scalar(token).map_err(|r| LineError::column(&key, r))?,
                vend,
            )
        };
        push_reserved(values, key, value);
        pos = vend;
        if pos < b.len() && b[pos] == b',' {
            pos += 1;
            continue;
        }
        break;
    }
    // Timestamp.
    pos = skip_spaces(b, pos);
    let time = if pos < b.len() {
        let (end, _) = scan(b, sp, pos, &SPACE_STOPS, b"");
        let token = &line[pos..end];
        if skip_spaces(b, end) != b.len() {
            return Err(LineError::new(format!(
                "unexpected text after the timestamp: {:?}",
                &line[end..].trim()
            )));
        }
        let raw: i64 = match simple_int(token.as_bytes()) {
            Some(t) => t,
            None => token
                .parse()
                .map_err(|_| LineError::new(format!("invalid timestamp {token:?}")))?,
        };
        Some(
            precision
                .to_nanos(raw)
                .ok_or_else(|| LineError::new(format!("timestamp {token} is out of range")))?,
        )
    } else {
        None
    };
    Ok(ParsedLine { measurement, time })
}

/// Parses a quoted string starting at `start` (the opening quote). Returns
/// the value and the position after the closing quote.
fn parse_string(line: &str, start: usize) -> Result<(Value<'_>, usize), String> {
    let b = line.as_bytes();
    let mut i = start + 1;
    let mut escaped = false;
    while i < b.len() {
        match b[i] {
            b'\\' if i + 1 < b.len() && (b[i + 1] == b'"' || b[i + 1] == b'\\') => {
                escaped = true;
                i += 2;
            }
            b'"' => {
                let raw = &line[start + 1..i];
                let s = unescape(raw, escaped, b"\"\\");
                let after = i + 1;
                if after < b.len() && !matches!(b[after], b',' | b' ' | b'\t') {
                    return Err("unexpected text after the closing quote".into());
                }
                return Ok((Value::string(s), after));
            }
            _ => i += 1,
        }
    }
    Err("string value without a closing quote".into())
}

/// Powers of ten exactly representable as `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The value of a plain decimal (`-?digits[.digits]`) whose digits, as one
/// integer, are below 2^53 and which has at most 22 digits after the point:
/// that integer and the power of ten are exact doubles, so one IEEE
/// division gives the correctly rounded value, the same as `str::parse`
/// (Clinger's fast path, without the general parser's set-up; float parsing
/// was 7.6% of a line-protocol node's CPU). `None` for anything else.
#[inline]
fn simple_float(b: &[u8]) -> Option<f64> {
    let (neg, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    let mut m: u64 = 0;
    let mut frac: Option<usize> = None;
    let mut n = 0usize;
    let mut significant = 0usize;
    for (i, &c) in digits.iter().enumerate() {
        let d = c.wrapping_sub(b'0');
        if d <= 9 {
            // Wraps only past 19 significant digits, which are declined
            // below: no overflow check (a multiply with an overflow flag)
            // per digit.
            m = m.wrapping_mul(10).wrapping_add(u64::from(d));
            n += 1;
            significant += usize::from(m != 0);
        } else if c == b'.' && frac.is_none() && n > 0 {
            frac = Some(i + 1);
        } else {
            return None;
        }
    }
    let k = frac.map_or(0, |f| digits.len() - f);
    if n == 0 || significant > 19 || frac == Some(digits.len()) || k > 22 || m >= 1 << 53 {
        return None;
    }
    let x = m as f64 / POW10[k];
    Some(if neg { -x } else { x })
}

/// The value of eight ASCII digits loaded as a little-endian word (the
/// first digit in the low byte), or `None` if any byte is not a digit: a
/// few multiplies instead of eight dependent multiply-adds (the 19-digit
/// timestamps of every line; as simdjson parses eight digits).
#[inline]
fn eight_digits(v: u64) -> Option<u32> {
    const NIBBLES: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    // A byte is a digit (0x30..=0x39) when its high nibble is 3 and stays 3
    // with 6 added. A digit's byte never carries into the next; a byte that
    // does is not a digit, and fails its own check.
    let digits = (v & NIBBLES) | ((v.wrapping_add(0x0606_0606_0606_0606) & NIBBLES) >> 4);
    if digits != 0x3333_3333_3333_3333 {
        return None;
    }
    // Pairs, then quads, then all eight, each step combining neighbours.
    let v = (v & 0x0F0F_0F0F_0F0F_0F0F).wrapping_mul(2561) >> 8;
    let v = (v & 0x00FF_00FF_00FF_00FF).wrapping_mul(6_553_601) >> 16;
    Some(((v & 0x0000_FFFF_0000_FFFF).wrapping_mul(42_949_672_960_001) >> 32) as u32)
}

/// The value of `-?digits` with at most 19 digits that fits an `i64`, in
/// one pass (the check of the digits and `str::parse` were two, 1.6% of a
/// line-protocol node's CPU with the timestamps). `None` for anything
/// else, which `str::parse` then takes or rejects with its message.
#[inline]
fn simple_int(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    // 19 digits are below 10^19 < 2^64: no overflow.
    let mut m: u64 = 0;
    let mut rest = digits;
    while let Some((eight, tail)) = rest.split_first_chunk::<8>() {
        m = m * 100_000_000 + u64::from(eight_digits(u64::from_le_bytes(*eight))?);
        rest = tail;
    }
    for &c in rest {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        m = m * 10 + u64::from(d);
    }
    if neg {
        // -2^63 is the one negative without a positive counterpart.
        (m <= 1 << 63).then(|| (m as i64).wrapping_neg())
    } else {
        i64::try_from(m).ok()
    }
}

/// The value of an unquoted field token in its usual forms, a plain
/// decimal ([`simple_float`]) or integer ([`simple_int`] and `i`); `None`
/// for the rest, which [`parse_scalar`] takes. Always inlined, so the value
/// is made where it goes: `parse_scalar`, a call, returns it in a stack
/// slot that the caller copied with loads wider than the stores that made
/// it, a stall the processor cannot forward (18% of the plain-line
/// parser's samples).
#[inline(always)]
fn simple_value(token: &[u8]) -> Option<Value<'static>> {
    let (&last, init) = token.split_last()?;
    match last {
        b'i' => simple_int(init).map(Value::integer),
        b'0'..=b'9' => simple_float(token).map(Value::float),
        _ => None,
    }
}

/// Parses an unquoted field value.
#[inline]
fn parse_scalar(token: &str) -> Result<Value<'_>, String> {
    if token.is_empty() {
        return Err("missing field value".into());
    }
    match token {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(Value::boolean(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(Value::boolean(false)),
        _ => {}
    }
    let bytes = token.as_bytes();
    let last = bytes[bytes.len() - 1];
    let digits_ok = |s: &str| {
        let s = s.strip_prefix('-').unwrap_or(s);
        !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())
    };
    match last {
        b'i' => {
            let n = &token[..token.len() - 1];
            if let Some(x) = simple_int(n.as_bytes()) {
                return Ok(Value::integer(x));
            }
            if !digits_ok(n) {
                return Err(format!("invalid integer {token:?}"));
            }
            n.parse()
                .map(Value::integer)
                .map_err(|_| format!("integer {token} is out of range"))
        }
        b'u' => {
            let n = &token[..token.len() - 1];
            if !digits_ok(n) || n.starts_with('-') {
                return Err(format!("invalid unsigned integer {token:?}"));
            }
            n.parse()
                .map(Value::unsigned)
                .map_err(|_| format!("unsigned integer {token} is out of range"))
        }
        _ => {
            let first = bytes[0];
            if !(first.is_ascii_digit() || first == b'-' || first == b'+' || first == b'.') {
                return Err(format!("invalid value {token:?}"));
            }
            if let Some(x) = simple_float(bytes) {
                return Ok(Value::float(x));
            }
            match token.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(Value::float(x)),
                Ok(_) => Err(format!("float {token} is out of range")),
                Err(_) => Err(format!("invalid float {token:?}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use std::borrow::Cow;

    use super::{
        parse_line, parse_plain, scan, simple_float, simple_int, Specials, Stops, KEY_ESC,
        KEY_STOPS, MEASUREMENT_ESC, MEASUREMENT_STOPS, SPACE_STOPS, VALUE_STOPS,
    };
    use crate::builder::Value;
    use crate::precision::Precision;

    type Parsed<'a> = (Cow<'a, str>, Option<i64>, Vec<(Cow<'a, str>, Value<'a>)>);

    /// Four tables of 300 rows each, interleaved as TSBS devops sends them:
    /// each table's columns are sized from how far through the body the
    /// parser is (a quarter of the lines), not grown step by step and not
    /// sized for every line of the body. Every value lands in its row.
    #[test]
    fn columns_are_sized_for_their_tables_share_of_the_body() {
        use arrow_array::cast::AsArray;
        use arrow_array::types::Int64Type;
        let mut body = String::new();
        for row in 0..300i64 {
            for (m, extra) in [("cpu", ""), ("mem", ",free=7i"), ("disk", ""), ("net", "")] {
                body.push_str(&format!(
                    "{m},host=h{} used={row}i,total={}i{extra} {}\n",
                    row % 10,
                    row * 3,
                    1_000 + row
                ));
            }
        }
        let d = super::parse(body.as_bytes(), "db", Precision::Nanoseconds, 0).unwrap();
        assert_eq!(d.batches.len(), 4);
        for wb in &d.batches {
            let b = wb.batch();
            assert_eq!(b.num_rows(), 300);
            let used = b
                .column_by_name("used")
                .unwrap()
                .as_primitive::<Int64Type>();
            assert!(used.values().iter().copied().eq(0..300));
            let total = b
                .column_by_name("total")
                .unwrap()
                .as_primitive::<Int64Type>();
            assert!(total.values().iter().copied().eq((0..300).map(|r| r * 3)));
            for c in ["used", "total"] {
                let bytes = b.column_by_name(c).unwrap().get_array_memory_size();
                assert!(
                    // Doubling would give room for 512, every line 1,200.
                    (300 * 8..340 * 8 + 256).contains(&bytes),
                    "{} {c}: {bytes} bytes for 300 values",
                    wb.table().measurement()
                );
            }
        }
    }

    /// What the plain-line parser makes of `line`: `None` when the line is
    /// not plain or the parser declines it.
    fn plain(line: &str, precision: Precision) -> Option<Parsed<'_>> {
        let mut sp = Specials::default();
        sp.classify_line(line.as_bytes(), 0);
        if !sp.plain {
            return None;
        }
        let mut values = Vec::new();
        let p = parse_plain(line, &sp, &mut values, precision)?;
        Some((p.measurement, p.time, values))
    }

    /// What the general parser makes of `line`, or its error's reason.
    fn general(line: &str, precision: Precision) -> Result<Parsed<'_>, String> {
        let mut sp = Specials::default();
        sp.classify_line(line.as_bytes(), 0);
        let mut values = Vec::new();
        let p = parse_line(line, &sp, &mut values, precision).map_err(|e| e.reason)?;
        Ok((p.measurement, p.time, values))
    }

    #[test]
    fn plain_lines_parse_as_the_general_parser_parses_them() {
        for line in [
            "cpu,host=a,region=us-east-1 usage=58.31,idle=1i,n=3u,ok=t 1451606400000",
            "cpu usage=1",
            "cpu,t=a=b v=-0.5 -12",
            "m=x,k=v f=T",
            "mé,té=vé fé=1.5e3 7",
        ] {
            let p =
                plain(line, Precision::Milliseconds).unwrap_or_else(|| panic!("{line:?} declined"));
            assert_eq!(Ok(p), general(line, Precision::Milliseconds), "{line}");
        }
        // Declined: not plain, malformed, or a form the general parser
        // takes (several spaces, a trailing space, a big timestamp).
        for line in [
            "m,t=a\\ b v=1",
            "m v=\"s\"",
            "m\tx v=1",
            "m v=1  5",
            "m  v=1",
            "m v=1 ",
            "m,t=a",
            "m,=a v=1",
            "m,t= v=1",
            "m, v=1",
            "m v=",
            "m v=1=2",
            "m =1",
            "m v=1,",
            "m v=1 5 6",
            "m v=1 99999999999999999999",
            "m v=1 9223372036854775807",
            ",t=a v=1",
            "m v=x",
        ] {
            assert_eq!(plain(line, Precision::Milliseconds), None, "{line}");
        }
    }

    /// A line's special bytes marked one by one, and whether it is plain
    /// and ASCII: the reference for `classify_line`.
    fn classify_bytes(line: &[u8]) -> (Vec<u64>, bool, bool) {
        let mut words = vec![0u64; line.len().div_ceil(64)];
        for (i, c) in line.iter().enumerate() {
            if b",= \\\t".contains(c) {
                words[i / 64] |= 1 << (i % 64);
            }
        }
        let plain = !line.iter().any(|c| b"\\\t\"".contains(c));
        (words, plain, line.is_ascii())
    }

    proptest! {
        /// A line found in a body by `classify_line` ends at its `\n` and
        /// has the special bytes and plainness that marking its bytes one
        /// by one gives; `ascii` is never claimed of a line that is not.
        #[test]
        fn lines_found_in_a_body_are_classified_as_alone(
            body in "([a-z]{0,70}[,= \\\\\t\"é\n]?){0,12}|[a-z,]{64}\n[a-z,]{0,70}",
        ) {
            let b = body.as_bytes();
            let mut found = Specials::default();
            let mut start = 0;
            while start < b.len() {
                let end = found.classify_line(b, start);
                let want = b[start..].iter().position(|&c| c == b'\n').map_or(b.len(), |i| start + i);
                prop_assert_eq!(end, want, "{:?} from {}", body, start);
                let line = &b[start..end];
                let (words, plain, ascii) = classify_bytes(line);
                prop_assert_eq!(&found.words, &words, "{:?} from {}", body, start);
                prop_assert_eq!(found.plain, plain, "{:?} from {}", body, start);
                prop_assert!(!found.ascii || ascii, "{:?} from {}", body, start);
                // Alone (the body is the line), `ascii` is exact.
                found.classify_line(line, 0);
                prop_assert_eq!((&found.words, found.plain, found.ascii), (&words, plain, ascii));
                start = end + 1;
            }
        }

        /// Whatever the plain-line parser takes, the general parser parses
        /// the same way; lines of tokens and separators in any order.
        #[test]
        fn plain_parses_never_differ_from_the_general_parser(
            line in "[a-cé0-9.,= tfi\\-]{0,40}",
        ) {
            if let Some(p) = plain(&line, Precision::Nanoseconds) {
                prop_assert_eq!(Ok(p), general(&line, Precision::Nanoseconds), "{:?}", line);
            }
        }

        /// Well-formed lines of the usual shape are all taken, and parse as
        /// the general parser parses them.
        #[test]
        fn well_formed_plain_lines_are_taken(
            measurement in "[a-z][a-z0-9_]{0,8}",
            tags in proptest::collection::vec(("[a-z][a-z_]{0,6}", "[a-zA-Z0-9._=-]{1,8}"), 0..5),
            fields in proptest::collection::vec(
                ("[a-z][a-z_]{0,6}", "(-?[0-9]{1,6}(\\.[0-9]{1,4})?|-?[0-9]{1,9}i|[0-9]{1,9}u|t|F|true|FALSE)"),
                1..5,
            ),
            time in proptest::option::of(-1_000_000_000_000i64..4_000_000_000_000_000_000),
        ) {
            let mut line = measurement;
            for (k, v) in &tags {
                line.push_str(&format!(",{k}={v}"));
            }
            let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            line.push(' ');
            line.push_str(&fields.join(","));
            if let Some(t) = time {
                line.push_str(&format!(" {t}"));
            }
            let p = plain(&line, Precision::Nanoseconds);
            prop_assert!(p.is_some(), "{:?} declined", line);
            prop_assert_eq!(Ok(p.unwrap()), general(&line, Precision::Nanoseconds), "{:?}", line);
        }
    }

    /// The byte-by-byte scan that [`scan`] replaced: the reference.
    fn scan_bytes(b: &[u8], mut pos: usize, stops: &Stops, escapable: &[u8]) -> (usize, bool) {
        let mut escaped = false;
        loop {
            while pos < b.len() && !stops.0[b[pos] as usize] {
                pos += 1;
            }
            if pos < b.len() && b[pos] == b'\\' {
                if pos + 1 < b.len() && escapable.contains(&b[pos + 1]) {
                    pos += 2;
                    escaped = true;
                } else {
                    pos += 1;
                }
                continue;
            }
            return (pos, escaped);
        }
    }

    /// Every value the fast path takes is the value `str::parse` gives, bit
    /// for bit; what it declines falls back to `str::parse`.
    #[test]
    fn simple_floats_are_exactly_what_std_parses() {
        for s in [
            "0",
            "-0",
            "0.0",
            "1",
            "58",
            "58.5",
            "-3.25",
            "00.10",
            "9007199254740991",
            "0.1",
            "0.3",
            "123456.789",
            "-0.000000000000000000001",
        ] {
            let std: f64 = s.parse().unwrap();
            let x = simple_float(s.as_bytes()).unwrap_or_else(|| panic!("{s} declined"));
            assert_eq!(x.to_bits(), std.to_bits(), "{s}");
        }
        // Declined (str::parse takes them): too many digits for an exact
        // integer, or not the plain form.
        for s in [
            "",
            "-",
            ".",
            "1.",
            ".5",
            "1e5",
            "1.2.3",
            "+1",
            "9007199254740992",
            "1-2",
            "nan",
            "4503599627370496.5",
            "1.0000000000000000000001",
            "0.00000000000000000000001",
            // Past 19 significant digits: declined, not wrapped.
            "18446744073709551617",
            "1844674407370955161.7",
        ] {
            assert_eq!(simple_float(s.as_bytes()), None, "{s}");
        }
    }

    proptest! {
        /// Lines of special bytes, other ASCII and UTF-8, with long runs
        /// without a special byte (a 64-byte word with none), scanned from
        /// every start.
        #[test]
        fn scan_finds_what_a_byte_by_byte_scan_finds(
            head in "a{0,140}",
            mid in "[a,= \\\\\t\"é]{0,150}",
            tail in "b{0,140}",
        ) {
            let line = format!("{head}{mid}{tail}");
            let b = line.as_bytes();
            let mut sp = Specials::default();
            sp.classify_line(b, 0);
            let sets: [(&Stops, &[u8]); 5] = [
                (&MEASUREMENT_STOPS, MEASUREMENT_ESC),
                (&KEY_STOPS, KEY_ESC),
                (&MEASUREMENT_STOPS, KEY_ESC),
                (&VALUE_STOPS, b""),
                (&SPACE_STOPS, b""),
            ];
            for from in 0..=b.len() {
                for (stops, esc) in sets {
                    prop_assert_eq!(
                        scan(b, &sp, from, stops, esc),
                        scan_bytes(b, from, stops, esc),
                        "{:?} from {}", line, from
                    );
                }
            }
        }
    }

    /// Whatever the fast integer path takes is what `str::parse` gives.
    #[test]
    fn simple_ints_are_what_std_parses() {
        for s in [
            "0",
            "-0",
            "58",
            "-58",
            "007",
            "9223372036854775807",
            "-9223372036854775808",
            "1451606400000000000",
        ] {
            assert_eq!(
                simple_int(s.as_bytes()),
                Some(s.parse::<i64>().unwrap()),
                "{s}"
            );
        }
        for s in [
            "",
            "-",
            "+1",
            "1.5",
            "1e3",
            "12a",
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
            "00000000000000000001",
        ] {
            assert_eq!(simple_int(s.as_bytes()), None, "{s}");
        }
    }

    /// One byte that is not a digit, at any position of a 19-digit number
    /// (so in either eight-digit word or the three after): declined. `/` and
    /// `:` are the bytes on each side of the digits.
    #[test]
    fn one_odd_byte_anywhere_is_declined() {
        let number = *b"1234567890123456789";
        for at in 0..number.len() {
            for odd in [0u8, b'/', b':', b' ', b'.', b'a', b'i', 0x80, 0xfa, 0xff] {
                let mut b = number;
                b[at] = odd;
                assert_eq!(simple_int(&b), None, "{at} {odd:#x}");
                if at < 16 {
                    assert_eq!(simple_int(&b[..16]), None, "{at} {odd:#x}");
                }
            }
        }
        assert_eq!(simple_int(&number), Some(1_234_567_890_123_456_789));
        assert_eq!(simple_int(&number[..16]), Some(1_234_567_890_123_456));
        assert_eq!(simple_int(b"99999999"), Some(99_999_999));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn random_integers_match_std(s in "-?[0-9]{0,21}") {
            if let Some(x) = simple_int(s.as_bytes()) {
                prop_assert_eq!(Ok(x), s.parse::<i64>(), "{}", s);
            } else {
                // Declined: too long, or not an i64 (str::parse agrees
                // or the slow path takes it).
                prop_assert!(s.trim_start_matches('-').len() > 19 || s.parse::<i64>().is_err(), "{}", s);
            }
        }

        /// Bytes next to the digits' range (`/` and `:`), and others, in
        /// any position of eight: declined, as `str::parse` refuses them.
        #[test]
        fn integers_with_other_bytes_are_declined(s in "-?[0-9/:a. \\x00\\xff]{0,21}") {
            match simple_int(s.as_bytes()) {
                Some(x) => prop_assert_eq!(Ok(x), s.parse::<i64>(), "{}", s),
                None => prop_assert!(
                    s.trim_start_matches('-').len() > 19 || s.parse::<i64>().is_err(),
                    "{}",
                    s
                ),
            }
        }

        #[test]
        fn random_decimals_match_std(neg: bool, int in 0u64..10_000_000_000, frac in "[0-9]{0,12}") {
            let s = format!("{}{int}{}{frac}", if neg { "-" } else { "" }, if frac.is_empty() { "" } else { "." });
            let std: f64 = s.parse().unwrap();
            if let Some(x) = simple_float(s.as_bytes()) {
                prop_assert_eq!(x.to_bits(), std.to_bits(), "{}", s);
            }
        }
    }
}
