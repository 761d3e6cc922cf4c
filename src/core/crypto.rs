//! Built-in end-to-end encryption, byte-compatible with the scheme the
//! Ignis docs pair with `handshakeFn` + `outboundTransformer` (docs/PROTOCOL.md §9),
//! so a browser decrypts with WebCrypto and no JavaScript runs per message
//! on the server:
//!
//! - ECDH P-256; public keys raw uncompressed (65 bytes), base64;
//! - HKDF-SHA-256 over the shared secret (the x coordinate, as WebCrypto's
//!   `deriveBits`), a random 32-byte salt (base64), info
//!   `ignis-ecdh-p256-aes-256-gcm-v1`, to an AES-256-GCM key;
//! - per frame a random 12-byte IV; the frame sent is
//!   `{"event":"encrypted","data":{"iv":…,"ct":…}}` with `ct` =
//!   base64(ciphertext ‖ tag) of the JSON `{event, data}`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P256};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};

const INFO: &[u8] = b"ignis-ecdh-p256-aes-256-gcm-v1";

/// One client's key, after the handshake.
pub struct ClientCipher {
    key: LessSafeKey,
    rng: SystemRandom,
}

/// What the server sends back in `connected`.
pub struct Handshake {
    pub cipher: ClientCipher,
    pub server_public_key: String,
    pub salt: String,
}

/// Derives a client's key from its base64 raw public key. `Err` when the
/// key is missing, not base64, or not a point on P-256.
pub fn handshake(client_public_key_b64: &str) -> Result<Handshake, &'static str> {
    let peer = B64
        .decode(client_public_key_b64.trim())
        .map_err(|_| "publicKey is not base64")?;
    if peer.len() != 65 || peer[0] != 4 {
        return Err("publicKey is not a raw uncompressed P-256 point");
    }
    let rng = SystemRandom::new();
    let private =
        EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| "key generation failed")?;
    let public = private
        .compute_public_key()
        .map_err(|_| "key generation failed")?;
    let mut salt = [0u8; 32];
    rng.fill(&mut salt).map_err(|_| "no randomness")?;
    let key_bytes = agreement::agree_ephemeral(
        private,
        &UnparsedPublicKey::new(&ECDH_P256, &peer),
        |shared| {
            let prk = Salt::new(HKDF_SHA256, &salt).extract(shared);
            let okm = prk.expand(&[INFO], &AES_256_GCM).map_err(|_| ())?;
            let mut key = [0u8; 32];
            okm.fill(&mut key).map_err(|_| ())?;
            Ok::<_, ()>(key)
        },
    )
    .map_err(|_| "publicKey is not a valid P-256 point")?
    .map_err(|_| "key derivation failed")?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key_bytes).map_err(|_| "bad key")?);
    Ok(Handshake {
        cipher: ClientCipher { key, rng },
        server_public_key: B64.encode(public.as_ref()),
        salt: B64.encode(salt),
    })
}

impl ClientCipher {
    /// Encrypts a plaintext frame into the `encrypted` frame text.
    pub fn seal(&self, plaintext: &[u8]) -> Option<String> {
        let mut iv = [0u8; 12];
        self.rng.fill(&mut iv).ok()?;
        let mut buf = Vec::with_capacity(plaintext.len() + 16);
        buf.extend_from_slice(plaintext);
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut buf)
            .ok()?;
        let iv_b64 = B64.encode(iv);
        let ct_b64 = B64.encode(&buf);
        let mut out = String::with_capacity(48 + iv_b64.len() + ct_b64.len());
        out.push_str("{\"event\":\"");
        out.push_str(crate::core::protocol::events::ENCRYPTED);
        out.push_str("\",\"data\":{\"iv\":\"");
        out.push_str(&iv_b64);
        out.push_str("\",\"ct\":\"");
        out.push_str(&ct_b64);
        out.push_str("\"}}");
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays the client's side with ring too and checks both ends agree.
    #[test]
    fn round_trip_with_a_client_key() {
        let rng = SystemRandom::new();
        let client = EphemeralPrivateKey::generate(&ECDH_P256, &rng).unwrap();
        let client_pub = B64.encode(client.compute_public_key().unwrap().as_ref());
        let hs = handshake(&client_pub).unwrap();
        let salt = B64.decode(&hs.salt).unwrap();
        let server_pub = B64.decode(&hs.server_public_key).unwrap();
        let key = agreement::agree_ephemeral(
            client,
            &UnparsedPublicKey::new(&ECDH_P256, &server_pub),
            |shared| {
                let prk = Salt::new(HKDF_SHA256, &salt).extract(shared);
                let okm = prk.expand(&[INFO], &AES_256_GCM).unwrap();
                LessSafeKey::new(UnboundKey::from(okm))
            },
        )
        .unwrap();
        let frame = hs.cipher.seal(br#"{"event":"x","data":1}"#).unwrap();
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["event"], "encrypted");
        let iv: [u8; 12] = B64
            .decode(v["data"]["iv"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let mut ct = B64.decode(v["data"]["ct"].as_str().unwrap()).unwrap();
        let pt = key
            .open_in_place(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut ct)
            .unwrap();
        assert_eq!(pt, br#"{"event":"x","data":1}"#);
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(handshake("").is_err());
        assert!(handshake("not base64!").is_err());
        assert!(handshake(&B64.encode([4u8; 65])).is_err());
        assert!(handshake(&B64.encode([1u8; 33])).is_err());
    }
}
