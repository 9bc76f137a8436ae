//! Reused buffers for the CPU kernels' intermediate matrices.
//!
//! A ResNet training step makes hundreds of them (im2col columns, gathered
//! gradients, products before reordering), up to megabytes each. Allocated
//! fresh, each was zero-filled by one thread while the others waited (8% of
//! a ResNet-18 step at batch 8, 64 px). Reused, a buffer holds whatever its
//! last user left, so every user writes all of it before reading it.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// At most this many free buffers are kept per thread (the kernels hold
/// three at once).
const KEPT: usize = 4;

thread_local! {
    static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// `len` floats of unspecified (but initialised) value, given back to this
/// thread's free buffers when dropped.
pub(super) struct Scratch(Vec<f32>);

impl Scratch {
    pub(super) fn take(len: usize) -> Self {
        let mut values = FREE
            .with(|free| free.borrow_mut().pop())
            .unwrap_or_default();
        if values.capacity() < len {
            // Growing in place would copy the stale values first.
            values.clear();
        }
        values.resize(len, 0.0);
        Self(values)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let values = std::mem::take(&mut self.0);
        // `try_with`: a buffer dropped while the thread shuts down is freed.
        let _ = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEPT {
                free.push(values);
            }
        });
    }
}

impl Deref for Scratch {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

/// Fills this thread's free buffers with NaN, so that a test can tell a
/// value a kernel forgot to write from one it wrote.
#[cfg(test)]
pub(super) fn poison() {
    FREE.with(|free| {
        let mut free = free.borrow_mut();
        free.clear();
        free.extend((0..KEPT).map(|_| vec![f32::NAN; 1 << 16]));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_reused_with_its_old_values_and_the_requested_length() {
        FREE.with(|free| free.borrow_mut().clear());
        let mut first = Scratch::take(10);
        first.fill(7.0);
        let address = first.as_ptr();
        drop(first);
        let second = Scratch::take(6);
        assert_eq!(second.as_ptr(), address);
        assert_eq!(&second[..], &[7.0; 6]);
        // Larger than any free buffer: a new allocation, zero-filled.
        drop(second);
        let third = Scratch::take(1000);
        assert_eq!(third.len(), 1000);
        assert!(third.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn at_most_kept_buffers_are_kept() {
        FREE.with(|free| free.borrow_mut().clear());
        let buffers: Vec<_> = (0..KEPT + 3).map(|_| Scratch::take(4)).collect();
        drop(buffers);
        assert_eq!(FREE.with(|free| free.borrow().len()), KEPT);
    }
}
