//! The start of a one-process-per-GPU run: rank 0 hands every other rank a
//! blob (NCCL's 128-byte unique id) over TCP, as torch's TCPStore does, after
//! checking that all ranks launched with the same world size and resume the
//! same run at the same step.
//!
//! Protocol over [`crate::star`]: after its hello each rank sends its
//! [`RunKey`] (`u64` step, then the run id's UTF-8); rank 0 answers every
//! rank with a status byte, 0 followed by the blob or 1 followed by the
//! error text. Rank 0 answers only once all ranks have connected, so a
//! rank that gets the blob knows the whole world is there.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::launch::LaunchEnv;
use crate::star::{self, Hub, Link};

/// What every rank must agree on before training together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunKey {
    /// Names the run (e.g. its run directory's name).
    pub run_id: String,
    /// The step every rank starts or resumes at.
    pub step: u64,
}

impl RunKey {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = self.step.to_le_bytes().to_vec();
        bytes.extend_from_slice(self.run_id.as_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 8 {
            bail!("a rank sent a run key of {} bytes (at least 8 expected): do all ranks run the same version?", bytes.len());
        }
        let (step, run_id) = bytes.split_at(8);
        Ok(RunKey {
            step: u64::from_le_bytes(step.try_into()?),
            run_id: String::from_utf8(run_id.to_vec())
                .map_err(|_| anyhow!("a rank sent a run id that is not UTF-8"))?,
        })
    }
}

const ACCEPTED: u8 = 0;
const REFUSED: u8 = 1;

/// Rank 0's side, bound before the other ranks are told where it is.
pub struct RendezvousHost {
    hub: Hub,
    world_size: usize,
    timeout: Duration,
}

impl RendezvousHost {
    /// Listens on `port` (0 picks a free one) for `world_size - 1` ranks,
    /// waiting at most `timeout` for them.
    pub fn bind(port: u16, world_size: usize, timeout: Duration) -> Result<Self> {
        if world_size == 0 {
            bail!("a rendezvous needs a world size of at least 1");
        }
        Ok(RendezvousHost {
            hub: Hub::bind(port)?,
            world_size,
            timeout,
        })
    }

    pub fn port(&self) -> u16 {
        self.hub.port()
    }

    /// Waits for every rank, checks their keys against `key` and hands each
    /// `blob`; on a mismatch every rank gets the error.
    pub fn serve(self, key: &RunKey, blob: &[u8]) -> Result<()> {
        let mut links = self.hub.accept(self.world_size, self.timeout)?;
        let mut keys = Vec::with_capacity(links.len());
        for (index, link) in links.iter_mut().enumerate() {
            let bytes = link
                .receive(None)
                .with_context(|| format!("rank {} left the rendezvous", index + 1))?;
            keys.push(RunKey::decode(&bytes)?);
        }
        let mismatch = keys.iter().enumerate().find(|(_, other)| *other != key);
        let reply = match mismatch {
            None => [&[ACCEPTED], blob].concat(),
            Some((index, other)) => [
                &[REFUSED][..],
                format!(
                    "rank {} is at run {:?} step {} but rank 0 at run {:?} step {}: resume every rank from the same run directory and checkpoint",
                    index + 1,
                    other.run_id,
                    other.step,
                    key.run_id,
                    key.step
                )
                .as_bytes(),
            ]
            .concat(),
        };
        for (index, link) in links.iter_mut().enumerate() {
            link.send(&reply)
                .with_context(|| format!("rank {} left the rendezvous", index + 1))?;
        }
        if reply[0] == REFUSED {
            bail!("{}", String::from_utf8_lossy(&reply[1..]));
        }
        Ok(())
    }
}

/// Rank `rank`'s side: connects to rank 0 at `address` (`host:port`),
/// retrying for up to `timeout`, and returns rank 0's blob.
pub fn join(
    address: &str,
    rank: usize,
    world_size: usize,
    key: &RunKey,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let mut link: Link = star::join(address, rank, world_size, timeout)?;
    link.send(&key.encode())?;
    let reply = link.receive(None).with_context(|| {
        format!("rank 0 at {address} closed the rendezvous before answering: see its log")
    })?;
    match reply.split_first() {
        Some((&ACCEPTED, blob)) => Ok(blob.to_vec()),
        Some((&REFUSED, text)) => bail!("{}", String::from_utf8_lossy(text)),
        _ => bail!("rank 0 at {address} sent an answer this version does not know: do all ranks run the same version?"),
    }
}

