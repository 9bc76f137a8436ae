//! A star of TCP links between the processes of a run: rank 0 listens
//! ([`Hub`]), every other rank connects to it ([`join`]) and introduces
//! itself with its rank and the world size it was launched with.
//! [`crate::cluster`] and [`crate::rendezvous`] both talk over it.
//!
//! Each message is a little-endian `u64` byte count followed by the bytes.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// One TCP connection carrying length-prefixed messages.
pub struct Link {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl Link {
    fn new(stream: TcpStream) -> Result<Self> {
        stream.set_nodelay(true)?;
        Ok(Link {
            reader: BufReader::new(stream.try_clone()?),
            writer: BufWriter::new(stream),
        })
    }

    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(&(bytes.len() as u64).to_le_bytes())?;
        self.writer.write_all(bytes)?;
        self.writer.flush()?;
        Ok(())
    }

    /// The next message; `expected` is its byte count where the protocol
    /// fixes it.
    pub fn receive(&mut self, expected: Option<usize>) -> Result<Vec<u8>> {
        let mut word = [0u8; 8];
        self.reader.read_exact(&mut word)?;
        let len = u64::from_le_bytes(word) as usize;
        if let Some(expected) = expected {
            if len != expected {
                bail!("a process sent {len} bytes where {expected} were expected: do all processes run the same config and version?");
            }
        }
        let mut bytes = vec![0u8; len];
        self.reader.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    /// Sends little-endian `f32`s.
    pub fn send_f32(&mut self, values: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.send(&bytes)
    }

    /// Receives `f32`s; `expected` counts values, not bytes.
    pub fn receive_f32(&mut self, expected: Option<usize>) -> Result<Vec<f32>> {
        let bytes = self.receive(expected.map(|n| n * 4))?;
        if bytes.len() % 4 != 0 {
            bail!(
                "a process sent {} bytes, not a whole number of f32s",
                bytes.len()
            );
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

/// Rank 0's listening socket, bound before the others connect.
pub struct Hub {
    listener: TcpListener,
    port: u16,
}

impl Hub {
    /// Listens on `port` on every interface; port 0 picks a free one
    /// ([`Hub::port`] says which).
    pub fn bind(port: u16) -> Result<Self> {
        let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| {
            format!(
                "rank 0 cannot listen on port {port}: is another run using it? Pick another port"
            )
        })?;
        let port = listener.local_addr()?.port();
        Ok(Hub { listener, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits up to `timeout` for ranks `1..world_size`; returns their
    /// links in rank order.
    pub fn accept(self, world_size: usize, timeout: Duration) -> Result<Vec<Link>> {
        let deadline = Instant::now() + timeout;
        let port = self.port;
        self.listener.set_nonblocking(true)?;
        let mut by_rank: Vec<Option<Link>> = (1..world_size).map(|_| None).collect();
        while by_rank.iter().any(Option::is_none) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false)?;
                    let mut link = Link::new(stream)?;
                    let hello = link.receive(Some(16))?;
                    let rank = u64::from_le_bytes(hello[..8].try_into()?) as usize;
                    let world = u64::from_le_bytes(hello[8..].try_into()?) as usize;
                    if world != world_size || rank == 0 || rank >= world_size {
                        bail!(
                            "a process connected as rank {rank} of {world}; this run has {world_size} processes: launch every rank with the same world size"
                        );
                    }
                    if by_rank[rank - 1].replace(link).is_some() {
                        bail!("two processes connected as rank {rank}: give each a different rank");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let missing: Vec<String> = by_rank
                            .iter()
                            .enumerate()
                            .filter(|(_, l)| l.is_none())
                            .map(|(i, _)| (i + 1).to_string())
                            .collect();
                        bail!(
                            "ranks {} did not connect to port {port} within {} s: are they running, and can they reach this host?",
                            missing.join(", "),
                            timeout.as_secs()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(by_rank.into_iter().flatten().collect())
    }
}

/// Connects rank `rank` of `world_size` to rank 0 at `address`
/// (`host:port`), retrying until `timeout` since rank 0 may start later.
pub fn join(address: &str, rank: usize, world_size: usize, timeout: Duration) -> Result<Link> {
    let deadline = Instant::now() + timeout;
    let socket = address
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve rank 0's address {address:?}"))?
        .next()
        .ok_or_else(|| anyhow!("rank 0's address {address:?} resolves to nothing"))?;
    let stream = loop {
        match TcpStream::connect_timeout(&socket, Duration::from_secs(1)) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => {
                return Err(anyhow!(e).context(format!(
                    "rank {rank} cannot reach rank 0 at {address} ({socket}) within {} s: is rank 0 running, and is the address one this host can reach?",
                    timeout.as_secs()
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let mut link = Link::new(stream)?;
    let hello: Vec<u8> = [rank as u64, world_size as u64]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    link.send(&hello)?;
    Ok(link)
}
