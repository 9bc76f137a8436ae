//! Token datasets for language models (`topotrain prep text` / `prep kjv`).
//!
//! A corpus is tokenised with GPT-2's byte-pair encoding (tiktoken's
//! `r50k_base`, whose vocabulary is compiled into the `tiktoken-rs` crate,
//! so nothing is downloaded) and split into a training part and a
//! validation part, the last `val_fraction` of the text cut at a line
//! boundary. `<out>` then holds:
//! - `train.bin`, `val.bin`: the token ids as little-endian `u16`, NanoGPT's
//!   format (`np.memmap(path, dtype=np.uint16)` reads them);
//! - `meta.json`: tokenizer, vocabulary size, token counts, and where the
//!   text came from ([`TextMeta`]).
//!
//! [`TokenFile`] memory-maps a `.bin` file for training.
//!
//! The embedded corpus is the King James Bible from Debian's `bible-kjv`
//! package ([`kjv_text`]): `bible -f gen1:1-rev22:21` prints one verse per
//! line behind a reference such as `Ge1:1`, which
//! [`strip_verse_references`] removes. The text is public domain (the
//! package's copyright file: the translation dates from 1611).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// The tokenizer every token file is written with.
pub const TOKENIZER: &str = "gpt2 (tiktoken r50k_base)";
/// GPT-2's vocabulary: 50256 merges/bytes plus `<|endoftext|>`.
pub const GPT2_VOCAB_SIZE: usize = 50257;
/// The `bible` program and its flag for plain output; the verse range follows.
pub const KJV_COMMAND: [&str; 2] = ["bible", "-f"];
/// The whole King James Bible as a `bible` verse range.
pub const KJV_WHOLE: &str = "gen1:1-rev22:21";
/// The Old and New Testaments, for pre-training on one and fine-tuning on the other.
pub const KJV_OLD_TESTAMENT: &str = "gen1:1-mal4:6";
pub const KJV_NEW_TESTAMENT: &str = "mat1:1-rev22:21";
/// Bytes of text tokenised per parallel task.
const CHUNK_BYTES: usize = 1 << 16;

/// `meta.json` of a token dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextMeta {
    pub tokenizer: String,
    /// Token ids are below this.
    pub vocab_size: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
    /// Fraction of the text (by bytes, cut at a line end) kept for validation.
    pub val_fraction: f64,
    /// Where the text came from, for provenance.
    pub source: String,
    /// Bytes of text tokenised (after any stripping).
    pub text_bytes: usize,
}

/// Removes a leading verse reference (`Ge1:1 `, `1Co13:4 `, `Song2:1 `)
/// from every line; lines without one are kept as they are.
pub fn strip_verse_references(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out.push_str(without_reference(line));
        out.push('\n');
    }
    out
}

/// The line after `<digit?><letters><chapter>:<verse> `, or the whole line.
fn without_reference(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut i = 0;
    if bytes.first().is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let letters = i;
    while bytes.get(i).is_some_and(u8::is_ascii_alphabetic) {
        i += 1;
    }
    let digits = |mut j: usize| {
        let start = j;
        while bytes.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        (j > start).then_some(j)
    };
    let parsed = (i > letters)
        .then_some(i)
        .and_then(digits)
        .filter(|&j| bytes.get(j) == Some(&b':'))
        .and_then(|j| digits(j + 1))
        .filter(|&j| bytes.get(j) == Some(&b' '));
    match parsed {
        Some(j) => &line[j + 1..],
        None => line,
    }
}

