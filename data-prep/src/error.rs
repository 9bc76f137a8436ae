//! The crate's error type: every variant names the file involved and says what to do.

use std::path::PathBuf;

/// Errors from prep, dataset opening and loading.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read or written.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done ("cannot read", "cannot create", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error (in the message, so not also reported as a source).
        cause: std::io::Error,
    },
    /// The file does not start with topotrain's magic bytes.
    #[error(
        "{path} is not a topotrain dataset file (it does not start with the magic bytes \
         {expected:?}); create one with `topotrain prep`"
    )]
    NotADataset {
        /// The file concerned.
        path: PathBuf,
        /// The magic the file should start with.
        expected: String,
    },
    /// The file was written by another version of the format.
    #[error(
        "{path} uses dataset format version {found} but this build reads version {supported}; \
         re-create it with this build's `topotrain prep`"
    )]
    UnsupportedVersion {
        /// The file concerned.
        path: PathBuf,
        /// Version found in the header.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The file is shorter (or longer) than its header says.
    #[error(
        "{path} is truncated or was modified: it should be {expected} bytes long but has {found}; \
         an interrupted copy or prep leaves such files, re-run `topotrain prep` or copy it again"
    )]
    SizeMismatch {
        /// The file concerned.
        path: PathBuf,
        /// Length recorded in the header.
        expected: u64,
        /// Actual length.
        found: u64,
    },
    /// A checksum or a structural check failed.
    #[error("{path} is corrupt ({what}); re-run `topotrain prep` to re-create it")]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// Which check failed.
        what: String,
    },
    /// A stored record could not be decoded.
    #[error("record {index} of {path} cannot be decoded ({reason}); re-run `topotrain prep`")]
    BadRecord {
        /// The dataset file.
        path: PathBuf,
        /// Record index.
        index: usize,
        /// Decoder message.
        reason: String,
    },
    /// The source tree is not laid out as expected.
    #[error("{path}: {problem}")]
    BadSource {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// `--strict` was given and some source files could not be converted.
    #[error(
        "{count} file(s) of split `{split}` could not be converted (first: {first}); they are \
         listed in {manifest}; fix or remove them, or run without --strict to skip them"
    )]
    StrictFailures {
        /// Split name.
        split: String,
        /// Number of failed files.
        count: usize,
        /// The first failure, "path: reason".
        first: String,
        /// The manifest listing all failures.
        manifest: PathBuf,
    },
    /// An option or configuration value is out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    /// Wraps an I/O error with the action and path it concerns.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        cause: std::io::Error,
    ) -> Self {
        DataError::Io {
            action,
            path: path.into(),
            cause,
        }
    }
}
