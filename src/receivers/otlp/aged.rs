//! `max_connection_age_grace` for the gRPC listener.
//!
//! tonic (0.14) handles `max_connection_age` by starting a graceful shutdown (GOAWAY, then
//! the connection closes when its last request is answered). Given a grace as well, it
//! instead sleeps for age + grace and then drops the connection, with no GOAWAY before:
//! every request in flight at that moment fails and the agents retry it. So tonic gets only
//! the age, and the grace is enforced here: each accepted connection carries a deadline
//! (accepted + age + grace), after which its reads and writes fail and hyper closes it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A connection that stops working at a deadline.
pub struct Aged<IO> {
    io: IO,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<IO> Aged<IO> {
    /// `io` lives for `lifetime` from now (`None`: for ever).
    pub fn new(io: IO, lifetime: Option<Duration>) -> Self {
        Aged {
            io,
            deadline: lifetime.map(|d| Box::pin(tokio::time::sleep(d))),
        }
    }

    /// An error once the deadline has passed; registers the waker for it otherwise, so a
    /// connection idle in a read is woken at the deadline.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let passed = self
            .deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready());
        if passed {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "closed: max_connection_age + max_connection_age_grace passed",
            ));
        }
        Ok(())
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Aged<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Aged<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Aged<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
