//! The store's bytes on disk: records, frames, replay of the log file,
//! the vote file, and the accounting of live bytes that decides compaction.

use super::*;

/// A log record as written (borrowing, so entries are serialized without a clone).
#[derive(Serialize)]
#[serde(bound = "")]
pub(super) enum RecordRef<'a, C: RaftTypeConfig> {
    Append(&'a [C::Entry]),
    TruncateFrom(u64),
    Purge(&'a LogId<C::NodeId>),
    Committed(&'a Option<LogId<C::NodeId>>),
}

/// A log record as read back. Same serde shape as [`RecordRef`].
#[derive(Deserialize)]
#[serde(bound = "")]
pub(super) enum Record<C: RaftTypeConfig> {
    Append(Vec<C::Entry>),
    TruncateFrom(u64),
    Purge(LogId<C::NodeId>),
    Committed(Option<LogId<C::NodeId>>),
}

/// Serializes `value` into a complete frame: header followed by the JSON payload.
pub(super) fn encode_frame<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; HEADER_LEN];
    serde_json::to_writer(&mut buf, value).map_err(io::Error::other)?;
    let payload = &buf[HEADER_LEN..];
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= MAX_PAYLOAD_LEN)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "record of {} bytes exceeds the {MAX_PAYLOAD_LEN} byte limit",
                    payload.len()
                ),
            )
        })?;
    let crc = crc32c::crc32c(payload);
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

pub(super) fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads into `buf` until it is full or EOF; returns how many bytes were read.
pub(super) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

pub(super) enum FrameRead {
    Frame(Vec<u8>),
    /// Clean end of file at a frame boundary.
    End,
    /// A torn or corrupt frame; the reason.
    Bad(String),
}

/// Reads the next frame. `remaining` is the number of file bytes left from the frame start.
pub(super) fn read_frame(r: &mut impl Read, remaining: u64) -> io::Result<FrameRead> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_up_to(r, &mut header)?;
    if got == 0 {
        return Ok(FrameRead::End);
    }
    if got < HEADER_LEN {
        return Ok(FrameRead::Bad(format!(
            "short header ({got} of {HEADER_LEN} bytes)"
        )));
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_PAYLOAD_LEN {
        return Ok(FrameRead::Bad(format!("implausible payload length {len}")));
    }
    if u64::from(len) + HEADER_LEN as u64 > remaining {
        return Ok(FrameRead::Bad(format!(
            "payload length {len} runs past the end of the file ({} bytes left)",
            remaining.saturating_sub(HEADER_LEN as u64)
        )));
    }
    let mut payload = vec![0u8; len as usize];
    let got = read_up_to(r, &mut payload)?;
    if got < payload.len() {
        return Ok(FrameRead::Bad(format!(
            "short payload ({got} of {len} bytes)"
        )));
    }
    let actual = crc32c::crc32c(&payload);
    if actual != crc {
        return Ok(FrameRead::Bad(format!(
            "crc mismatch (stored {crc:#010x}, computed {actual:#010x})"
        )));
    }
    Ok(FrameRead::Frame(payload))
}

/// Approximate number of bytes in `log` that still hold live entries, kept as runs of
/// consecutive indexes. Only used to decide when to compact; correctness never depends on it.
#[derive(Debug, Default)]
pub(super) struct LiveBytes {
    pub(super) runs: VecDeque<Run>,
    pub(super) total: u64,
}

#[derive(Debug)]
pub(super) struct Run {
    pub(super) first: u64,
    pub(super) count: u64,
    pub(super) bytes: u64,
}

impl Run {
    pub(super) fn scaled(&self, keep: u64) -> u64 {
        let bytes = u128::from(self.bytes) * u128::from(keep) / u128::from(self.count.max(1));
        u64::try_from(bytes).unwrap_or(self.bytes)
    }
}

impl LiveBytes {
    pub(super) fn append(&mut self, first: u64, count: u64, bytes: u64) {
        if count == 0 {
            return;
        }
        self.truncate_from(first);
        self.runs.push_back(Run {
            first,
            count,
            bytes,
        });
        self.total += bytes;
    }

    pub(super) fn truncate_from(&mut self, index: u64) {
        while let Some(run) = self.runs.back_mut() {
            if run.first >= index {
                self.total -= run.bytes;
                self.runs.pop_back();
            } else {
                if run.first.saturating_add(run.count) > index {
                    let keep = index - run.first;
                    let bytes = run.scaled(keep);
                    self.total -= run.bytes - bytes;
                    run.count = keep;
                    run.bytes = bytes;
                }
                break;
            }
        }
    }

