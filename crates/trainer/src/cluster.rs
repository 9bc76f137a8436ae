//! Several nodes training one run: one process per node, each on its share
//! of every batch ([`crate::data::NodeShard`]), gradients averaged between
//! the processes after every step.
//!
//! The averaging is a star over TCP: rank 0 listens, the other ranks
//! connect; each step every rank sends its gradient ([`crate::buckets`]),
//! rank 0 sums them in rank order (so every run with the same inputs gives
//! the same bits) and sends the mean back. Burn 0.21's own collective
//! (burn-collective) would be the natural choice, but its multi-node
//! all-reduce hangs on the second call (its global sync never clears its
//! list of synced peers).
//!
//! The links are [`crate::star`]'s; each message is little-endian `f32`s.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;

use crate::buckets::{mean_in_order, GradientBuckets, DEFAULT_BUCKET_BYTES};
use crate::star::{self, Hub, Link};

/// How a process finds the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Processes (nodes) training the run.
    pub nodes: usize,
    /// This process's rank in `0..nodes`; rank 0 writes the run directory.
    pub rank: usize,
    /// `host:port` where rank 0 listens (rank 0 binds its port on every
    /// interface).
    pub address: String,
    /// How long to wait for the other nodes to connect.
    pub timeout: Duration,
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<()> {
        if self.nodes < 2 {
            bail!(
                "--nodes must be at least 2 for a multi-node run (got {})",
                self.nodes
            );
        }
        if self.rank >= self.nodes {
            bail!(
                "--node-rank {} is not below --nodes {}",
                self.rank,
                self.nodes
            );
        }
        Ok(())
    }
}

/// This process's connections to the others.
pub struct Cluster {
    rank: usize,
    nodes: usize,
    /// Rank 0: a link to each other rank, in rank order. Others: the link
    /// to rank 0.
    links: Vec<Link>,
}

impl Cluster {
    /// Connects the nodes; every node passes its `step` (where it starts or
    /// resumes) and all must agree.
    pub fn connect(config: &ClusterConfig, step: u64) -> Result<Self> {
        config.validate()?;
        let links = if config.rank == 0 {
            Self::accept(config)?
        } else {
            vec![
                star::join(&config.address, config.rank, config.nodes, config.timeout)
                    .context("joining the cluster at --cluster-address")?,
            ]
        };
        Self::over(config.rank, config.nodes, links, step)
    }

    /// The cluster over `links` already made (rank 0: one to each other
    /// rank, in rank order; the others: the one to rank 0), once every node
    /// has said it starts at `step`.
    pub fn over(rank: usize, nodes: usize, links: Vec<Link>, step: u64) -> Result<Self> {
        let mut cluster = Cluster { rank, nodes, links };
        // Everyone starts at the same step (a resumed node that lost a
        // checkpoint would silently train on other data otherwise).
        let steps = cluster.gather(&[rank as f32, step as f32])?;
        if let Some(pair) = steps.chunks(2).find(|pair| pair[1] != step as f32) {
            bail!(
                "node {} is at step {} but node {rank} at step {step}: resume every node from the same checkpoint step",
                pair[0],
                pair[1],
            );
        }
        Ok(cluster)
    }

    fn accept(config: &ClusterConfig) -> Result<Vec<Link>> {
        let port = config
            .address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| {
                anyhow!(
                    "--cluster-address {:?} needs a port (host:port)",
                    config.address
                )
            })?;
        Hub::bind(port)?.accept(config.nodes, config.timeout)
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// One round of the star: every rank sends `values`; rank 0 combines
    /// its own and the others' (in rank order) and sends the `reply_len`
    /// result back; every rank returns it.
    fn exchange(
        &mut self,
        values: &[f32],
        reply_len: usize,
        combine: impl FnOnce(Vec<Vec<f32>>) -> Vec<f32>,
    ) -> Result<Vec<f32>> {
        if self.rank == 0 {
            let mut all = vec![values.to_vec()];
            for link in &mut self.links {
                all.push(
                    link.receive_f32(Some(values.len()))
                        .context("a node left the run")?,
                );
            }
            let result = combine(all);
            for link in &mut self.links {
                link.send_f32(&result).context("a node left the run")?;
            }
            Ok(result)
        } else {
            let link = &mut self.links[0];
            link.send_f32(values).context("rank 0 left the run")?;
            link.receive_f32(Some(reply_len))
                .context("rank 0 left the run")
        }
    }

