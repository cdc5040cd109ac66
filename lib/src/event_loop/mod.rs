//! Layer 3: the event loop.
//!
//! One loop owns its listeners' accept path, its connections, their buffers,
//! the timer table and the write path. It reads into its own buffers and
//! hands bytes to handlers; it carries out the writes, file sends, connects,
//! pauses and timers that handlers ask for. Handlers never make syscalls.
//!
//! ```text
//!  poll (edge) ──► accept ──► Conn ──read──► scratch ──┬─► Service framing ─► handle ─┐
//!                                                      └─► Protocol::on_data ─────────┤
//!                                                                                     ▼
//!  socket ◄── writev / sendfile ◄── OutQueue ◄────────────── response bytes / file ranges
//! ```
//!
//! Bounds, all from the listener's [`Limits`]:
//! - reads go into one loop-wide scratch buffer; only an incomplete request
//!   is copied into the connection (at most `max_request` + one read);
//! - output above `output_cap` pauses reading from that connection (services)
//!   or makes [`Ctx::write`] answer [`crate::Queued::OverCap`] (protocols)
//!   until it drains to half the cap;
//! - every connection has an idle deadline; outbound connects a connect
//!   deadline; closes after an error reply a lingering deadline;
//! - reads continue until the socket is drained (WouldBlock, or a short
//!   read, which empties the queue just as surely: new bytes raise a new
//!   edge); a readiness event reads at most [`READ_BUDGET`] times before the
//!   connection goes to the back of the ready queue, so one fast peer cannot
//!   starve the others.
//!
//! The files, one concern each:
//!
//! | file | what it holds |
//! |---|---|
//! | `settings.rs` | [`Limits`], [`ListenerSetup`], [`LoopSettings`], [`LoopHandle`] |
//! | `run.rs` | [`Loop`]: building it, the wait, acting on events, timers, shutdown |
//! | `state.rs` | `Core`, the state callbacks may touch: tables, deadlines, settling |
//! | `lifecycle.rs` | a connection's life as a plain state machine (phase, holds, backpressure) |
//! | `conn.rs` | `Conn`: socket, buffers, lifecycle, service-only and protocol-only parts; sessions |
//! | `accept.rs` | listeners: limits, back-off, adopting sockets |
//! | `read.rs` | reads and splices into the service or the protocol; bytes held back while reading is blocked |
//! | `input.rs` | unconsumed input: the one routine that keeps a tail of bytes, and [`Unconsumed`] for handlers |
//! | `splice.rs` | splices between connections: room, stalls, accounting, shared by the backends |
//! | `jobs.rs` | the service path: framing inline, or jobs for a handler pool |
//! | `write.rs` | flushing output and what follows it (half-close, close, linger) |
//! | `connect.rs` | outbound connections of protocol sessions |
//! | `close.rs` | closing and telling sessions |
//! | `io.rs` | what the state machine asks of the backend: `Backend`, and every branch on it for a connection's or listener's I/O |
//! | `completion.rs` | `-T completion` (io_uring) carrying those requests out, and its completions reported back |
//! | `ctx.rs` | [`Ctx`], what a protocol session may ask of the loop |
//! | `mailbox.rs` | other threads reaching sessions: [`Spawner`] starts one, [`SessionRef`] sends it messages |
//! | `output.rs` | the output queue and the buffer pool |
//! | `slots.rs` | the typed generational slot map of connections and sessions |
//! | `timer.rs` | the timer heap |

// No unsafe code in the loop: what the kernel holds while an operation
// is out (buffers, addresses, descriptors it made) is owned by the poll
// layer (`crate::poll`), with the OS calls of `crate::sys`.
#![forbid(unsafe_code)]

mod accept;
mod close;
mod completion;
mod conn;
mod connect;
mod ctx;
mod datagram;
mod input;
mod io;
mod jobs;
mod lifecycle;
mod mailbox;
mod read;
mod run;
mod settings;
mod slots;
mod splice;
mod state;
pub(crate) mod timer;
mod write;
// The output queue is internal; the `bench-internals` feature opens it to
// the criterion benchmarks in benches/ (it is not a stable API).
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod output;
#[cfg(not(feature = "bench-internals"))]
pub(crate) mod output;

pub use ctx::Ctx;
pub use input::Unconsumed;
pub use mailbox::{Message, SendError, SessionRef, SpawnError, SpawnRefused, Spawner};
pub use run::{Bound, Loop};
pub use settings::{Limits, ListenerSetup, LoopHandle, LoopSettings};

use crate::protocol::ConnId;
use accept::ListenerSlot;
pub(crate) use conn::{Conn, SessionKey};
use conn::{Deferred, Session};
use lifecycle::{AfterDrain, Expiry, Lifecycle};
use read::ReadStep;
pub(crate) use state::Core;

/// The readiness token of connection `id`: its slot and generation
/// (below the listeners' and the waker's tokens, see [`slots::MAX_SLOTS`]).
fn token(id: ConnId) -> usize {
    (id.generation as usize) << 24 | id.slot as usize
}

/// The connection a readiness token names (it may have closed since).
fn token_conn(token: usize) -> ConnId {
    use slots::Key;
    ConnId::from_parts((token & 0xff_ffff) as u32, (token >> 24) as u32)
}

use std::time::Duration;

/// Reads per readiness event before a connection yields to the others.
pub const READ_BUDGET: usize = 16;

/// On shutdown, how long a connection whose request is still arriving may
/// take to complete it (at most the drain timeout).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How long a loop with requests out in a handler pool polls for their
/// answers before it sleeps.
const JOB_SPIN: Duration = Duration::from_micros(50);
/// Provided buffers of a `-T completion` loop, each of the largest
/// `recv_size` of its listeners up to [`RING_BUFFER_MAX`]: at most 4 MiB
/// per loop, touched only as far as bytes arrive.
const RING_BUFFERS: u16 = 256;
const RING_BUFFER_MAX: usize = 16 * 1024;
/// How long a listener stops accepting after EMFILE/ENFILE or at
/// `max_connections`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const WAKER: usize = usize::MAX;
const LISTENER_BASE: usize = usize::MAX / 2;
