//! `forward`: a TCP port forwarder, written as a [`Protocol`].
//!
//! Each accepted connection gets an outbound connection to `upstream`;
//! bytes flow both ways with backpressure (a side whose peer's output is at
//! the cap stops being read until it drains), and a half-close (FIN) on one
//! side is passed to the other. When either side fails, the other is closed
//! after its pending output is written.
//!
//! By default the bytes never enter user space: the session asks the loop
//! to splice each side into the other ([`Ctx::splice`]). With
//! `-o splice=false` (or when the kernel refuses a pipe) they go through
//! `on_data` and are copied, which is what a handler that inspects or
//! rewrites the stream does.
#![forbid(unsafe_code)]

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use gaidaros::{
    CloseReason, ConnId, Ctx, Handler, HandlerSpec, OptionError, OptionSpec, Options, Protocol,
    ProtocolFactory, Queued,
};
use tracing::debug;

/// Creates one [`Forward`] session per accepted connection.
#[derive(Debug, Clone)]
pub struct ForwardFactory {
    upstream: SocketAddr,
    splice: bool,
}

impl ForwardFactory {
    /// Forward to `upstream`, splicing in the kernel.
    pub fn new(upstream: SocketAddr) -> Self {
        ForwardFactory {
            upstream,
            splice: true,
        }
    }

    /// Copy through `on_data` instead of splicing (`splice = false`).
    pub fn copying(mut self) -> Self {
        self.splice = false;
        self
    }
}

impl ProtocolFactory for ForwardFactory {
    fn open(&self) -> Box<dyn Protocol> {
        Box::new(Forward {
            upstream: self.upstream,
            splice: self.splice,
            client: None,
            server: None,
            eof: [false; 2],
        })
    }
}

/// One forwarded connection pair.
#[derive(Debug)]
pub struct Forward {
    upstream: SocketAddr,
    splice: bool,
    client: Option<ConnId>,
    server: Option<ConnId>,
    /// End of input seen from [client, server].
    eof: [bool; 2],
}

impl Forward {
    fn other(&self, conn: ConnId) -> Option<ConnId> {
        if Some(conn) == self.client {
            self.server
        } else {
            self.client
        }
    }

    fn side(&self, conn: ConnId) -> usize {
        usize::from(Some(conn) != self.client)
    }
}

impl Protocol for Forward {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        self.client = Some(conn);
        match ctx.connect(self.upstream) {
            Ok(server) => {
                self.server = Some(server);
                if self.splice {
                    let both = ctx
                        .splice(conn, server)
                        .and_then(|()| ctx.splice(server, conn));
                    if let Err(e) = both {
                        // on_data still carries the bytes, copied.
                        debug!("splice unavailable, copying: {e}");
                    }
                }
            }
            Err(e) => {
                debug!(upstream = %self.upstream, "cannot connect upstream: {e}");
                ctx.close(conn);
            }
        }
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, data: &[u8]) -> usize {
        if let Some(other) = self.other(conn) {
            if ctx.write(other, data) == Ok(Queued::OverCap) {
                // The other side's output is at its cap: stop reading this
                // side until it drains (on_writable).
                ctx.pause_read(conn);
            }
        }
        data.len()
    }

    fn on_writable(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        if let Some(other) = self.other(conn) {
            ctx.resume_read(other);
        }
    }

    fn on_read_closed(&mut self, ctx: &mut Ctx<'_>, conn: ConnId) {
        let side = self.side(conn);
        self.eof[side] = true;
        if let Some(other) = self.other(conn) {
            ctx.shutdown_write(other);
        }
        if self.eof == [true, true] {
            for c in [self.client, self.server].into_iter().flatten() {
                ctx.close(c);
            }
        }
    }

    fn on_connect(&mut self, ctx: &mut Ctx<'_>, _conn: ConnId, result: io::Result<()>) {
        if let Err(e) = result {
            debug!(upstream = %self.upstream, "upstream connect failed: {e}");
            if let Some(client) = self.client {
                ctx.close(client);
            }
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, reason: CloseReason) {
        debug!(%conn, %reason, "forward side closed");
        if let Some(other) = self.other(conn) {
            ctx.close(other);
        }
        if Some(conn) == self.client {
            self.client = None;
        } else {
            self.server = None;
        }
    }
}

fn build(options: &Options) -> Result<Handler, OptionError> {
    let raw: String = options.require("upstream", "HOST:PORT of the upstream server")?;
    let upstream = raw
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| OptionError {
            key: "upstream".into(),
            value: raw.clone(),
            expected: "HOST:PORT that resolves, e.g. 127.0.0.1:9000".into(),
        })?;
    let splice: bool = options.parse_or("splice", true, "true or false")?;
    let factory = ForwardFactory::new(upstream);
    let factory = if splice { factory } else { factory.copying() };
    Ok(Handler::Protocol(Arc::new(factory)))
}

/// Registry entry.
pub fn spec() -> HandlerSpec {
    HandlerSpec {
        name: "forward",
        about: "TCP port forwarder to an upstream, with backpressure and half-close",
        options: &[
            OptionSpec {
                name: "upstream",
                default: None,
                help: "HOST:PORT to forward connections to",
            },
            OptionSpec {
                name: "splice",
                default: Some("true"),
                help:
                    "move bytes in the kernel with splice(2); false copies them through the handler",
            },
        ],
        build,
    }
}