    /// Every rank's `values`, concatenated in rank order, on every rank.
    fn gather(&mut self, values: &[f32]) -> Result<Vec<f32>> {
        self.exchange(values, values.len() * self.nodes, |all| all.concat())
    }

    /// Replaces `values` by their mean over the nodes (summed in rank
    /// order, so every node gets the same bits).
    pub fn average(&mut self, values: &mut [f32]) -> Result<()> {
        let nodes = self.nodes;
        let mean = self.exchange(values, values.len(), |all| mean_in_order(all, nodes))?;
        values.copy_from_slice(&mean);
        Ok(())
    }

    /// Replaces every gradient of `model`'s parameters in `grads`, and
    /// `extra` (e.g. the step's loss), by its mean over the nodes. The
    /// gradients travel through host memory in [`DEFAULT_BUCKET_BYTES`]
    /// buckets.
    pub fn average_gradients<B: AutodiffBackend, M: Module<B>>(
        &mut self,
        model: &M,
        grads: &mut GradientsParams,
        extra: &mut [f32],
    ) -> Result<()> {
        let mut buckets = GradientBuckets::<B>::take(model, grads, DEFAULT_BUCKET_BYTES);
        for bucket in buckets.buckets_mut() {
            self.average(bucket)?;
        }
        self.average(extra)?;
        buckets.put(model, grads);
        Ok(())
    }
}

/// Connects one cluster node per entry of `steps` (its starting step) on
/// threads over loopback, rank 0 on a port the system picks, and returns
/// `run(rank, node)` of each in rank order.
#[cfg(test)]
pub(crate) fn on_loopback<T: Send>(
    steps: &[u64],
    run: impl Fn(usize, Result<Cluster>) -> T + Sync,
) -> Vec<T> {
    let nodes = steps.len();
    let timeout = Duration::from_secs(20);
    let hub = Hub::bind(0).expect("a loopback port");
    let address = format!("127.0.0.1:{}", hub.port());
    let run = &run;
    std::thread::scope(|scope| {
        let first = scope.spawn(move || {
            let links = hub.accept(nodes, timeout);
            run(0, links.and_then(|l| Cluster::over(0, nodes, l, steps[0])))
        });
        let others: Vec<_> = (1..nodes)
            .map(|rank| {
                let address = address.clone();
                scope.spawn(move || {
                    let link = star::join(&address, rank, nodes, timeout);
                    run(
                        rank,
                        link.and_then(|l| Cluster::over(rank, nodes, vec![l], steps[rank])),
                    )
                })
            })
            .collect();
        std::iter::once(first)
            .chain(others)
            .map(|h| h.join().expect("a node's thread"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_nodes_average_in_rank_order() {
        let results = on_loopback(&[7, 7, 7], |rank, cluster| {
            let mut cluster = cluster.unwrap();
            let mut values = vec![rank as f32, 1.0 + rank as f32 * 0.5];
            cluster.average(&mut values).unwrap();
            // A second round: the link is reusable.
            let mut again = vec![10.0 * rank as f32];
            cluster.average(&mut again).unwrap();
            values.extend(again);
            values
        });
        for values in &results {
            assert_eq!(values, &results[0]);
        }
        assert_eq!(results[0], vec![1.0, 1.5, 10.0]);
    }

    #[test]
    fn nodes_at_different_steps_are_refused() {
        let errors: Vec<String> =
            on_loopback(&[4, 6], |_, cluster| cluster.err().map(|e| e.to_string()))
                .into_iter()
                .flatten()
                .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors.iter().all(|e| e.contains("resume every node")),
            "{errors:?}"
        );
    }

    #[test]
    fn bad_ranks_are_named() {
        let error = Cluster::connect(
            &ClusterConfig {
                nodes: 2,
                rank: 2,
                address: "127.0.0.1:1".into(),
                timeout: Duration::from_secs(1),
            },
            0,
        )
        .err()
        .unwrap();
        assert!(error.to_string().contains("--node-rank 2"), "{error}");
    }
}
