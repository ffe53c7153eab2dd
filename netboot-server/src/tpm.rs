//! TPM 2.0 credential protection (TPM 2.0 Part 1, "Credential Protection"): proves that a client holds
//! the TPM whose endorsement key (EK) the policy names. The server encrypts a one-time credential to
//! the EK, bound to the Name of a key the client has loaded in that TPM (what TPM2_MakeCredential
//! computes, done here in software); only that TPM can recover it (TPM2_ActivateCredential), since
//! only it holds the EK's private key. The credential travels in the file format of tpm2-tools
//! (`tpm2_makecredential -o`, `tpm2_activatecredential -i`), which is what clients run.

use std::collections::HashMap;
use std::sync::Mutex;

use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use hmac::{Hmac, Mac};
use rsa::rand_core::{OsRng, RngCore};
use rsa::{BigUint, Oaep, RsaPublicKey};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::mac::MacAddr;

const ALG_RSA: u16 = 0x0001;
const ALG_SHA256: u16 = 0x000b;
const ALG_AES: u16 = 0x0006;
const ALG_CFB: u16 = 0x0043;
const ALG_NULL: u16 = 0x0010;
/// objectAttributes an endorsement key has (TPM 2.0 Part 2, TPMA_OBJECT): bound to its TPM
/// (fixedTPM), and a restricted decryption key, the only kind TPM2_ActivateCredential accepts.
const FIXED_TPM: u32 = 1 << 1;
const RESTRICTED: u32 = 1 << 16;
const DECRYPT: u32 = 1 << 17;
/// tpm2-tools' credential file: this magic, this version, the TPM2B_ID_OBJECT, the
/// TPM2B_ENCRYPTED_SECRET.
const CREDENTIAL_FILE_MAGIC: u32 = 0xBADC_C0DE;
const CREDENTIAL_FILE_VERSION: u32 = 1;
/// A SHA-256 Name: the algorithm's identifier, then the digest.
pub const NAME_LEN: usize = 2 + 32;
/// The one-time credential: as long as the EK's Name digest, the most TPM2_MakeCredential takes.
pub const CREDENTIAL_LEN: usize = 32;

/// Why a public area is not an endorsement key this server can encrypt to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EkError {
    #[error("the public area ends early")]
    Truncated,
    #[error("{0} bytes follow the public area")]
    Trailing(usize),
    #[error(
        "not an RSA key (algorithm {0:#06x}): create the endorsement key with `tpm2_createek -G rsa`"
    )]
    NotRsa(u16),
    #[error("its Name algorithm is {0:#06x}, not SHA-256")]
    NotSha256(u16),
    #[error("not a TPM-bound restricted decryption key, as an endorsement key is")]
    NotAnEndorsementKey,
    #[error("its symmetric scheme is not AES-128 in CFB mode, as an RSA-2048 endorsement key's is")]
    NotAes128Cfb,
    #[error("an RSA key of {0} bits: an endorsement key has 2048")]
    KeyBits(u16),
    #[error("its modulus has {0} bytes, not 256")]
    Modulus(usize),
}

/// A TPM's RSA endorsement key, as `tpm2_createek -G rsa -u` writes it (a TPM2B_PUBLIC).
#[derive(Debug, Clone)]
pub struct EndorsementKey {
    name: [u8; NAME_LEN],
    key: RsaPublicKey,
}

