//! Frames over monoio sockets: a read buffer that yields whole frames, and
//! helpers that write them.

use std::io;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use tidemark_shards::replication::frame::{self, Frame, FrameError};

/// Bytes read from a socket, handed out frame by frame.
#[derive(Debug, Default)]
pub struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
}

fn invalid(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl FrameBuf {
    pub fn new() -> FrameBuf {
        FrameBuf {
            buf: Vec::with_capacity(64 << 10),
            start: 0,
        }
    }

    /// The body (type byte first) of the next whole frame buffered, if any.
    pub fn next_frame(&mut self) -> io::Result<Option<Range<usize>>> {
        let avail = &self.buf[self.start..];
        let Some(h) = avail.get(..4) else {
            return Ok(None);
        };
        let len = frame::frame_len(h.try_into().expect("4 bytes")).map_err(invalid)?;
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let body = self.start + 4..self.start + 4 + len;
        self.start = body.end;
        Ok(Some(body))
    }

    /// The bytes of a range [`FrameBuf::next_frame`] returned; valid until
    /// the next [`FrameBuf::fill`].
    pub fn get(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// Decodes the frame body at `r`.
    pub fn frame(&self, r: Range<usize>) -> io::Result<Frame<'_>> {
        frame::decode_body(&self.buf[r]).map_err(invalid)
    }

    /// Reads more bytes from `r` (at least one), keeping the frames not yet
    /// handed out. An orderly close is `UnexpectedEof`.
    pub async fn fill<R: AsyncReadRent>(&mut self, r: &mut R) -> io::Result<()> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Room for the frame being received, and at least 64 KiB.
        let need = match self.buf.get(..4) {
            Some(h) => 4 + frame::frame_len(h.try_into().expect("4 bytes")).map_err(invalid)?,
            None => 0,
        };
        let want = need.max(self.buf.len() + (64 << 10));
        self.buf.reserve(want.saturating_sub(self.buf.len()));
        let len = self.buf.len();
        let cap = self.buf.capacity();
        let buf = std::mem::take(&mut self.buf);
        let (res, slice) = r.read(buf.slice_mut(len..cap)).await;
        self.buf = slice.into_inner();
        match res? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection",
            )),
            _ => Ok(()),
        }
    }

    /// Reads until a whole frame is buffered and returns its body range,
    /// failing after `timeout`.
    pub async fn read_frame<R: AsyncReadRent>(
        &mut self,
        r: &mut R,
        timeout: Duration,
    ) -> io::Result<Range<usize>> {
        loop {
            if let Some(f) = self.next_frame()? {
                return Ok(f);
            }
            match monoio::time::timeout(timeout, self.fill(r)).await {
                Ok(res) => res?,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the peer sent nothing for {} ms", timeout.as_millis()),
                    ))
                }
            }
        }
    }
}

/// Writes one (small) frame.
pub async fn send<W: AsyncWriteRent>(w: &mut W, f: &Frame<'_>) -> io::Result<()> {
    let (res, _) = w.write_all(f.to_vec()).await;
    res.map(|_| ())
}

/// Writes an `Entries` frame: its header, then `data` as it is (a slice of
/// the WAL's ring or of a memory-mapped segment: no copy).
pub async fn send_entries<W: AsyncWriteRent>(
    w: &mut W,
    header: [u8; frame::ENTRIES_HEADER_LEN],
    data: Bytes,
) -> io::Result<()> {
    let (res, _) = w.write_all(Box::new(header)).await;
    res?;
    let (res, _) = w.write_all(data).await;
    res.map(|_| ())
}
