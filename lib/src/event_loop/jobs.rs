//! The service path: framing and handling on the loop, or handing requests
//! to a handler pool (`-X`) and putting their answers back in order.

use std::sync::Arc;

use tracing::debug;

use super::input::Pending;
use super::output::BufPool;
use super::{Conn, Core, ListenerSetup};
use crate::handler::Handler;
use crate::pools::{Done, Job, Pool};
use crate::protocol::{CloseReason, ConnId};
use crate::service::{self, BatchEnd, Keep, Service, ServiceError};

impl Core {
    /// Feed bytes read from a service connection through framing and the
    /// service. `data` empty means: process what the connection holds.
    /// Its reads are then done for now ([`Conn::service_read_done`]).
    pub(super) fn feed_service(
        &mut self,
        id: ConnId,
        service: &dyn Service,
        setup: &ListenerSetup,
        data: &[u8],
    ) {
        if let (Some(pool), Handler::Service(shared)) = (&setup.pool, &setup.handler) {
            self.feed_pool(id, pool, shared, setup, data);
            let conn = &mut self.conns[id];
            conn.check_grace();
            conn.service_read_done(id, &mut self.dirty);
            return;
        }
        let direct = self.writes_inline();
        let conn = &mut self.conns[id];
        let pending = Pending::new(&mut conn.input, data);
        let used = serve(
            conn,
            &mut self.bufs,
            service,
            setup,
            pending.bytes(),
            direct,
        );
        conn.input = pending.keep_rest(used, conn.life.is_closing(), &mut self.bufs);
        conn.out.trim(&mut self.bufs);
        conn.check_grace();
        conn.service_read_done(id, &mut self.dirty);
    }

    /// Hand the complete requests in `data` (after what `id` holds) to
    /// `pool`, in order, until the pool or the connection's in-flight limit
    /// is full; the rest stays in the connection's input.
    pub(super) fn feed_pool(
        &mut self,
        id: ConnId,
        pool: &Arc<dyn Pool>,
        shared: &Arc<dyn Service>,
        setup: &ListenerSetup,
        data: &[u8],
    ) {
        let conn = &mut self.conns[id];
        let pending = Pending::new(&mut conn.input, data);
        let buf = pending.bytes();
        let max = setup.limits.max_request;
        let mut pos = 0;
        while pos < buf.len() && !conn.life.is_closing() {
            if conn.jobs.pending.len() >= setup.limits.max_pipelined {
                conn.life.holds.pool_waiting = true;
                break;
            }
            let rest = &buf[pos..];
            let len = match service::next_frame(&**shared, rest, max) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    // Answered in order, after the requests already running.
                    let mut response = Vec::new();
                    service::reply_error(&**shared, &e, &mut response);
                    let seq = conn.jobs.next_seq;
                    conn.jobs.next_seq += 1;
                    conn.jobs.pending.push_back(Some(Done {
                        conn: id,
                        seq,
                        response,
                        outcome: Err(e),
                    }));
                    pos = buf.len();
                    break;
                }
            };
            let job = Job {
                service: Arc::clone(shared),
                listener: conn.listener as u32,
                request: rest[..len].to_vec(),
                conn: id,
                seq: conn.jobs.next_seq,
                reply: self.reply.clone(),
                running: None,
            };
            // Full: ask to be woken when there is room, then try once more
            // (the room may have been made in between).
            let taken = pool.submit(job).or_else(|job| {
                pool.notify_room(&self.reply.waker);
                pool.submit(job)
            });
            match taken {
                Ok(()) => {
                    conn.jobs.next_seq += 1;
                    conn.jobs.pending.push_back(None);
                    pos += len;
                    self.jobs_out += 1;
                }
                Err(_) => {
                    conn.life.holds.pool_waiting = true;
                    self.pool_waiters.push(id);
                    break;
                }
            }
        }
        conn.input = pending.keep_rest(pos, conn.life.is_closing(), &mut self.bufs);
        self.emit_done(id);
    }

    /// Take in the requests pools have finished for this loop, and retry
    /// the connections that found a pool full (the wake may be the pool
    /// saying it has room).
    pub(super) fn complete_jobs(&mut self) {
        while let Ok(done) = self.completions.try_recv() {
            self.jobs_out = self.jobs_out.saturating_sub(1);
            let id = done.conn;
            let Some(conn) = self.conns.get_mut(id) else {
                // Its connection closed meanwhile.
                continue;
            };
            let Some(at) = done.seq.checked_sub(conn.jobs.write_seq) else {
                continue;
            };
            match conn.jobs.pending.get_mut(at as usize) {
                Some(entry @ None) => *entry = Some(done),
                // Not waited for (the connection is closing early).
                _ => continue,
            }
            conn.last_active = self.now;
            self.emit_done(id);
            let conn = &mut self.conns[id];
            if conn.life.holds.pool_waiting && !self.pool_waiters.contains(&id) {
                // It waited on its own in-flight limit: one has finished.
                conn.life.holds.pool_waiting = false;
                self.ready.push_back(id);
            }
        }
        for id in std::mem::take(&mut self.pool_waiters) {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.life.holds.pool_waiting = false;
                self.ready.push_back(id);
            }
        }
    }

    /// Move the finished responses at the head of `id`'s pending list
    /// into its output, in request order.
    pub(super) fn emit_done(&mut self, id: ConnId) {
        let cap = self.cap_of(id);
        let conn = &mut self.conns[id];
        let mut wrote = false;
        while let Some(Some(_)) = conn.jobs.pending.front() {
            let Some(Some(done)) = conn.jobs.pending.pop_front() else {
                break;
            };
            conn.jobs.write_seq += 1;
            conn.out.push_bytes(&done.response, &mut self.bufs);
            wrote = true;
            let reason = match done.outcome {
                Ok(Keep::Alive) => continue,
                Ok(Keep::Close) => CloseReason::Local,
                Err(e) => {
                    debug!(peer = ?conn.peer, "request error: {e}");
                    close_reason(&e)
                }
            };
            // Nothing after a closing response is sent: forget the rest.
            conn.life.close(Some(reason));
            conn.jobs.pending.clear();
            conn.input.clear();
            break;
        }
        conn.life.output_grew(conn.out.len(), cap);
        if wrote {
            self.mark_dirty(id);
        }
    }
}