impl EndorsementKey {
    /// Parses a marshalled TPM2B_PUBLIC: an RSA-2048 restricted decryption key with a SHA-256 Name
    /// and AES-128-CFB as its symmetric scheme, the default EK template of every TPM 2.0.
    pub fn parse(tpm2b_public: &[u8]) -> Result<Self, EkError> {
        let mut outer = Reader(tpm2b_public);
        let public = outer.sized()?;
        if !outer.0.is_empty() {
            return Err(EkError::Trailing(outer.0.len()));
        }
        let mut r = Reader(public);
        let algorithm = r.u16()?;
        if algorithm != ALG_RSA {
            return Err(EkError::NotRsa(algorithm));
        }
        let name_algorithm = r.u16()?;
        if name_algorithm != ALG_SHA256 {
            return Err(EkError::NotSha256(name_algorithm));
        }
        let attributes = r.u32()?;
        if attributes & (FIXED_TPM | RESTRICTED | DECRYPT) != FIXED_TPM | RESTRICTED | DECRYPT {
            return Err(EkError::NotAnEndorsementKey);
        }
        r.sized()?; // authPolicy
        let symmetric = r.u16()?;
        if symmetric != ALG_AES || r.u16()? != 128 || r.u16()? != ALG_CFB {
            return Err(EkError::NotAes128Cfb);
        }
        if r.u16()? != ALG_NULL {
            // A restricted decryption key has no signing or encryption scheme of its own.
            return Err(EkError::NotAnEndorsementKey);
        }
        let bits = r.u16()?;
        if bits != 2048 {
            return Err(EkError::KeyBits(bits));
        }
        let exponent = match r.u32()? {
            0 => 65_537, // the TPM's way of writing the default
            e => e,
        };
        let modulus = r.sized()?;
        if modulus.len() != 256 {
            return Err(EkError::Modulus(modulus.len()));
        }
        if !r.0.is_empty() {
            return Err(EkError::Trailing(r.0.len()));
        }
        let key = RsaPublicKey::new(BigUint::from_bytes_be(modulus), BigUint::from(exponent))
            .map_err(|_| EkError::NotAnEndorsementKey)?;
        let mut name = [0u8; NAME_LEN];
        name[..2].copy_from_slice(&ALG_SHA256.to_be_bytes());
        name[2..].copy_from_slice(&Sha256::digest(public));
        Ok(EndorsementKey { name, key })
    }

    /// The key's Name, as `tpm2_readpublic` prints it and the master file holds it.
    pub fn name_hex(&self) -> String {
        hex::encode(self.name)
    }

    /// `credential` sealed to this key and to the object named `object_name` (TPM2_MakeCredential),
    /// as a tpm2-tools credential file.
    pub fn make_credential(
        &self,
        object_name: &[u8; NAME_LEN],
        credential: &[u8; CREDENTIAL_LEN],
    ) -> Vec<u8> {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let encrypted_seed = self
            .key
            .encrypt(
                &mut OsRng,
                Oaep::new_with_label::<Sha256, _>("IDENTITY\0"),
                &seed,
            )
            .expect("a 32-byte seed fits any 2048-bit OAEP block");
        let symmetric_key: [u8; 16] = kdfa(&seed, b"STORAGE\0", object_name);
        let mut identity = sized(credential);
        cfb_mode::Encryptor::<aes::Aes128>::new(&symmetric_key.into(), &[0u8; 16].into())
            .encrypt(&mut identity);
        let hmac_key: [u8; 32] = kdfa(&seed, b"INTEGRITY\0", &[]);
        let mut integrity =
            <Hmac<Sha256> as Mac>::new_from_slice(&hmac_key).expect("any key length");
        integrity.update(&identity);
        integrity.update(object_name);
        let id_object = [sized(&integrity.finalize().into_bytes()), identity].concat();
        [
            &CREDENTIAL_FILE_MAGIC.to_be_bytes()[..],
            &CREDENTIAL_FILE_VERSION.to_be_bytes(),
            &sized(&id_object),
            &sized(&encrypted_seed),
        ]
        .concat()
    }
}

/// A key's Name from its hexadecimal form (a SHA-256 Name only).
pub fn parse_name(text: &str) -> Option<[u8; NAME_LEN]> {
    let bytes = hex::decode(text).ok()?;
    let name: [u8; NAME_LEN] = bytes.try_into().ok()?;
    (name[..2] == ALG_SHA256.to_be_bytes()).then_some(name)
}

/// The credentials handed out and not yet redeemed: one per host, for one boot, redeemable once.
#[derive(Debug, Default)]
pub struct Challenges(Mutex<HashMap<MacAddr, (String, [u8; CREDENTIAL_LEN])>>);

impl Challenges {
    /// A fresh credential for `mac`'s boot `boot_id`, replacing any it had.
    pub fn issue(&self, mac: MacAddr, boot_id: &str) -> [u8; CREDENTIAL_LEN] {
        let mut credential = [0u8; CREDENTIAL_LEN];
        OsRng.fill_bytes(&mut credential);
        let mut pending = self.0.lock().expect("challenges lock");
        pending.insert(mac, (boot_id.to_owned(), credential));
        credential
    }

    /// Whether `activated` (hexadecimal) is the credential `mac`'s boot `boot_id` was issued. The
    /// credential is spent either way: a wrong answer needs a new challenge.
    pub fn redeem(&self, mac: MacAddr, boot_id: &str, activated: &str) -> bool {
        let issued = self.0.lock().expect("challenges lock").remove(&mac);
        let Some((issued_to, credential)) = issued else {
            return false;
        };
        // Compared in constant time, so timing says nothing of the credential.
        let answer = hex::decode(activated).unwrap_or_default();
        issued_to == boot_id && bool::from(answer.ct_eq(&credential[..]))
    }
}

