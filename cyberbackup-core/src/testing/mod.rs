//! Test harness (feature `test-util`): in-memory drivers for both sessions, so tests run
//! whole conversations without sockets, files or clocks.

mod log;

pub use log::LogWriter;

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rand_core::CryptoRngCore;

use crate::names::ClientId;
use crate::session::Output;
use crate::v3::{
    ClientEffect, ClientEvent, ClientSession, CloseReason, FileId, RegistrationOutcome,
    ServerEffect, ServerEvent, ServerSession, StoredClient, TransferId,
};

/// An in-memory catalog and file store that carries out server effects.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    /// Registered clients by id.
    pub clients: BTreeMap<ClientId, StoredClient>,
    /// Files being received, by transfer.
    pub partial: BTreeMap<TransferId, (ClientId, Vec<u8>, Vec<u8>)>,
    /// Received (durable, unverified) transfers.
    pub received: BTreeMap<TransferId, (ClientId, Vec<u8>, Vec<u8>)>,
    /// Committed files by (client, name).
    pub committed: BTreeMap<(ClientId, Vec<u8>), Vec<u8>>,
    /// Transfers discarded.
    pub aborted: Vec<TransferId>,
}

impl MemStore {
    /// Adds a known client.
    pub fn add_client(&mut self, client_id: ClientId, name: &[u8], public_key: Option<Bytes>) {
        self.clients.insert(
            client_id,
            StoredClient {
                client_id,
                name: Bytes::copy_from_slice(name),
                public_key,
            },
        );
    }

