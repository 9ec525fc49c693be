#![allow(clippy::unwrap_used, clippy::expect_used)]
//! proptest: every v4 message, handshake payload and frame round-trips; decoding does not
//! depend on how the stream is chunked; arbitrary bytes never panic the decoders or the
//! server session. Runs in about 2 s.

use bytes::{Bytes, BytesMut};
use cyberbackup_core::names::{ClientId, FileName, NameField};
use cyberbackup_core::repo::BlobId;
use cyberbackup_core::v4::codec::{Frame, FrameDecoder, Side};
use cyberbackup_core::v4::fuzzing;
use cyberbackup_core::v4::repository::{MAX_DAMAGED_BATCH, RepoReply, RepoRequest, RepoUsage};
use cyberbackup_core::v4::wire::{
    ClientAuth, ClientMessage, ErrorCode, MAX_DATA_LEN, MAX_MESSAGE_LEN, ServerHello,
    ServerMessage, VersionRecord, encode_frame, kind,
};
use proptest::prelude::*;

fn file_name() -> impl Strategy<Value = FileName> {
    proptest::collection::vec(any::<u8>(), 1..=254).prop_filter_map("valid file name", |bytes| {
        let field = NameField::new(Bytes::from(bytes)).ok()?;
        FileName::validate(field).ok()
    })
}

fn client_name() -> impl Strategy<Value = NameField> {
    proptest::collection::vec(1u8..=255, 1..=254)
        .prop_map(|bytes| NameField::new(Bytes::from(bytes)).unwrap())
}

fn data() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..100),
        proptest::collection::vec(any::<u8>(), MAX_DATA_LEN - 2..=MAX_DATA_LEN),
    ]
    .prop_map(Bytes::from)
}

fn record() -> impl Strategy<Value = VersionRecord> {
    (
        file_name(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<[u8; 32]>(),
    )
        .prop_map(
            |(name, version, size, created_unix_secs, cksum, sha256)| VersionRecord {
                name,
                version,
                size,
                created_unix_secs,
                cksum,
                sha256,
            },
        )
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (file_name(), any::<u64>(), any::<bool>()).prop_map(|(name, size, restart)| {
            ClientMessage::Upload {
                name,
                size,
                restart,
            }
        }),
        data().prop_map(ClientMessage::Data),
        any::<[u8; 32]>().prop_map(|sha256| ClientMessage::UploadEnd { sha256 }),
        Just(ClientMessage::List),
        (file_name(), any::<u32>())
            .prop_map(|(name, version)| ClientMessage::Restore { name, version }),
        Just(ClientMessage::Bye),
        proptest::option::of(any::<[u8; 32]>()).prop_map(|after| ClientMessage::Repo(
            RepoRequest::Damaged {
                after: after.map(BlobId)
            }
        )),
        Just(ClientMessage::Repo(RepoRequest::Usage)),
    ]
}

/// A page of damaged blob IDs: strictly increasing, as the decoder requires.
fn damaged_page() -> impl Strategy<Value = RepoReply> {
    (
        proptest::collection::btree_set(any::<[u8; 32]>(), 0..=MAX_DAMAGED_BATCH.min(64)),
        any::<bool>(),
    )
        .prop_map(|(ids, more)| RepoReply::Damaged {
            ids: ids.into_iter().map(BlobId).collect(),
            more,
        })
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (any::<[u8; 16]>(), any::<bool>(), client_name()).prop_map(|(id, registered, name)| {
            ServerMessage::Welcome {
                client_id: ClientId(id),
                registered,
                name,
            }
        }),
        any::<u64>().prop_map(|offset| ServerMessage::UploadReady { offset }),
        (any::<u32>(), any::<u64>(), any::<u32>(), any::<[u8; 32]>()).prop_map(
            |(version, size, cksum, sha256)| ServerMessage::UploadDone {
                version,
                size,
                cksum,
                sha256
            }
        ),
        record().prop_map(ServerMessage::ListEntry),
        any::<u32>().prop_map(|count| ServerMessage::ListEnd { count }),
        record().prop_map(ServerMessage::RestoreBegin),
        data().prop_map(ServerMessage::Data),
        Just(ServerMessage::RestoreEnd),
        (any::<u16>(), any::<bool>(), "\\PC{0,300}").prop_map(|(code, fatal, message)| {
            ServerMessage::Error {
                code: ErrorCode(code),
                fatal,
                message,
            }
        }),
        damaged_page().prop_map(ServerMessage::Repo),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(stored, soft, hard)| {
            ServerMessage::Repo(RepoReply::Usage(RepoUsage {
                stored_bytes: stored,
                soft_quota_bytes: soft,
                hard_quota_bytes: hard,
            }))
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn client_messages_round_trip(message in client_message()) {
        let mut plaintext = Vec::new();
        message.encode(&mut plaintext);
        prop_assert_eq!(ClientMessage::decode(Bytes::from(plaintext)).unwrap(), message);
    }

    #[test]
    fn server_messages_round_trip(message in server_message()) {
        let mut plaintext = Vec::new();
        message.encode(&mut plaintext);
        let decoded = ServerMessage::decode(Bytes::from(plaintext)).unwrap();
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn error_text_is_cut_on_a_char_boundary(text in "\\PC{0,800}") {
        let message = ServerMessage::Error { code: ErrorCode::STORAGE, fatal: false, message: text.clone() };
        let mut plaintext = Vec::new();
        message.encode(&mut plaintext);
        let ServerMessage::Error { message: decoded, .. } = ServerMessage::decode(Bytes::from(plaintext)).unwrap() else {
            panic!("not an error");
        };
        prop_assert!(decoded.len() <= MAX_MESSAGE_LEN);
        prop_assert!(text.starts_with(&decoded));
    }

    #[test]
    fn handshake_payloads_round_trip(
        name in client_name(),
        token in "[ -~]{0,128}",
        required in any::<bool>(),
        interval in any::<u64>(),
    ) {
        let auth = ClientAuth::Register { name, token };
        let mut bytes = Vec::new();
        auth.encode(&mut bytes);
        prop_assert_eq!(ClientAuth::decode(&bytes).unwrap(), auth);
        let mut bytes = Vec::new();
        ClientAuth::Login.encode(&mut bytes);
        prop_assert_eq!(ClientAuth::decode(&bytes).unwrap(), ClientAuth::Login);
        let hello = ServerHello { enrollment_required: required, checkpoint_interval: interval };
        let mut bytes = Vec::new();
        hello.encode(&mut bytes);
        prop_assert_eq!(ServerHello::decode(&bytes).unwrap(), hello);
    }

    #[test]
    fn frames_decode_the_same_whatever_the_chunking(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 17..3000), 1..8),
        cuts in proptest::collection::vec(1usize..5000, 1..20),
    ) {
        let mut stream = Vec::new();
        for payload in &payloads {
            stream.extend_from_slice(&encode_frame(kind::TRANSPORT, payload));
        }
        let mut decoder = FrameDecoder::new(Side::FromServer);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut rest = &stream[..];
        let mut cut = cuts.iter().cycle();
        while !rest.is_empty() {
            let take = (*cut.next().unwrap()).min(rest.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                decoded.push(frame);
            }
            prop_assert!(buf.len() < 65_539 + 5000);
        }
        let expected: Vec<Frame> = payloads.into_iter().map(|p| Frame::Transport(Bytes::from(p))).collect();
        prop_assert_eq!(decoded, expected);
        prop_assert!(decoder.decode_eof(&buf).is_ok());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        fuzzing::decode_v4(&bytes);
        fuzzing::handshake_v4(&bytes);
    }
}
