//! Where repository objects live in the backend: every key starts with the client id in
//! hex, so no key of one client can name another client's object.
//!
//! ```text
//! <client hex>/packs/<first 2 hex of the pack ID>/<pack ID hex>
//! <client hex>/snapshots/<snapshot ID hex>
//! ```

use std::str::FromStr;

use cyberbackup_core::names::ClientId;
use cyberbackup_core::repo::{PackId, SnapshotId};

use crate::backend::ObjectKey;

const PACKS: &str = "packs";
const SNAPSHOTS: &str = "snapshots";

/// The key of a client's pack.
pub(super) fn pack_key(client: ClientId, pack: &PackId) -> ObjectKey {
    let hex = pack.to_hex();
    key(format!(
        "{}/{PACKS}/{}/{hex}",
        client_hex(client),
        &hex[..2]
    ))
}

/// The key of a client's snapshot object.
pub(super) fn snapshot_key(client: ClientId, snapshot: &SnapshotId) -> ObjectKey {
    key(format!(
        "{}/{SNAPSHOTS}/{}",
        client_hex(client),
        snapshot.to_hex()
    ))
}

/// What a backend key names, for start-up recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Located {
    /// A client's pack.
    Pack(ClientId, PackId),
    /// A client's snapshot object.
    Snapshot(ClientId, SnapshotId),
}

/// Parses a key made by [`pack_key`] or [`snapshot_key`]; `None` for anything else.
pub(super) fn parse(key: &ObjectKey) -> Option<Located> {
    let segments: Vec<&str> = key.segments().collect();
    let client = ClientId::from_hex(segments.first()?)?;
    if client_hex(client) != segments[0] {
        return None;
    }
    match segments.as_slice() {
        [_, PACKS, fan, hex] => {
            let pack = PackId::from_str(hex).ok()?;
            (pack.to_hex() == *hex && hex.starts_with(fan) && fan.len() == 2)
                .then_some(Located::Pack(client, pack))
        }
        [_, SNAPSHOTS, hex] => {
            let snapshot = SnapshotId::from_str(hex).ok()?;
            (snapshot.to_hex() == *hex).then_some(Located::Snapshot(client, snapshot))
        }
        _ => None,
    }
}

fn client_hex(client: ClientId) -> String {
    hex::encode(client.0)
}

fn key(text: String) -> ObjectKey {
    // Hex digits and `/` only: always a valid key.
    ObjectKey::new(text).unwrap_or_else(|e| unreachable!("repository key: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_nothing_else_parses() {
        let client = ClientId([7; 16]);
        let pack = PackId([0xab; 32]);
        let snapshot = SnapshotId([0x01; 32]);
        let pk = pack_key(client, &pack);
        assert_eq!(
            pk.as_str(),
            format!("{}/packs/ab/{}", "07".repeat(16), "ab".repeat(32))
        );
        assert_eq!(parse(&pk), Some(Located::Pack(client, pack)));
        let sk = snapshot_key(client, &snapshot);
        assert_eq!(parse(&sk), Some(Located::Snapshot(client, snapshot)));
        for other in [
            "config".to_owned(),
            format!("{}/packs/cd/{}", "07".repeat(16), "ab".repeat(32)),
            format!("{}/packs/{}", "07".repeat(16), "ab".repeat(32)),
            format!("{}/snapshots/{}", "07".repeat(16), "AB".repeat(32)),
            format!("{}/other/{}", "07".repeat(16), "ab".repeat(32)),
        ] {
            assert_eq!(
                parse(&ObjectKey::new(other.clone()).unwrap()),
                None,
                "{other}"
            );
        }
    }
}