    /// Carries out one effect and answers the session. Returns whether it answered.
    ///
    /// # Errors
    /// The session's error, if answering failed.
    pub fn run<R: CryptoRngCore>(
        &mut self,
        session: &mut ServerSession<R>,
        now: Instant,
        effect: ServerEffect,
    ) -> Result<bool, crate::v3::SessionError> {
        match effect {
            ServerEffect::RegisterClient { client_id, name } => {
                let taken = self
                    .clients
                    .values()
                    .any(|c| c.name.as_ref() == name.as_bytes());
                let outcome = if taken {
                    RegistrationOutcome::NameTaken
                } else {
                    self.add_client(client_id, name.as_bytes(), None);
                    RegistrationOutcome::Registered
                };
                session.handle_registration(now, outcome)?;
            }
            ServerEffect::LookupClient { client_id } => {
                let found = self.clients.get(&client_id).cloned();
                session.handle_client_lookup(now, found)?;
            }
            ServerEffect::StorePublicKey {
                client_id,
                public_key,
            } => {
                if let Some(client) = self.clients.get_mut(&client_id) {
                    client.public_key = Some(public_key);
                }
                session.handle_storage(now, Ok(()))?;
            }
            ServerEffect::BeginFile {
                transfer,
                client_id,
                file_name,
            } => {
                self.partial.insert(
                    transfer,
                    (client_id, file_name.as_bytes().to_vec(), Vec::new()),
                );
                session.handle_storage(now, Ok(()))?;
            }
            ServerEffect::AppendFile { transfer, data } => {
                if let Some(entry) = self.partial.get_mut(&transfer) {
                    entry.2.extend_from_slice(&data);
                }
                session.handle_storage(now, Ok(()))?;
            }
            ServerEffect::FinishFile { transfer, .. } => {
                if let Some(entry) = self.partial.remove(&transfer) {
                    self.received.insert(transfer, entry);
                }
                session.handle_storage(now, Ok(()))?;
            }
            ServerEffect::CommitFile { transfer } => {
                if let Some((client, name, data)) = self.received.remove(&transfer) {
                    self.committed.insert((client, name), data);
                }
                session.handle_storage(now, Ok(()))?;
            }
            ServerEffect::AbortFile { transfer } => {
                self.partial.remove(&transfer);
                self.received.remove(&transfer);
                self.aborted.push(transfer);
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// What a server session produced while being driven.
#[derive(Debug, Default)]
pub struct ServerRun {
    /// Bytes transmitted to the client.
    pub sent: Vec<u8>,
    /// Events, in order.
    pub events: Vec<ServerEvent>,
    /// The close request, if any.
    pub closed: Option<CloseReason>,
}

/// Feeds `input` to a server session and runs every effect against `store` until the
/// session needs more bytes. Errors end up in `closed`.
pub fn drive_server<R: CryptoRngCore>(
    session: &mut ServerSession<R>,
    store: &mut MemStore,
    now: Instant,
    input: &mut BytesMut,
    run: &mut ServerRun,
) {
    loop {
        let _ = session.handle_bytes(now, input);
        let mut answered = false;
        while let Some(output) = session.poll_output() {
            match output {
                Output::Transmit(bytes) => run.sent.extend_from_slice(&bytes),
                Output::Effect(effect) => {
                    answered |= store.run(session, now, effect).unwrap_or(false)
                }
                Output::Event(event) => run.events.push(event),
                Output::Close(reason) => run.closed = Some(reason),
            }
        }
        if !answered || session.is_closed() {
            return;
        }
    }
}

/// What a client session produced while being driven.
#[derive(Debug, Default)]
pub struct ClientRun {
    /// Bytes transmitted to the server.
    pub sent: Vec<u8>,
    /// Events, in order.
    pub events: Vec<ClientEvent>,
    /// Identities the session asked to save.
    pub saved: Vec<crate::identity::Identity>,
    /// The close request, if any.
    pub closed: Option<CloseReason>,
}

/// Runs a client session's outputs: reads come from `files`, identity saves succeed.
/// Stops when the session waits for the server.
pub fn drive_client<R: CryptoRngCore>(
    session: &mut ClientSession<R>,
    files: &BTreeMap<FileId, Vec<u8>>,
    now: Instant,
    run: &mut ClientRun,
) {
    while let Some(output) = session.poll_output() {
        match output {
            Output::Transmit(bytes) => run.sent.extend_from_slice(&bytes),
            Output::Effect(ClientEffect::SaveIdentity(identity)) => {
                run.saved.push(*identity);
                let _ = session.handle_identity_saved(now, Ok(()));
            }
            Output::Effect(ClientEffect::ReadFile { file, offset, max }) => {
                let data = files.get(&file).map_or(&[][..], Vec::as_slice);
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(max).min(data.len());
                let piece = Bytes::copy_from_slice(data.get(start..end).unwrap_or(&[]));
                let _ = session.handle_file_data(now, file, piece);
            }
            Output::Effect(ClientEffect::CloseFile { .. }) => {}
            Output::Event(event) => run.events.push(event),
            Output::Close(reason) => run.closed = Some(reason),
        }
    }
}

/// Runs a client and a server session against each other in memory until neither makes
/// progress. Returns both runs.
pub fn run_pair<RC: CryptoRngCore, RS: CryptoRngCore>(
    client: &mut ClientSession<RC>,
    server: &mut ServerSession<RS>,
    store: &mut MemStore,
    files: &BTreeMap<FileId, Vec<u8>>,
    now: Instant,
) -> (ClientRun, ServerRun) {
    let mut client_run = ClientRun::default();
    let mut server_run = ServerRun::default();
    let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
    let (mut client_fed, mut server_fed) = (0, 0);
    loop {
        let before = (client_run.sent.len(), server_run.sent.len());
        drive_client(client, files, now, &mut client_run);
        to_server.extend_from_slice(client_run.sent.get(client_fed..).unwrap_or(&[]));
        client_fed = client_run.sent.len();
        drive_server(server, store, now, &mut to_server, &mut server_run);
        to_client.extend_from_slice(server_run.sent.get(server_fed..).unwrap_or(&[]));
        server_fed = server_run.sent.len();
        let _ = client.handle_bytes(now, &mut to_client);
        drive_client(client, files, now, &mut client_run);
        let after = (client_run.sent.len(), server_run.sent.len());
        if (after == before && client_fed == after.0)
            || client_run.closed.is_some()
            || server_run.closed.is_some()
        {
            return (client_run, server_run);
        }
    }
}