/// Runs Debian's `bible` program and returns the verses of `range` (e.g.
/// [`KJV_WHOLE`]), references stripped, one verse per line.
pub fn kjv_text(range: &str) -> Result<String> {
    let [program, flag] = KJV_COMMAND;
    let invocation = format!("{program} {flag} {range}");
    let output = Command::new(program)
        .args([flag, range])
        .output()
        .map_err(|e| DataError::BadSource {
            path: PathBuf::from(program),
            problem: format!(
                "cannot run `{invocation}` ({e}); install Debian's bible-kjv package \
                 (`apt-get install bible-kjv`, done by scripts/setup.sh)"
            ),
        })?;
    if !output.status.success() {
        return Err(DataError::BadSource {
            path: PathBuf::from(program),
            problem: format!(
                "`{invocation}` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    let text = String::from_utf8(output.stdout).map_err(|e| DataError::BadSource {
        path: PathBuf::from(program),
        problem: format!("output is not UTF-8: {e}"),
    })?;
    if text.trim().is_empty() {
        return Err(DataError::BadSource {
            path: PathBuf::from(program),
            problem: format!(
                "`{invocation}` printed nothing; is `{range}` a verse range such as {KJV_WHOLE}?"
            ),
        });
    }
    Ok(strip_verse_references(&text))
}

/// Where the KJV text of `range` came from, with the package version when dpkg knows it.
pub fn kjv_provenance(range: &str) -> String {
    let version = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "bible-kjv-text"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty());
    format!(
        "King James Bible (public domain), Debian package bible-kjv-text {}, `{} {range}`, verse references stripped",
        version.as_deref().unwrap_or("(version unknown)"),
        KJV_COMMAND.join(" ")
    )
}

/// GPT-2 token ids of `text` (special tokens are not recognised: a literal
/// `<|endoftext|>` in the text is encoded as ordinary text). Chunks cut
/// at lone newlines are encoded in parallel; GPT-2's pre-tokeniser never
/// joins pieces across such a cut, so the result equals encoding the whole
/// text at once.
pub fn tokenize(text: &str) -> Vec<u16> {
    let bpe = tiktoken_rs::r50k_base_singleton();
    let chunks = split_at_line_starts(text, CHUNK_BYTES);
    chunks
        .par_iter()
        .map(|chunk| {
            bpe.encode_ordinary(chunk)
                .into_iter()
                // r50k ids are < 50257, so they fit u16.
                .map(|id| id as u16)
                .collect::<Vec<u16>>()
        })
        .collect::<Vec<_>>()
        .concat()
}

/// Text of GPT-2 token ids (lossy for ids that split a UTF-8 character).
pub fn detokenize(tokens: &[u16]) -> String {
    let bpe = tiktoken_rs::r50k_base_singleton();
    let ids: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
    match bpe.decode_bytes(&ids) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        // Ids outside the vocabulary (a model's padded rows) show as U+FFFD.
        Err(_) => ids
            .iter()
            .map(|&id| {
                bpe.decode_bytes(&[id])
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|_| "\u{fffd}".to_string())
            })
            .collect(),
    }
}

/// Whether the pre-tokeniser's pieces never span byte `cut`: a lone `\n`
/// between non-whitespace (`\n\n` at a chunk's end would become one
/// piece, where the whole text makes two).
fn is_safe_cut(bytes: &[u8], cut: usize) -> bool {
    cut >= 2
        && bytes[cut - 1] == b'\n'
        && !bytes[cut - 2].is_ascii_whitespace()
        && !bytes[cut].is_ascii_whitespace()
}

/// Pieces of about `target` bytes, each cut at an [`is_safe_cut`] point.
fn split_at_line_starts(text: &str, target: usize) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let mut cut = (start + target).min(bytes.len());
        while cut < bytes.len() && !is_safe_cut(bytes, cut) {
            cut += 1;
        }
        pieces.push(&text[start..cut]);
        start = cut;
    }
    pieces
}

/// Index of the line start nearest to `fraction` of the text, from the end.
fn split_point(text: &str, val_fraction: f64) -> usize {
    let target = ((1.0 - val_fraction) * text.len() as f64) as usize;
    match text[..target.min(text.len())].rfind('\n') {
        Some(i) => i + 1,
        None => 0,
    }
}

/// Tokenises `text`, splits it and writes `train.bin`, `val.bin` and
/// `meta.json` into `out`.
pub fn prep_text(text: &str, source: &str, out: &Path, val_fraction: f64) -> Result<TextMeta> {
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        return Err(DataError::InvalidOption(format!(
            "val fraction {val_fraction} must be in (0, 1)"
        )));
    }
    if text.trim().is_empty() {
        return Err(DataError::BadSource {
            path: PathBuf::from(source),
            problem: "the text is empty".to_string(),
        });
    }
    let cut = split_point(text, val_fraction);
    let (train_text, val_text) = text.split_at(cut);
    let (train, val) = rayon::join(|| tokenize(train_text), || tokenize(val_text));
    if train.is_empty() || val.is_empty() {
        return Err(DataError::BadSource {
            path: PathBuf::from(source),
            problem: format!(
                "too short to split: {} training and {} validation tokens; use more text",
                train.len(),
                val.len()
            ),
        });
    }
    fs::create_dir_all(out).map_err(|e| DataError::io("cannot create", out, e))?;
    write_tokens(&out.join("train.bin"), &train)?;
    write_tokens(&out.join("val.bin"), &val)?;
    let meta = TextMeta {
        tokenizer: TOKENIZER.to_string(),
        vocab_size: GPT2_VOCAB_SIZE,
        train_tokens: train.len(),
        val_tokens: val.len(),
        val_fraction,
        source: source.to_string(),
        text_bytes: text.len(),
    };
    let json =
        serde_json::to_vec_pretty(&meta).map_err(|e| DataError::InvalidOption(e.to_string()))?;
    write_atomic(&out.join("meta.json"), &json)?;
    Ok(meta)
}

