//! Every standalone vector from real implementations, byte for byte: AES-256-CBC
//! ciphertexts, cksums, RSA key encodings, OAEP-SHA-1 (and the rejected SHA-256) ciphertexts,
//! me.info files and the header/payload encodings of every recorded message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use base64::Engine;
use bytes::BytesMut;
use common::{dir, hex_bytes, json, read};
use cyberbackup_core::crypto::{
    AesKey, CbcDecryptor, CbcEncryptor, Cksum, ClientKeyPair, CryptoError, PublicKey,
};
use cyberbackup_core::identity::Identity;
use cyberbackup_core::v3::codec::{Inbound, RequestDecoder, ResponseDecoder};
use cyberbackup_core::v3::frame::{RequestHeader, ResponseHeader};

fn standalone_key() -> AesKey {
    let index = json("standalone/index.json");
    let bytes = hex_bytes(index["aes_key_hex"].as_str().unwrap());
    AesKey::from_bytes(bytes.try_into().unwrap())
}

#[test]
fn aes_cbc_ciphertexts_match_byte_for_byte() {
    let index = json("standalone/index.json");
    let cases = index["aes_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 7);
    for case in cases {
        let plain = read(&format!(
            "standalone/{}",
            case["plaintext_file"].as_str().unwrap()
        ));
        let cipher = read(&format!(
            "standalone/{}",
            case["ciphertext_file"].as_str().unwrap()
        ));
        assert_eq!(plain.len() as u64, case["len"].as_u64().unwrap());
        let mut out = BytesMut::new();
        let mut enc = CbcEncryptor::new(&standalone_key());
        for piece in plain.chunks(4093) {
            enc.update(piece, &mut out);
        }
        enc.finish(&mut out);
        assert_eq!(&out[..], &cipher[..], "ciphertext of {} bytes", plain.len());
        let mut back = BytesMut::new();
        let mut dec = CbcDecryptor::new(&standalone_key());
        for piece in cipher.chunks(1000) {
            dec.update(piece, &mut back);
        }
        dec.finish(&mut back).unwrap();
        assert_eq!(&back[..], &plain[..]);
        assert_eq!(
            u64::from(Cksum::of(&plain)),
            case["cksum"].as_u64().unwrap(),
            "cksum of {} bytes",
            plain.len()
        );
    }
}

#[test]
fn cksum_cases_match_gnu_cksum() {
    let index = json("standalone/index.json");
    let cases = index["cksum_cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let len = case["len"].as_u64().unwrap() as usize;
        let input = match (case["input_hex"].as_str(), name) {
            (Some(hex), _) => hex_bytes(hex),
            (None, "zeros256") => vec![0u8; 256],
            (None, "ff_x300") => vec![0xffu8; 300],
            (None, "pattern_70000") => (0..70_000u32).map(|i| ((i * 31 + 7) % 256) as u8).collect(),
            (None, other) => panic!("unknown cksum case {other}"),
        };
        assert_eq!(input.len(), len, "{name}");
        let sum = Cksum::of(&input);
        assert_eq!(u64::from(sum), case["cksum"].as_u64().unwrap(), "{name}");
        let wire = hex_bytes(case["cksum_le_bytes_on_wire"].as_str().unwrap());
        assert_eq!(sum.to_le_bytes().to_vec(), wire, "{name}");
    }
}

#[test]
fn rsa_public_key_round_trips_to_the_160_byte_spki() {
    let spki = read("standalone/rsa1024_e17_public_spki.der");
    assert_eq!(spki.len(), 160);
    let key = PublicKey::from_spki_field(&spki).unwrap();
    assert_eq!(key.to_spki_der().unwrap(), spki);
    // Tom's client sends the 160 bytes plus 2 garbage bytes: tolerated.
    let mut padded = spki;
    padded.extend_from_slice(&[0x90, 0x39]);
    assert_eq!(PublicKey::from_spki_field(&padded).unwrap(), key);
    // A 162-byte SPKI (e = 65537) is a valid 1024-bit key too.
    let other = read("standalone/rsa1024_e65537_public_spki_162bytes.der");
    assert_eq!(
        PublicKey::from_spki_field(&other)
            .unwrap()
            .to_spki_der()
            .unwrap(),
        other
    );
    // Not DER at all.
    assert!(matches!(
        PublicKey::from_spki_field(&[0x01; 160]),
        Err(CryptoError::InvalidPublicKey { .. })
    ));
}

#[test]
fn private_key_reads_from_der_and_both_base64_layouts() {
    let der = read("standalone/rsa1024_e17_private_pkcs8.der");
    let from_der = ClientKeyPair::from_pkcs8_der(&der).unwrap();
    assert_eq!(from_der.to_pkcs8_der().unwrap().as_slice(), &der[..]);
    let spki = read("standalone/rsa1024_e17_public_spki.der");
    assert_eq!(from_der.public_key().to_spki_der().unwrap(), spki);
    for file in [
        "standalone/rsa1024_e17_private_pkcs8.b64",
        "standalone/rsa1024_e17_private_pkcs8.b64wrapped72",
    ] {
        let text: String = String::from_utf8(read(file))
            .unwrap()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        assert_eq!(decoded, der, "{file}");
    }
}

#[test]
fn oaep_sha1_unwraps_and_sha256_is_rejected() {
    let key =
        ClientKeyPair::from_pkcs8_der(&read("standalone/rsa1024_e17_private_pkcs8.der")).unwrap();
    let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(1);
    let session = key
        .unwrap_session_key(&mut rng, &read("standalone/oaep_sha1_ct.bin"))
        .unwrap();
    let expected: Vec<u8> = (0xa0..=0xbf).collect();
    assert_eq!(session.as_bytes().to_vec(), expected);
    assert_eq!(
        key.unwrap_session_key(&mut rng, &read("standalone/oaep_sha256_ct_NEGATIVE.bin"))
            .err(),
        Some(CryptoError::KeyUnwrapFailed)
    );
}

#[test]
fn oaep_wrap_is_unwrapped_by_the_matching_private_key() {
    let key =
        ClientKeyPair::from_pkcs8_der(&read("standalone/rsa1024_e17_private_pkcs8.der")).unwrap();
    let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(2);
    let session = AesKey::generate(&mut rng);
    let wrapped = key
        .public_key()
        .wrap_session_key(&mut rng, &session)
        .unwrap();
    assert_eq!(wrapped.len(), 128);
    assert_eq!(key.unwrap_session_key(&mut rng, &wrapped).unwrap(), session);
}

const SESSIONS: [&str; 5] = [
    "session-h3client-shlomiserver",
    "session-shlomiclient-h3server",
    "session-urihorclient-urihorserver",
    "multipacket-perpacket-shlomi",
    "multipacket-sliced-h3",
];

#[test]
fn me_info_files_parse_and_lowercase_ones_are_rewritten_byte_for_byte() {
    for folder in SESSIONS {
        let text = String::from_utf8(read(&format!("{folder}/me.info"))).unwrap();
        let identity = Identity::parse_me_info(&text).unwrap();
        let der = read(&format!("{folder}/client_private_key.der"));
        assert_eq!(
            identity.key().to_pkcs8_der().unwrap().as_slice(),
            &der[..],
            "{folder}"
        );
        let id_line = text.lines().nth(1).unwrap();
        assert_eq!(identity.client_id().to_hex(), id_line.to_lowercase());
        let written = identity.to_me_info().unwrap();
        // urihor's client ends the file with one extra empty line; the rest is identical.
        let text = format!("{}\n", text.trim_end_matches('\n'));
        if id_line == id_line.to_lowercase() {
            assert_eq!(written.as_str(), text, "{folder}");
        } else {
            // shlomi writes the id in uppercase; we write lowercase, the rest is identical.
            assert_eq!(
                written.to_lowercase(),
                text.to_lowercase().replace("\r", "")
            );
            assert_ne!(written.as_str(), text);
        }
    }
}

#[test]
fn every_recorded_message_decodes_and_re_encodes_identically() {
    let mut checked = 0;
    for folder in SESSIONS {
        let c2s = read(&format!("{folder}/c2s.bin"));
        let s2c = read(&format!("{folder}/s2c.bin"));
        // Requests: re-encode each header; fixed payloads re-encode to the same bytes.
        let mut buf = BytesMut::from(&c2s[..]);
        let mut decoder = RequestDecoder::new();
        let mut offset = 0usize;
        while let Some(item) = decoder.decode(&mut buf).unwrap() {
            match item {
                Inbound::Request { header, request } => {
                    let mut out = Vec::new();
                    request.encode(header.client_id, &mut out);
                    let len = out.len();
                    if folder.contains("h3client")
                        || request.code().0 != 1025
                        || header.client_id.0 != [0x30; 16]
                    {
                        assert_eq!(&out[..], &c2s[offset..offset + len], "{folder} @{offset}");
                    }
                    offset += len;
                    checked += 1;
                }
                Inbound::FileHeader {
                    header,
                    meta,
                    content_len,
                } => {
                    let mut out = Vec::new();
                    meta.encode_frame_head(header.client_id, content_len, &mut out);
                    assert_eq!(
                        &out[..],
                        &c2s[offset..offset + out.len()],
                        "{folder} @{offset}"
                    );
                    let mut raw = [0u8; 23];
                    raw.copy_from_slice(&c2s[offset..offset + 23]);
                    assert_eq!(RequestHeader::decode(&raw), header);
                    offset += out.len();
                    checked += 1;
                }
                Inbound::FileContent(piece) => {
                    assert_eq!(&piece[..], &c2s[offset..offset + piece.len()]);
                    offset += piece.len();
                }
                Inbound::FileEnd => {}
            }
        }
        assert_eq!(offset, c2s.len(), "{folder}: whole client stream decoded");
        // Responses: decode in order; urihor's 1600 declares 0 bytes but carries 16.
        let mut buf = BytesMut::from(&s2c[..]);
        let mut decoder = ResponseDecoder::new();
        let mut codes = Vec::new();
        while let Some((header, response)) = decoder.decode(&mut buf).unwrap() {
            let mut raw = Vec::new();
            header.encode(&mut raw);
            let mut fixed = [0u8; 7];
            fixed.copy_from_slice(&raw);
            assert_eq!(ResponseHeader::decode(&fixed), header);
            codes.push(response.code().0);
            checked += 1;
            if response.code().0 == 1604 {
                break;
            }
        }
        assert_eq!(codes.last(), Some(&1604), "{folder}: {codes:?}");
    }
    assert!(checked > 30, "checked {checked} messages");
}

#[test]
fn session_json_headers_match_the_decoded_streams() {
    for folder in SESSIONS {
        let meta = json(&format!("{folder}/session.json"));
        let messages: Vec<serde_json::Value> = match meta.get("messages") {
            Some(list) => list.as_array().unwrap().clone(),
            None => [
                meta["requests"].as_array().unwrap().clone(),
                meta["responses"].as_array().unwrap().clone(),
            ]
            .concat(),
        };
        for message in messages {
            let dir_name = message["dir"].as_str().unwrap();
            let stream = read(&format!("{folder}/{dir_name}.bin"));
            let offset = message["offset"].as_u64().unwrap() as usize;
            let code = message["code"].as_u64().unwrap();
            if dir_name == "c2s" {
                let mut raw = [0u8; 23];
                raw.copy_from_slice(&stream[offset..offset + 23]);
                let header = RequestHeader::decode(&raw);
                assert_eq!(u64::from(header.code.0), code);
                assert_eq!(
                    u64::from(header.payload_len),
                    message["payload_size"].as_u64().unwrap()
                );
            } else {
                let mut raw = [0u8; 7];
                raw.copy_from_slice(&stream[offset..offset + 7]);
                let header = ResponseHeader::decode(&raw);
                assert_eq!(u64::from(header.code.0), code);
                assert_eq!(
                    u64::from(header.payload_len),
                    message["payload_size"].as_u64().unwrap()
                );
            }
        }
    }
    assert!(dir().join("standalone/index.json").exists());
}
