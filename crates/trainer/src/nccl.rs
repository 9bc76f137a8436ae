//! Gradient averaging over NCCL, one process per GPU (issue 21).
//!
//! **Compiled, never run:** no GPU has been at hand, so nothing here has
//! executed and no test calls it; `cargo check --features cuda` is all it
//! has passed. It is not wired into training.
//!
//! Rank 0 creates NCCL's unique id and hands it out through
//! [`crate::rendezvous`]; every rank then joins the communicator on the GPU
//! of its local rank. Each gradient bucket ([`crate::buckets`]) is copied
//! to the GPU, summed in place by NCCL, copied back and scaled by
//! `1 / world_size` on the host. The host round trip stands in for
//! all-reducing Burn's own device buffers on the step's stream, which needs
//! the cubecl-cuda stream patch (`../shared/design/gpu-engine.md`, §2).
//! NCCL's ring sums in its own order, so the result may differ from
//! [`crate::cluster`]'s rank-order sum in the last bits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{result::NcclError, Comm, Id, ReduceOp};

use crate::buckets::{GradientBuckets, DEFAULT_BUCKET_BYTES};
use crate::launch::LaunchEnv;
use crate::rendezvous::{rendezvous, RunKey};

/// Bytes in NCCL's unique id (`ncclUniqueId`).
pub const UNIQUE_ID_BYTES: usize = 128;

fn nccl_error(what: &str) -> impl FnOnce(NcclError) -> anyhow::Error + '_ {
    move |e| {
        anyhow!(
            "NCCL failed to {what} ({:?}): is libnccl.so.2 installed and on the library path?",
            e.0
        )
    }
}

/// A new unique id, as the bytes the rendezvous carries.
pub fn new_unique_id() -> Result<Vec<u8>> {
    let id = Id::new().map_err(nccl_error("create a unique id"))?;
    Ok(id.internal().iter().map(|&c| c as u8).collect())
}

/// The unique id in `bytes` (from [`new_unique_id`] on rank 0).
pub fn unique_id_from_bytes(bytes: &[u8]) -> Result<Id> {
    if bytes.len() != UNIQUE_ID_BYTES {
        bail!(
            "rank 0 sent a {}-byte NCCL unique id where {UNIQUE_ID_BYTES} were expected: do all ranks run the same version?",
            bytes.len()
        );
    }
    let mut internal = [0 as std::ffi::c_char; UNIQUE_ID_BYTES];
    for (slot, &byte) in internal.iter_mut().zip(bytes) {
        *slot = byte as std::ffi::c_char;
    }
    Ok(Id::uninit(internal))
}

/// This rank's NCCL communicator and the stream its collectives run on.
pub struct NcclGroup {
    comm: Comm,
    stream: Arc<CudaStream>,
    world_size: usize,
}

impl NcclGroup {
    /// Meets the other ranks of `launch` (see [`rendezvous`]) and joins
    /// the communicator on GPU `launch.local_rank`.
    pub fn connect(launch: &LaunchEnv, key: &RunKey, timeout: Duration) -> Result<Self> {
        let blob = rendezvous(launch, key, new_unique_id, timeout)?;
        let id = unique_id_from_bytes(&blob)?;
        let context = CudaContext::new(launch.local_rank).with_context(|| {
            format!(
                "rank {} cannot open GPU {} (its local rank): does this node have that many GPUs?",
                launch.rank, launch.local_rank
            )
        })?;
        let stream = context.default_stream();
        let comm = Comm::from_rank(stream.clone(), launch.rank, launch.world_size, id)
            .map_err(nccl_error("join the communicator"))?;
        Ok(NcclGroup {
            comm,
            stream,
            world_size: launch.world_size,
        })
    }

    /// Replaces `bucket` by its mean over the ranks.
    pub fn average_bucket(&self, bucket: &mut [f32]) -> Result<()> {
        let mut device = self.stream.clone_htod(bucket)?;
        self.comm
            .all_reduce_in_place(&mut device, &ReduceOp::Sum)
            .map_err(nccl_error("all-reduce a gradient bucket"))?;
        self.stream.memcpy_dtoh(&device, bucket)?;
        self.stream.synchronize()?;
        let scale = 1.0 / self.world_size as f32;
        bucket.iter_mut().for_each(|v| *v *= scale);
        Ok(())
    }

    /// Replaces every gradient of `model`'s parameters in `grads` by its
    /// mean over the ranks, bucket by bucket.
    pub fn average_gradients<B: AutodiffBackend, M: Module<B>>(
        &self,
        model: &M,
        grads: &mut GradientsParams,
    ) -> Result<()> {
        let mut buckets = GradientBuckets::<B>::take(model, grads, DEFAULT_BUCKET_BYTES);
        for bucket in buckets.buckets_mut() {
            self.average_bucket(bucket)?;
        }
        buckets.put(model, grads);
        Ok(())
    }
}