/// Run complete requests at the front of `buf` through `service`, appending
/// responses to the connection's output. Returns the bytes consumed.
pub(super) fn serve(
    conn: &mut Conn,
    bufs: &mut BufPool,
    service: &dyn Service,
    setup: &ListenerSetup,
    buf: &[u8],
    direct: bool,
) -> usize {
    let max = setup.limits.max_request;
    let cap = setup.limits.output_cap;
    let coalesce = setup.coalesce;
    let mut pos = 0;
    while !conn.life.is_closing() && !conn.life.over_cap() {
        // Output pending before this batch, and where the batch starts
        // appending in the tail buffer.
        let queued = conn.out.len();
        let tail = conn.out.tail(bufs);
        let start = tail.len();
        let batch = service::serve_batch(service, &buf[pos..], max, tail, |out| {
            // -K stops after every response so it leaves at once.
            !coalesce || queued + out.len().saturating_sub(start) >= cap
        });
        pos += batch.consumed;
        match batch.end {
            BatchEnd::NeedMore => break,
            BatchEnd::Close => conn.life.close(Some(CloseReason::Local)),
            BatchEnd::Error(e) => {
                fail(conn, bufs, service, &e);
                return buf.len();
            }
            BatchEnd::Stopped => {}
        }
        // (Under -T completion the send is submitted when the batch is
        // done; what follows gathers behind it while it is out.)
        if !coalesce && direct {
            if let Err(e) = conn.out.flush(&mut conn.sock, bufs) {
                conn.life.close(Some(CloseReason::Io(e.kind())));
                conn.out.clear(bufs);
                return buf.len();
            }
        } else if !coalesce {
            // Completion: this response leaves in a send of its own.
            conn.out.seal();
        }
        conn.life.output_grew(conn.out.len(), cap);
    }
    pos
}

/// Send the service's error reply and close after it.
pub(super) fn fail(
    conn: &mut Conn,
    bufs: &mut BufPool,
    service: &dyn Service,
    error: &ServiceError,
) {
    debug!(peer = ?conn.peer, "request error: {error}");
    // A panicking error reply closes without one.
    service::reply_error(service, error, conn.out.tail(bufs));
    conn.life.close(Some(close_reason(error)));
}

/// What a connection closed by a failed request is told it closed for.
fn close_reason(error: &ServiceError) -> CloseReason {
    match error {
        ServiceError::TooLarge { .. } => CloseReason::TooLarge,
        ServiceError::Malformed(_) => CloseReason::Malformed,
        ServiceError::Internal(_) => CloseReason::Failed,
    }
}