/// Writes little-endian u16 tokens through a temporary file and a rename.
pub fn write_tokens(path: &Path, tokens: &[u16]) -> Result<()> {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    write_atomic(path, &bytes)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    let mut file = fs::File::create(&tmp).map_err(|e| DataError::io("cannot create", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| DataError::io("cannot write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| DataError::io("cannot rename into", path, e))
}

/// A memory-mapped token file (`train.bin` / `val.bin`).
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    map: Mmap,
}

impl TokenFile {
    /// Opens and checks a token file: even length, at least two tokens, and
    /// every id below `vocab_size`.
    pub fn open(path: impl AsRef<Path>, vocab_size: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = fs::File::open(&path).map_err(|e| DataError::io("cannot open", &path, e))?;
        // SAFETY: the file is only read; topotrain never writes a token file
        // in place (writes go through a rename).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io("cannot map", &path, e))?;
        let tokens = TokenFile { path, map };
        if !tokens.map.len().is_multiple_of(2) || tokens.len() < 2 {
            return Err(DataError::Corrupt {
                path: tokens.path,
                what: format!(
                    "{} bytes is not a token file of at least two u16 tokens",
                    tokens.map.len()
                ),
            });
        }
        let bad = tokens
            .iter()
            .enumerate()
            .find(|(_, id)| *id as usize >= vocab_size);
        if let Some((index, id)) = bad {
            return Err(DataError::Corrupt {
                path: tokens.path,
                what: format!("token {index} is {id}, not below the vocabulary size {vocab_size}"),
            });
        }
        Ok(tokens)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.map.len() / 2
    }

    /// Whether the file holds no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token `index`.
    pub fn get(&self, index: usize) -> u16 {
        u16::from_le_bytes([self.map[2 * index], self.map[2 * index + 1]])
    }

    /// All tokens in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.map
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    /// `len` tokens from `start`, appended to `out` as `i64` ids.
    pub fn extend_window(&self, start: usize, len: usize, out: &mut Vec<i64>) {
        out.extend((start..start + len).map(|i| self.get(i) as i64));
    }
}

/// Reads `<dir>/meta.json`.
pub fn read_meta(dir: &Path) -> Result<TextMeta> {
    let path = dir.join("meta.json");
    let text = fs::read_to_string(&path).map_err(|e| DataError::io("cannot read", &path, e))?;
    serde_json::from_str(&text).map_err(|e| DataError::Corrupt {
        path,
        what: format!("not a token dataset's meta.json: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verse_references_are_stripped() {
        let text = "Ge1:1 In the beginning.\n1Co13:4 Charity suffereth long,\nSong2:1 I am the rose\nno reference: here\n";
        assert_eq!(
            strip_verse_references(text),
            "In the beginning.\nCharity suffereth long,\nI am the rose\nno reference: here\n"
        );
    }

    #[test]
    fn gpt2_tokens_are_the_published_ones() {
        // tiktoken's gpt2 encoding of "Hello world" is [15496, 995].
        assert_eq!(tokenize("Hello world"), [15496, 995]);
        assert_eq!(
            detokenize(&tokenize("In the beginning God")),
            "In the beginning God"
        );
    }

    #[test]
    fn parallel_chunks_tokenise_like_the_whole_text() {
        let text = "And God said, Let there be light.\n\nAnd there was light.\n  indented\nend\n"
            .repeat(50);
        let bpe = tiktoken_rs::r50k_base_singleton();
        let whole: Vec<u16> = bpe
            .encode_ordinary(&text)
            .into_iter()
            .map(|t| t as u16)
            .collect();
        let chunks = split_at_line_starts(&text, 100);
        assert!(chunks.len() > 10);
        assert_eq!(chunks.concat(), text);
        let parallel: Vec<u16> = chunks
            .iter()
            .flat_map(|c| bpe.encode_ordinary(c).into_iter().map(|t| t as u16))
            .collect();
        assert_eq!(parallel, whole);
    }

    #[test]
    fn prep_writes_memory_mappable_splits() {
        let dir = tempfile::tempdir().unwrap();
        let text = "line one of the corpus\nline two\n".repeat(40);
        let meta = prep_text(&text, "test", dir.path(), 0.25).unwrap();
        let train = TokenFile::open(dir.path().join("train.bin"), meta.vocab_size).unwrap();
        let val = TokenFile::open(dir.path().join("val.bin"), meta.vocab_size).unwrap();
        assert_eq!(
            (train.len(), val.len()),
            (meta.train_tokens, meta.val_tokens)
        );
        assert_eq!(train.len() + val.len(), tokenize(&text).len());
        assert!(val.len() * 5 < train.len() * 2, "val is about a quarter");
        assert_eq!(read_meta(dir.path()).unwrap(), meta);
        let mut window = Vec::new();
        train.extend_window(0, 3, &mut window);
        assert_eq!(
            window,
            tokenize("line one of")[..3]
                .iter()
                .map(|&t| t as i64)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn bad_token_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.bin");
        fs::write(&path, [1u8, 2, 3]).unwrap();
        let err = TokenFile::open(&path, GPT2_VOCAB_SIZE)
            .unwrap_err()
            .to_string();
        assert!(err.contains("odd.bin") && err.contains("3 bytes"), "{err}");
        write_tokens(&path, &[5, 60000]).unwrap();
        let err = TokenFile::open(&path, GPT2_VOCAB_SIZE)
            .unwrap_err()
            .to_string();
        assert!(err.contains("60000"), "{err}");
        let err = TokenFile::open(dir.path().join("missing.bin"), 10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.bin"), "{err}");
    }
}