/// The rendezvous of `launch`'s rank: rank 0 listens on the master port
/// and hands out `make_blob()`; the others fetch it. Every rank returns
/// the blob.
pub fn rendezvous(
    launch: &LaunchEnv,
    key: &RunKey,
    make_blob: impl FnOnce() -> Result<Vec<u8>>,
    timeout: Duration,
) -> Result<Vec<u8>> {
    if launch.rank == 0 {
        let host = RendezvousHost::bind(launch.master_port, launch.world_size, timeout)?;
        let blob = make_blob()?;
        host.serve(key, &blob)?;
        Ok(blob)
    } else {
        join(
            &launch.master_address(),
            launch.rank,
            launch.world_size,
            key,
            timeout,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(20);

    fn key(step: u64) -> RunKey {
        RunKey {
            run_id: "runs/tau-5".into(),
            step,
        }
    }

    /// A 128-byte blob (NCCL's unique id size) that differs per seed.
    fn blob(seed: u8) -> Vec<u8> {
        (0..128u8)
            .map(|i| i.wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Runs rank 0 on `host` and ranks 1.. with `steps[rank]` on threads;
    /// returns rank 0's outcome and the others'.
    fn run_threads(
        world_size: usize,
        steps: &[u64],
        worlds: &[usize],
    ) -> (Result<()>, Vec<Result<Vec<u8>>>) {
        let host = RendezvousHost::bind(0, world_size, TIMEOUT).unwrap();
        let address = format!("127.0.0.1:{}", host.port());
        std::thread::scope(|scope| {
            let others: Vec<_> = (1..world_size)
                .map(|rank| {
                    let address = &address;
                    scope.spawn(move || {
                        join(address, rank, worlds[rank], &key(steps[rank]), TIMEOUT)
                    })
                })
                .collect();
            let served = host.serve(&key(steps[0]), &blob(7));
            (
                served,
                others.into_iter().map(|h| h.join().unwrap()).collect(),
            )
        })
    }

    #[test]
    fn every_rank_gets_rank_zeros_blob_over_loopback() {
        let (served, blobs) = run_threads(4, &[3; 4], &[4; 4]);
        served.unwrap();
        for got in blobs {
            assert_eq!(got.unwrap(), blob(7));
        }
    }

    #[test]
    fn ranks_at_different_steps_are_refused_everywhere() {
        let (served, others) = run_threads(3, &[5, 5, 6], &[3; 3]);
        let mut errors = vec![served.unwrap_err().to_string()];
        errors.extend(others.into_iter().map(|r| r.unwrap_err().to_string()));
        for error in &errors {
            assert!(
                error.contains("rank 2 is at run \"runs/tau-5\" step 6 but rank 0"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_different_world_size_is_named() {
        let host = RendezvousHost::bind(0, 2, TIMEOUT).unwrap();
        let address = format!("127.0.0.1:{}", host.port());
        let error = std::thread::scope(|scope| {
            // The joiner's error is a closed connection; rank 0's names the cause.
            scope.spawn(|| join(&address, 1, 3, &key(0), TIMEOUT));
            host.serve(&key(0), &blob(1)).unwrap_err().to_string()
        });
        assert!(error.contains("rank 1 of 3; this run has 2"), "{error}");
    }

    #[test]
    fn an_absent_rank_zero_is_named_after_the_timeout() {
        // A port that was free a moment ago: nothing listens there now.
        let port = Hub::bind(0).unwrap().port();
        let address = format!("127.0.0.1:{port}");
        let error = join(&address, 1, 2, &key(0), Duration::from_millis(300)).unwrap_err();
        let text = format!("{error:#}");
        assert!(
            text.contains(&format!("cannot reach rank 0 at {address}")),
            "{text}"
        );
    }

    #[test]
    fn rendezvous_reads_its_place_from_the_launch() {
        // Rank 0 through `rendezvous` needs a known port: bind one, free it,
        // and hand it over (a small race with other programs, not tests).
        let port = Hub::bind(0).unwrap().port();
        let launch = |rank| LaunchEnv {
            rank,
            world_size: 2,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            launcher: crate::launch::Launcher::Single,
        };
        let blobs: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|rank| {
                    scope.spawn(move || {
                        rendezvous(
                            &launch(rank),
                            &key(1),
                            || Ok(blob(rank as u8 + 40)),
                            TIMEOUT,
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        assert_eq!(blobs, vec![blob(40), blob(40)]);
    }

    const CHILD_RANK: &str = "TOPOTRAIN_TEST_RENDEZVOUS_RANK";
    const CHILD_ADDRESS: &str = "TOPOTRAIN_TEST_RENDEZVOUS_ADDRESS";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// One rank of [`ranks_in_separate_processes_get_the_blob`], run by it
    /// in a child process of this test binary.
    #[test]
    #[ignore = "a child of ranks_in_separate_processes_get_the_blob"]
    fn rendezvous_child_process() {
        let rank: usize = std::env::var(CHILD_RANK)
            .expect("run by ranks_in_separate_processes_get_the_blob")
            .parse()
            .unwrap();
        let address = std::env::var(CHILD_ADDRESS).unwrap();
        let got = join(&address, rank, 3, &key(9), TIMEOUT).unwrap();
        println!("blob {}", hex(&got));
    }

    #[test]
    fn ranks_in_separate_processes_get_the_blob() {
        let host = RendezvousHost::bind(0, 3, TIMEOUT).unwrap();
        let address = format!("127.0.0.1:{}", host.port());
        let children: Vec<_> = (1..3)
            .map(|rank| {
                std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "rendezvous::tests::rendezvous_child_process",
                        "--ignored",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env(CHILD_RANK, rank.to_string())
                    .env(CHILD_ADDRESS, &address)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        host.serve(&key(9), &blob(3)).unwrap();
        for child in children {
            let output = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                stdout.contains(&format!("blob {}", hex(&blob(3)))),
                "{stdout}"
            );
        }
    }
}