/// KDFa of TPM 2.0 Part 1 (SP 800-108 counter mode with HMAC-SHA-256), for `N` bytes, with no
/// second context.
fn kdfa<const N: usize>(key: &[u8], label: &[u8], context: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let bits = u32::try_from(N * 8).expect("a small key");
    for (counter, block) in (1u32..).zip(out.chunks_mut(32)) {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
        mac.update(&counter.to_be_bytes());
        mac.update(label);
        mac.update(context);
        mac.update(&bits.to_be_bytes());
        block.copy_from_slice(&mac.finalize().into_bytes()[..block.len()]);
    }
    out
}

/// A TPM2B: the bytes after their big-endian 16-bit length.
fn sized(bytes: &[u8]) -> Vec<u8> {
    let len = u16::try_from(bytes.len()).expect("TPM2B fields are small");
    [&len.to_be_bytes()[..], bytes].concat()
}

/// Reads TPM marshalled values: big-endian integers and TPM2B fields.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EkError> {
        if self.0.len() < n {
            return Err(EkError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, EkError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, EkError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn sized(&mut self) -> Result<&'a [u8], EkError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::RsaPrivateKey;
    use rsa::traits::PublicKeyParts;

    /// The EK a software TPM (swtpm) made with `tpm2_createek -G rsa -u ek.pub`, and the Name
    /// `tpm2_readpublic` printed for it.
    pub(crate) const SWTPM_EK: &[u8] = include_bytes!("../tests/fixtures/swtpm-ek.pub");
    const SWTPM_EK_NAME: &str = include_str!("../tests/fixtures/swtpm-ek.name");

    /// The EK template's public area around `modulus` (TPM 2.0 EK profile, template L-1).
    fn ek_public(modulus: &[u8]) -> Vec<u8> {
        let policy = [0x83u8; 32];
        let attributes: u32 = FIXED_TPM | RESTRICTED | DECRYPT | 0x0003_00b0;
        let mut area = Vec::new();
        for value in [ALG_RSA, ALG_SHA256] {
            area.extend(value.to_be_bytes());
        }
        area.extend(attributes.to_be_bytes());
        area.extend(sized(&policy));
        for value in [ALG_AES, 128, ALG_CFB, ALG_NULL, 2048] {
            area.extend(value.to_be_bytes());
        }
        area.extend(0u32.to_be_bytes());
        area.extend(sized(modulus));
        sized(&area)
    }

    #[test]
    fn reads_a_software_tpms_endorsement_key_and_its_name() {
        let ek = EndorsementKey::parse(SWTPM_EK).unwrap();
        assert_eq!(ek.name_hex(), SWTPM_EK_NAME.trim());
        assert_eq!(ek.key.e(), &BigUint::from(65_537u32));
    }

    #[test]
    fn refuses_what_is_not_an_endorsement_key() {
        let good = ek_public(&[0xc5; 256]);
        assert!(EndorsementKey::parse(&good).is_ok());
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            EndorsementKey::parse(&trailing).unwrap_err(),
            EkError::Trailing(1)
        );
        let mut ecc = good.clone();
        ecc[2..4].copy_from_slice(&0x0023u16.to_be_bytes());
        assert_eq!(
            EndorsementKey::parse(&ecc).unwrap_err(),
            EkError::NotRsa(0x23)
        );
        let mut signing = good.clone();
        signing[6..10].copy_from_slice(&(FIXED_TPM | 1 << 18).to_be_bytes());
        assert_eq!(
            EndorsementKey::parse(&signing).unwrap_err(),
            EkError::NotAnEndorsementKey
        );
        assert_eq!(
            EndorsementKey::parse(&ek_public(&[0xc5; 128])).unwrap_err(),
            EkError::Modulus(128)
        );
        for cut in 0..good.len() {
            assert!(EndorsementKey::parse(&good[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// A TPM's endorsement key held in software: what TPM2_ActivateCredential does with it.
    pub(crate) struct SoftwareTpm(RsaPrivateKey);

    impl SoftwareTpm {
        /// The TPM and its EK's public area.
        pub(crate) fn new() -> (Self, Vec<u8>) {
            let private = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
            let public = ek_public(&private.n().to_bytes_be());
            (SoftwareTpm(private), public)
        }

        /// The credential of a tpm2-tools credential `file` sealed to the object `name` (hexadecimal).
        pub(crate) fn activate(&self, name: &str, file: &[u8]) -> Option<Vec<u8>> {
            activate(&self.0, &hex::decode(name).ok()?, file)
        }
    }

    /// What TPM2_ActivateCredential does with the EK's private key, by the same specification.
    fn activate(private: &RsaPrivateKey, object_name: &[u8], file: &[u8]) -> Option<Vec<u8>> {
        let mut r = Reader(file);
        (r.u32().ok()? == CREDENTIAL_FILE_MAGIC).then_some(())?;
        (r.u32().ok()? == CREDENTIAL_FILE_VERSION).then_some(())?;
        let id_object = r.sized().ok()?;
        let encrypted_seed = r.sized().ok()?;
        let seed = private
            .decrypt(
                Oaep::new_with_label::<Sha256, _>("IDENTITY\0"),
                encrypted_seed,
            )
            .ok()?;
        let mut id = Reader(id_object);
        let integrity = id.sized().ok()?;
        let identity = id.0;
        let hmac_key: [u8; 32] = kdfa(&seed, b"INTEGRITY\0", &[]);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&hmac_key).unwrap();
        mac.update(identity);
        mac.update(object_name);
        mac.verify_slice(integrity).ok()?;
        let symmetric_key: [u8; 16] = kdfa(&seed, b"STORAGE\0", object_name);
        let mut plain = identity.to_vec();
        cfb_mode::Decryptor::<aes::Aes128>::new(&symmetric_key.into(), &[0u8; 16].into())
            .decrypt(&mut plain);
        Some(Reader(&plain).sized().ok()?.to_vec())
    }

    #[test]
    fn only_the_keys_holder_recovers_the_credential_and_only_for_the_named_object() {
        let (SoftwareTpm(private), public) = SoftwareTpm::new();
        let ek = EndorsementKey::parse(&public).unwrap();
        let object = parse_name(&format!("000b{}", "ab".repeat(32))).unwrap();
        let credential = [7u8; CREDENTIAL_LEN];
        let file = ek.make_credential(&object, &credential);
        assert_eq!(file.len(), 8 + 2 + 2 + 32 + 2 + 32 + 2 + 256);
        assert_eq!(
            activate(&private, &object, &file),
            Some(credential.to_vec())
        );
        let mut other = object;
        other[5] ^= 1;
        assert_eq!(activate(&private, &other, &file), None);
        let (SoftwareTpm(stranger), _) = SoftwareTpm::new();
        assert_eq!(activate(&stranger, &object, &file), None);
    }

    #[test]
    fn a_challenge_is_redeemed_once_by_its_boot() {
        let challenges = Challenges::default();
        let mac: MacAddr = "52:54:00:00:01:01".parse().unwrap();
        let credential = challenges.issue(mac, "b1");
        assert!(!challenges.redeem(mac, "b1", &hex::encode([0; CREDENTIAL_LEN])));
        assert!(
            !challenges.redeem(mac, "b1", &hex::encode(credential)),
            "spent"
        );
        let credential = challenges.issue(mac, "b1");
        assert!(!challenges.redeem(mac, "b2", &hex::encode(credential)));
        let credential = challenges.issue(mac, "b1");
        assert!(challenges.redeem(mac, "b1", &hex::encode(credential)));
    }

    #[test]
    fn names_are_sha256_names() {
        assert!(parse_name(SWTPM_EK_NAME.trim()).is_some());
        assert!(parse_name(&format!("0004{}", "00".repeat(32))).is_none());
        assert!(parse_name("000b00").is_none());
        assert!(parse_name(&format!("000b{}", "zz".repeat(32))).is_none());
    }

    proptest::proptest! {
        /// Whatever a client sends as its EK, parsing ends in a key or an error, never a panic.
        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = EndorsementKey::parse(&bytes);
        }

        #[test]
        fn any_change_to_a_real_ek_parses_or_fails_cleanly(at in 0usize..316, value: u8) {
            let mut bytes = SWTPM_EK.to_vec();
            bytes[at % SWTPM_EK.len()] = value;
            if let Ok(ek) = EndorsementKey::parse(&bytes) {
                proptest::prop_assert_eq!(ek.name_hex() == SWTPM_EK_NAME.trim(), bytes == SWTPM_EK);
            }
        }
    }
}
