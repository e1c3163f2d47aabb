//! Runtime-agnostic group commit for an append-only log.
//!
//! Every appender copies its entry into `pending` and gets a sequence number.
//! Whichever appender finds no commit in progress becomes the leader: it takes
//! *all* pending bytes, issues ONE write at the log's end offset and (if
//! enabled) ONE fdatasync through the runtime-specific [`Sink`], then marks
//! everything up to its sequence number durable and wakes every waiter.
//! Waiters that are not covered re-check and one of them leads the next group.
//!
//! Single-threaded by design (Rc/RefCell): one instance lives on one shard core.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// One durable "write this group at this offset" operation.
/// Implemented once per runtime / file API.
#[allow(async_fn_in_trait)]
pub trait Sink {
    /// Write `data` at logical offset `offset`, then fdatasync if `sync`.
    /// Returns the buffer for reuse when the runtime gives it back.
    async fn commit(&self, data: Vec<u8>, offset: u64, sync: bool) -> io::Result<Option<Vec<u8>>>;
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    spare: Vec<u8>,
    next_seq: u64,
    durable_seq: u64,
    committing: bool,
    end: u64,
    waiters: Vec<Waker>,
    /// handoff mode: waiters woken by the last commit that have not run yet
    woken_pending: usize,
    /// handoff mode: would-be leaders parked until `woken_pending` reaches 0
    gate: Vec<Waker>,
    commits: u64,
}

#[derive(Default)]
pub struct GroupCommit {
    st: RefCell<State>,
    /// Plain mode (false) is exactly "whichever task finds no commit in
    /// progress leads". Because the finishing leader returns, re-appends and
    /// finds the log idle before the tasks it just woke have run, groups then
    /// alternate 1, K-1, 1, K-1, ... (avg ~K/2).
    /// Handoff mode (true): while tasks woken by the last commit have not run
    /// yet, a would-be leader parks at a gate; the last woken task to run
    /// opens it and leads, so the group contains everyone's next entry.
    /// Runtime-agnostic (a wake_by_ref "yield" is not: monoio 0.2.4 re-queues
    /// a task that wakes itself at the FRONT of its run queue).
    handoff: bool,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct GcStats {
    pub appends: u64,
    pub commits: u64,
    pub bytes: u64,
}

impl GroupCommit {
    pub fn new(handoff: bool) -> Self {
        Self { handoff, ..Self::default() }
    }

    pub fn stats(&self) -> GcStats {
        let st = self.st.borrow();
        GcStats { appends: st.durable_seq, commits: st.commits, bytes: st.end }
    }

    /// Append one entry and return once it is covered by a completed commit.
    pub async fn append<S: Sink>(&self, sink: &S, entry: &[u8], sync: bool) -> io::Result<()> {
        let my_seq = {
            let mut st = self.st.borrow_mut();
            st.pending.extend_from_slice(entry);
            st.next_seq += 1;
            st.next_seq
        };
        loop {
            let lead = {
                let mut st = self.st.borrow_mut();
                if st.durable_seq >= my_seq {
                    return Ok(());
                }
                if st.committing {
                    Some(Park::Commit)
                } else if self.handoff && st.woken_pending > 0 {
                    Some(Park::Gate)
                } else {
                    st.committing = true;
                    let spare = std::mem::take(&mut st.spare);
                    let buf = std::mem::replace(&mut st.pending, spare);
                    let off = st.end;
                    st.end += buf.len() as u64;
                    Some(Park::Lead(buf, st.next_seq, off))
                }
            };
            match lead.unwrap() {
                Park::Commit => WaitTurn { registered: false, gate: false, gc: self }.await,
                Park::Gate => WaitTurn { registered: false, gate: true, gc: self }.await,
                Park::Lead(buf, upto, off) => {
                    let res = sink.commit(buf, off, sync).await;
                    let waiters = {
                        let mut st = self.st.borrow_mut();
                        st.committing = false;
                        if res.is_ok() {
                            st.durable_seq = upto;
                            st.commits += 1;
                        }
                        let w = std::mem::take(&mut st.waiters);
                        st.woken_pending = w.len();
                        w
                    };
                    // Wake everyone: covered waiters return, the rest elect the next leader.
                    for w in waiters {
                        w.wake();
                    }
                    match res {
                        Ok(Some(mut b)) => {
                            b.clear();
                            let mut st = self.st.borrow_mut();
                            if st.spare.capacity() < b.capacity() {
                                st.spare = b;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}

enum Park {
    Commit,
    Gate,
    Lead(Vec<u8>, u64, u64),
}

/// Parks the current task until the next commit finishes (`gate == false`),
/// or, in handoff mode, until all tasks woken by the last commit have run.
struct WaitTurn<'a> {
    registered: bool,
    gate: bool,
    gc: &'a GroupCommit,
}

impl Future for WaitTurn<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.gc.st.borrow_mut();
        if self.registered {
            if !self.gate && st.woken_pending > 0 {
                st.woken_pending -= 1;
                if st.woken_pending == 0 {
                    let gate = std::mem::take(&mut st.gate);
                    drop(st);
                    for w in gate {
                        w.wake();
                    }
                }
            }
            return Poll::Ready(());
        }
        if self.gate {
            st.gate.push(cx.waker().clone());
        } else {
            st.waiters.push(cx.waker().clone());
        }
        drop(st);
        self.registered = true;
        Poll::Pending
    }
}
