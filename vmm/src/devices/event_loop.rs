//! The device event loop: one thread that waits on every device's file descriptors with epoll
//! and runs the device's handler when one is ready. vCPU threads never do device I/O.
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// A device whose data path runs on the loop: the descriptors it waits on, and what it does
/// when one is ready.
pub trait EventHandler: Send + Sync {
    fn fds(&self) -> Vec<RawFd>;
    fn handle(&self, fd: RawFd);
}

impl EventHandler for super::virtio::net::Net {
    fn fds(&self) -> Vec<RawFd> {
        super::virtio::net::Net::fds(self)
    }

    fn handle(&self, fd: RawFd) {
        super::virtio::net::Net::handle(self, fd);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("cannot set up epoll for the device event loop")]
    Epoll(#[source] std::io::Error),
    #[error("cannot start the device event loop thread")]
    Thread(#[source] std::io::Error),
}

/// The running loop; dropping it stops and joins the thread.
pub struct EventLoop {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// Most events taken per `epoll_wait`.
const EVENTS: usize = 32;

impl EventLoop {
    /// Starts the loop over `devices`. Every descriptor is edge-triggered: a handler drains
    /// what is ready (or remembers what it could not place) before returning.
    pub fn start(devices: Vec<Arc<dyn EventHandler>>) -> Result<Self, EventLoopError> {
        let epoll = Epoll::new().map_err(EventLoopError::Epoll)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(EventLoopError::Epoll)?;
        let mut routes: Vec<(RawFd, usize)> = Vec::new();
        for (i, dev) in devices.iter().enumerate() {
            for fd in dev.fds() {
                routes.push((fd, i));
            }
        }
        let stop_fd = stop.as_raw_fd();
        for &fd in routes.iter().map(|(fd, _)| fd).chain([&stop_fd]) {
            let ev = EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, fd as u64);
            epoll
                .ctl(ControlOperation::Add, fd, ev)
                .map_err(EventLoopError::Epoll)?;
        }
        let thread = std::thread::Builder::new()
            .name("devices".into())
            .spawn(move || run(&epoll, stop_fd, &routes, &devices))
            .map_err(EventLoopError::Thread)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

fn run(epoll: &Epoll, stop: RawFd, routes: &[(RawFd, usize)], devices: &[Arc<dyn EventHandler>]) {
    let mut events = vec![EpollEvent::default(); EVENTS];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("device event loop: epoll_wait failed: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let fd = ev.data() as RawFd;
            if fd == stop {
                return;
            }
            for &(_, i) in routes.iter().filter(|(f, _)| *f == fd) {
                devices[i].handle(fd);
            }
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the device event loop panicked");
            }
        }
    }
}