    /// Forgets every index `<= index`.
    pub(super) fn purge_upto(&mut self, index: u64) {
        while let Some(run) = self.runs.front_mut() {
            let end = run.first.saturating_add(run.count); // exclusive
            if end <= index.saturating_add(1) {
                self.total -= run.bytes;
                self.runs.pop_front();
            } else {
                if run.first <= index {
                    let keep = end - (index + 1);
                    let bytes = run.scaled(keep);
                    self.total -= run.bytes - bytes;
                    run.first = index + 1;
                    run.count = keep;
                    run.bytes = bytes;
                }
                break;
            }
        }
    }

    pub(super) fn apply(&mut self, op: &LogOp, frame_len: usize) {
        match *op {
            LogOp::Append { first, count } => self.append(first, count, frame_len as u64),
            LogOp::TruncateFrom(index) => self.truncate_from(index),
            LogOp::PurgeUpto(index) => self.purge_upto(index),
            LogOp::Committed => {}
        }
    }
}

/// The result of replaying `log`.
pub(super) struct Replayed<C: RaftTypeConfig> {
    pub(super) log: BTreeMap<u64, C::Entry>,
    pub(super) last_purged: Option<LogId<C::NodeId>>,
    pub(super) committed: Option<LogId<C::NodeId>>,
    pub(super) live: LiveBytes,
    /// Length of the valid prefix.
    pub(super) valid_len: u64,
    /// Length of the file as found.
    pub(super) file_len: u64,
    /// Why replay stopped before the end of the file, if it did.
    pub(super) bad_tail: Option<String>,
}

pub(super) fn replay<C: RaftTypeConfig>(path: &Path) -> io::Result<Replayed<C>> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut out = Replayed::<C> {
        log: BTreeMap::new(),
        last_purged: None,
        committed: None,
        live: LiveBytes::default(),
        valid_len: 0,
        file_len,
        bad_tail: None,
    };
    loop {
        let remaining = file_len - out.valid_len;
        let payload = match read_frame(&mut reader, remaining)? {
            FrameRead::End => break,
            FrameRead::Bad(reason) => {
                out.bad_tail = Some(reason);
                break;
            }
            FrameRead::Frame(payload) => payload,
        };
        let record: Record<C> = match serde_json::from_slice(&payload) {
            Ok(record) => record,
            Err(e) => {
                out.bad_tail = Some(format!("undecodable record: {e}"));
                break;
            }
        };
        let frame_len = (HEADER_LEN + payload.len()) as u64;
        match record {
            Record::Append(entries) => {
                if let Some(first) = entries.first() {
                    let first = first.get_log_id().index;
                    out.live.append(first, entries.len() as u64, frame_len);
                }
                for entry in entries {
                    out.log.insert(entry.get_log_id().index, entry);
                }
            }
            Record::TruncateFrom(index) => {
                drop(out.log.split_off(&index));
                out.live.truncate_from(index);
            }
            Record::Purge(log_id) => {
                let index = log_id.index;
                if out.last_purged.as_ref() < Some(&log_id) {
                    out.last_purged = Some(log_id);
                }
                out.log = match index.checked_add(1) {
                    Some(keep_from) => out.log.split_off(&keep_from),
                    None => BTreeMap::new(),
                };
                out.live.purge_upto(index);
            }
            Record::Committed(committed) => out.committed = committed,
        }
        out.valid_len += frame_len;
    }
    Ok(out)
}

pub(super) fn read_vote_file<C: RaftTypeConfig>(
    path: &Path,
) -> io::Result<Option<Vote<C::NodeId>>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut reader = bytes.as_slice();
    let payload = match read_frame(&mut reader, bytes.len() as u64)? {
        FrameRead::Frame(payload) => payload,
        FrameRead::End => return Err(invalid_data(format!("{} is empty", path.display()))),
        FrameRead::Bad(reason) => {
            return Err(invalid_data(format!(
                "{} is corrupt: {reason}",
                path.display()
            )))
        }
    };
    if !reader.is_empty() {
        return Err(invalid_data(format!(
            "{} has trailing bytes",
            path.display()
        )));
    }
    let vote = serde_json::from_slice(&payload)
        .map_err(|e| invalid_data(format!("{} does not decode: {e}", path.display())))?;
    Ok(Some(vote))
}

pub(super) fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
