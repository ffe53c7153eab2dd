use std::fmt;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A sha256 digest as 64 lowercase hex characters: the name of a blob and the key of a layer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

#[derive(Debug, thiserror::Error)]
#[error("not a sha256 hex digest: {0:?}")]
pub struct InvalidDigest(pub String);

impl Digest {
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    /// Hashes everything `reader` yields; returns the digest and the number of bytes read.
    pub fn of_reader(mut reader: impl Read) -> io::Result<(Self, u64)> {
        let mut hasher = Sha256::new();
        let mut buffer = vec![0; 1 << 20];
        let mut size = 0;
        loop {
            let read = reader.read(&mut buffer)?;
            if read == 0 {
                return Ok((Self(hex::encode(hasher.finalize())), size));
            }
            hasher.update(&buffer[..read]);
            size += read as u64;
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex characters, for messages and build ids.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl TryFrom<String> for Digest {
    type Error = InvalidDigest;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let valid = value.len() == 64
            && value
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if valid {
            Ok(Self(value))
        } else {
            Err(InvalidDigest(value))
        }
    }
}

impl std::str::FromStr for Digest {
    type Err = InvalidDigest;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> Self {
        digest.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_value_and_reader_agree() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(Digest::of_bytes(b"").as_str(), empty);
        let (digest, size) = Digest::of_reader(&b"abc"[..]).unwrap();
        assert_eq!(digest, Digest::of_bytes(b"abc"));
        assert_eq!(size, 3);
    }

    #[test]
    fn rejects_non_digests() {
        assert!("ABC".parse::<Digest>().is_err());
        assert!("../".repeat(22)[..64].parse::<Digest>().is_err());
        assert!(Digest::of_bytes(b"x").as_str().parse::<Digest>().is_ok());
    }
}
