//! Reading small files the configuration points at (secrets, CA bundles, the config file
//! itself) without trusting what they are: a FIFO would block start-up until some writer
//! came, `/dev/zero` or a huge file would be read until memory ran out. Every such read goes
//! through [`read_bounded`]: regular files only, at most a given size.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Most bytes of a secret file (a password, a token, a URL): far more than any holds.
pub const SECRET_LIMIT: u64 = 64 * 1024;

/// Most bytes of a PEM bundle of CA certificates: a whole system bundle (about 220 KiB for
/// Mozilla's roots) fits.
pub const CA_LIMIT: u64 = 1024 * 1024;

/// Why a bounded read failed; its text says what is wrong with the file (the caller names
/// the field and the file).
#[derive(Debug)]
pub enum ReadError {
    /// Opening or reading failed.
    Io(std::io::Error),
    /// Not a regular file (a FIFO, a device, a directory, a socket).
    NotRegular(&'static str),
    /// Longer than the limit.
    TooLarge(u64),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "cannot be read: {e}"),
            Self::NotRegular(kind) => write!(f, "is {kind}, not a regular file"),
            Self::TooLarge(limit) => write!(f, "is larger than the limit of {} KiB", limit / 1024),
        }
    }
}

impl std::error::Error for ReadError {}

/// The contents of the regular file at `path` (symbolic links followed, as Kubernetes
/// mounts Secrets), at most `limit` bytes of it.
///
/// The file is opened without blocking (`O_NONBLOCK`: opening a FIFO to read would wait for
/// a writer) and checked on the open descriptor, so what is checked is what is read.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let file =
        OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(ReadError::Io)?;
    let kind = file.metadata().map_err(ReadError::Io)?.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt as _;
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(ReadError::NotRegular(what));
    }
    // One byte over the limit tells a file at the limit from a longer one, without trusting
    // the size `stat` gives (files in /proc and /sys say 0).
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge(limit));
    }
    Ok(bytes)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_bounded_text(path: &Path, limit: u64) -> Result<String, ReadError> {
    let bytes = read_bounded(path, limit)?;
    String::from_utf8(bytes)
        .map_err(|_| ReadError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_up_to_the_limit_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("ew-bounded-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "0123456789").unwrap();
        assert_eq!(read_bounded(&file, 10).unwrap(), b"0123456789");
        assert_eq!(read_bounded_text(&file, 64).unwrap(), "0123456789");
        let long = read_bounded(&file, 9).unwrap_err();
        assert!(matches!(long, ReadError::TooLarge(9)), "{long}");
        let zero = read_bounded(Path::new("/dev/zero"), 10).unwrap_err();
        assert_eq!(zero.to_string(), "is a device, not a regular file");
        let directory = read_bounded(&dir, 10).unwrap_err();
        assert_eq!(directory.to_string(), "is a directory, not a regular file");
        let missing = read_bounded(&dir.join("missing"), 10).unwrap_err();
        assert!(missing.to_string().starts_with("cannot be read: "), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
