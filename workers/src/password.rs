//! Argon2id password hashing in the PHC string format. CPU- and memory-heavy by design:
//! call it only on a worker thread.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Params, Version};

#[derive(Debug, Clone, Copy)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

fn hasher(params: Argon2Params) -> Argon2<'static> {
    let params = Params::new(params.memory_kib, params.iterations, params.parallelism, None)
        .expect("Argon2 parameters are validated when tuning.toml loads");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes `password` with a fresh random salt.
pub fn hash(params: Argon2Params, password: &[u8]) -> String {
    let salt = SaltString::generate(&mut OsRng);
    hasher(params)
        .hash_password(password, &salt)
        .expect("hashing into a PHC string cannot fail")
        .to_string()
}

/// True if `password` matches `phc`. A malformed `phc` never matches.
pub fn verify(phc: &str, password: &[u8]) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    // The parameters are read from the PHC string, so old hashes keep verifying after a
    // tuning change.
    Argon2::default().verify_password(password, &parsed).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Argon2Params = Argon2Params {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash(CHEAP, b"correct horse");
        let b = hash(CHEAP, b"correct horse");
        assert!(a.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{a}");
        assert_ne!(a, b);
        assert!(verify(&a, b"correct horse"));
        assert!(!verify(&a, b"wrong horse"));
        assert!(!verify("not a hash", b"correct horse"));
    }
}
