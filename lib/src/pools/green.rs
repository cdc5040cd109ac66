//! Green threads: `-X gthread` runs every request as a task on a tokio
//! runtime; `-X gthreadpool` is the same with at most `-n` requests in
//! flight. Tasks call [`Service::handle_async`], so a service that waits
//! (a timer, another server) holds a task, not a thread.

use std::future::Future;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::poll::Waker;

use super::{Admission, ExecMode, Job, Pool};
use crate::service::{Keep, Service, ServiceError};

/// Requests as tasks on a multi-thread tokio runtime.
pub struct GreenPool {
    runtime: tokio::runtime::Runtime,
    admission: Admission,
    kind: ExecMode,
}

impl GreenPool {
    /// `size`: at most that many requests in flight (`gthreadpool`); `None`
    /// for `gthread`, bounded by `queue` only.
    pub fn new(size: Option<usize>, queue: usize) -> io::Result<GreenPool> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("gaidaros-green")
            .enable_time()
            .build()?;
        Ok(GreenPool {
            runtime,
            admission: Admission::new(size.unwrap_or(queue)),
            kind: if size.is_some() {
                ExecMode::GthreadPool
            } else {
                ExecMode::Gthread
            },
        })
    }
}

impl Pool for GreenPool {
    fn submit(&self, mut job: Job) -> Result<(), Job> {
        let Some(running) = self.admission.admit() else {
            return Err(job);
        };
        job.running = Some(running);
        self.runtime.spawn(run(job));
        Ok(())
    }

    fn notify_room(&self, waker: &Arc<Waker>) {
        self.admission.notify_room(waker);
    }

    fn kind(&self) -> ExecMode {
        self.kind
    }
}

/// decode, handle_async, encode; a panic anywhere fails the request.
async fn run(mut job: Job) {
    let service = Arc::clone(&job.service);
    let request = std::mem::take(&mut job.request);
    let work = async move {
        let mut response = Vec::new();
        let keep = respond(&*service, &request, &mut response).await?;
        Ok::<_, ServiceError>((response, keep))
    };
    match CatchUnwind(Box::pin(work)).await {
        Ok(Ok((response, keep))) => job.finish(response, Ok(keep)),
        Ok(Err(e)) => job.finish(Vec::new(), Err(e)),
        Err(()) => job.finish(
            Vec::new(),
            Err(ServiceError::Internal("handler panicked".into())),
        ),
    }
}

async fn respond(
    service: &dyn Service,
    frame: &[u8],
    out: &mut Vec<u8>,
) -> Result<Keep, ServiceError> {
    let request = service.decode(service.split_request(frame))?;
    let keep = service.handle_async(&request, out).await?;
    service.encode(out, 0);
    Ok(keep)
}

/// Polls the inner future under `catch_unwind`: a panicking handler fails
/// its own request instead of killing the runtime's worker. (tokio has no
/// such combinator; the `futures` crate's is the same ten lines.)
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}
