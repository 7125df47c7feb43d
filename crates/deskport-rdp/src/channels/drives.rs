//! The client's drives (static channel `rdpdr`, [MS-RDPEFS] on ironrdp-rdpdr's server): each
//! drive a client shares (xfreerdp `/drive:NAME,PATH`) is mounted in the session as
//! `~/thinclient_drives/NAME` ([`deskport_desktop::drives`]), and what the session's programs
//! do there becomes I/O requests on the channel.
//!
//! - [`DriveChannel`] wraps ironrdp-rdpdr's `RdpdrServer`: it says "user logged on" once the
//!   capabilities are exchanged (FreeRDP announces drives only then), accepts file-system
//!   devices only (printers, ports and smart cards are refused), and matches each
//!   completion to the request it answers.
//! - [`Drives`] holds the mounts of a session and turns the mounts' operations into I/O
//!   requests ([`drive_op`]); each request must be answered within the drive timeout, else
//!   the operation fails with `EIO` (a client that stalls cannot hang the session's
//!   programs).
//!
//! [MS-RDPEFS]: https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-rdpefs/

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deskport_desktop::drives::{Attr, Done, DrivesHome, Mount, Op, Open, Request};
use ironrdp_core::impl_as_any;
use ironrdp_pdu::gcc::ChannelName;
use ironrdp_pdu::PduResult;
use ironrdp_rdpdr::pdu::efs::{
    Boolean, ClientDriveLockControlResponse, ClientDriveNotifyChangeDirectoryResponse,
    ClientDriveQueryDirectoryResponse, ClientDriveQueryInformationResponse,
    ClientDriveQuerySecurityResponse, ClientDriveQueryVolumeInformationResponse,
    ClientDriveSetInformationResponse, ClientDriveSetSecurityResponse, CreateDisposition,
    CreateOptions, DesiredAccess, DeviceAnnounceHeader, DeviceCloseResponse, DeviceControlResponse,
    DeviceCreateResponse, DeviceFlushBuffersResponse, DeviceReadResponse, DeviceWriteResponse,
    FileAttributes, FileDispositionInformation, FileEndOfFileInformation, FileInformationClass,
    FileInformationClassLevel, FileRenameInformation, FileSystemInformationClass,
    FileSystemInformationClassLevel, NtStatus,
};
use ironrdp_rdpdr::pdu::RdpdrPdu;
use ironrdp_rdpdr::server::{RdpdrServer, RdpdrServerBackend, RdpdrServerMessage};
use ironrdp_svc::{CompressionCondition, SvcMessage, SvcProcessor, SvcServerProcessor};
use tokio::sync::{mpsc, oneshot};

/// `RDPDR_CTYP_CORE`.
const CORE: u16 = 0x4472;
/// `PAKID_CORE_CLIENT_CAPABILITY`.
const CLIENT_CAPABILITY: u16 = 0x4350;
/// `PAKID_CORE_DEVICELIST_ANNOUNCE`.
const DEVICELIST_ANNOUNCE: u16 = 0x4441;
/// `PAKID_CORE_DEVICE_IOCOMPLETION`.
const IO_COMPLETION: u16 = 0x4943;
/// `RDPDR_DTYP_FILESYSTEM`.
const FILESYSTEM: u32 = 0x8;

/// A session takes at most this many drives (a client announcing thousands gets the first).
pub const MAX_DRIVES: usize = 16;

/// A directory listing holds at most this many entries (`.` and `..` aside).
pub const MAX_ENTRIES: usize = 100_000;

/// Reads at most this much per request (FUSE asks for 128 KiB at most anyway).
pub const MAX_READ: u32 = 1 << 20;

/// What the channel reports to the session loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriveEvent {
    /// The client shares drive `name` as device `id`.
    Announced { id: u32, name: String },
    /// The client took these devices back.
    Removed(Vec<u32>),
}

/// What a completion carried besides its status.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    None,
    Created { file_id: u32 },
    Data(Vec<u8>),
    Written(u32),
    Info(Option<FileInformationClass>),
    Volume(Option<FileSystemInformationClass>),
}

/// A completion: the client's status (an NTSTATUS) and what came with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub status: u32,
    pub body: Body,
}

/// An I/O request a drive's operation wants sent, and where its completion goes.
#[derive(Debug)]
pub struct Irp {
    pub message: RdpdrServerMessage,
    pub reply: oneshot::Sender<Completion>,
}

/// What the backend and the wrapper share.
#[derive(Debug, Default)]
struct Shared {
    /// Device types from the last Device List Announce, by device id.
    types: HashMap<u32, u32>,
    /// The body of the completion being processed (set by the backend's callback).
    body: Option<Body>,
}

#[derive(Debug)]
struct Backend {
    shared: Arc<Mutex<Shared>>,
    events: mpsc::UnboundedSender<DriveEvent>,
}

impl_as_any!(Backend);

impl Backend {
    fn set(&self, body: Body) -> PduResult<()> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).body = Some(body);
        Ok(())
    }
}

/// A drive's name: the full name from its announce data (UTF-16 or 8-bit, null-terminated),
/// else its DOS name.
fn drive_name(device: &DeviceAnnounceHeader) -> String {
    let data = device.device_data();
    let utf16: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&c| c != 0)
        .collect();
    let wide = data.len() >= 4 && data.len().is_multiple_of(2) && data[1] == 0;
    let name = if wide {
        String::from_utf16_lossy(&utf16)
    } else {
        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
        String::from_utf8_lossy(&data[..end]).into_owned()
    };
    if name.trim().is_empty() {
        device.preferred_dos_name().trim_end_matches(':').to_owned()
    } else {
        name
    }
}

impl RdpdrServerBackend for Backend {
    fn on_device_announce(&mut self, devices: &[DeviceAnnounceHeader]) -> Vec<(u32, bool)> {
        let types = self
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .types
            .clone();
        devices
            .iter()
            .map(|device| {
                let id = device.device_id();
                let drive = types.get(&id) == Some(&FILESYSTEM);
                if drive {
                    let _ = self.events.send(DriveEvent::Announced {
                        id,
                        name: drive_name(device),
                    });
                } else {
                    tracing::info!(
                        device = device.preferred_dos_name(),
                        kind = types.get(&id).copied().unwrap_or(0),
                        "Client device refused: only drives are taken"
                    );
                }
                (id, drive)
            })
            .collect()
    }

    fn on_device_remove(&mut self, device_ids: &[u32]) {
        let _ = self.events.send(DriveEvent::Removed(device_ids.to_vec()));
    }

    fn on_client_name(&mut self, _computer_name: &str) {}

    fn on_create_complete(&mut self, r: &DeviceCreateResponse) -> PduResult<()> {
        self.set(Body::Created { file_id: r.file_id })
    }
    fn on_close_complete(&mut self, _r: &DeviceCloseResponse) -> PduResult<()> {
        self.set(Body::None)
    }
    fn on_read_complete(&mut self, r: &DeviceReadResponse) -> PduResult<()> {
        self.set(Body::Data(r.read_data.clone()))
    }
    fn on_write_complete(&mut self, r: &DeviceWriteResponse) -> PduResult<()> {
        self.set(Body::Written(r.length))
    }
    fn on_flush_buffers_complete(&mut self, _r: &DeviceFlushBuffersResponse) -> PduResult<()> {
        self.set(Body::None)
    }
    fn on_device_control_complete(&mut self, _r: &DeviceControlResponse) -> PduResult<()> {
        self.set(Body::None)
    }
    fn on_query_information_complete(
        &mut self,
        r: &ClientDriveQueryInformationResponse,
    ) -> PduResult<()> {
        self.set(Body::Info(r.buffer.clone()))
    }
    fn on_set_information_complete(
        &mut self,
        _r: &ClientDriveSetInformationResponse,
    ) -> PduResult<()> {
        self.set(Body::None)
    }
    fn on_query_directory_complete(
        &mut self,
        r: &ClientDriveQueryDirectoryResponse,
    ) -> PduResult<()> {
        self.set(Body::Info(r.buffer.clone()))
    }
    fn on_notify_change_directory_complete(
        &mut self,
        _r: &ClientDriveNotifyChangeDirectoryResponse,
    ) -> PduResult<()> {
        self.set(Body::None)
    }
    fn on_query_volume_information_complete(
        &mut self,
        r: &ClientDriveQueryVolumeInformationResponse,
    ) -> PduResult<()> {
        self.set(Body::Volume(r.buffer.clone()))
    }
    fn on_lock_control_complete(&mut self, _r: &ClientDriveLockControlResponse) -> PduResult<()> {
        self.set(Body::None)
    }
    fn on_query_security_complete(
        &mut self,
        _r: &ClientDriveQuerySecurityResponse,
    ) -> PduResult<()> {
        self.set(Body::None)
    }
    fn on_set_security_complete(&mut self, _r: &ClientDriveSetSecurityResponse) -> PduResult<()> {
        self.set(Body::None)
    }
}

/// The `rdpdr` channel: ironrdp-rdpdr's server, with what deskport adds around it (see the
/// module's text).
#[derive(Debug)]
pub struct DriveChannel {
    inner: RdpdrServer,
    shared: Arc<Mutex<Shared>>,
    /// Completions awaited, by completion id.
    pending: HashMap<u32, oneshot::Sender<Completion>>,
    /// Requests whose operation gave up waiting (at most 10,000 remembered): a file one of
    /// them opens is closed when its completion comes.
    abandoned: std::collections::HashSet<u32>,
}

impl_as_any!(DriveChannel);

/// The channel and the receiver of what it reports.
pub fn processor() -> (DriveChannel, mpsc::UnboundedReceiver<DriveEvent>) {
    let (events, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let backend = Backend {
        shared: shared.clone(),
        events,
    };
    (
        DriveChannel {
            inner: RdpdrServer::new(Box::new(backend)),
            shared,
            pending: HashMap::new(),
            abandoned: Default::default(),
        },
        rx,
    )
}

/// The `(device id, device type)` pairs of a Device List Announce body (after the 4-byte
/// header); `None` if it is cut short.
fn announced_types(body: &[u8]) -> Option<Vec<(u32, u32)>> {
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let count = u32_at(body, 0)?;
    let mut at = 4;
    let mut out = Vec::new();
    for _ in 0..count {
        let kind = u32_at(body, at)?;
        let id = u32_at(body, at + 4)?;
        let len = usize::try_from(u32_at(body, at + 16)?).ok()?;
        at = at.checked_add(20)?.checked_add(len)?;
        if at > body.len() {
            return None;
        }
        out.push((id, kind));
    }
    Some(out)
}

impl DriveChannel {
    /// Sends `irp`'s request: the messages to send; its completion goes to `irp.reply`.
    pub fn request(&mut self, irp: Irp) -> PduResult<Vec<SvcMessage>> {
        let s = &mut self.inner;
        let msgs = match irp.message {
            RdpdrServerMessage::Create {
                device_id,
                path,
                desired_access,
                create_disposition,
                create_options,
            } => s.drive_create(
                device_id,
                path,
                desired_access,
                create_disposition,
                create_options,
            ),
            RdpdrServerMessage::Read {
                device_id,
                file_id,
                length,
                offset,
            } => s.drive_read(device_id, file_id, length, offset),
            RdpdrServerMessage::Write {
                device_id,
                file_id,
                data,
                offset,
            } => s.drive_write(device_id, file_id, data, offset),
            RdpdrServerMessage::Close { device_id, file_id } => s.drive_close(device_id, file_id),
            RdpdrServerMessage::QueryInformation {
                device_id,
                file_id,
                info_class,
            } => s.drive_query_information(device_id, file_id, info_class),
            RdpdrServerMessage::SetInformation {
                device_id,
                file_id,
                set_buffer,
            } => s.drive_set_information(device_id, file_id, set_buffer),
            RdpdrServerMessage::QueryDirectory {
                device_id,
                file_id,
                info_class,
                path,
                initial_query,
            } => s.drive_query_directory(device_id, file_id, info_class, path, initial_query),
            RdpdrServerMessage::QueryVolumeInformation {
                device_id,
                file_id,
                fs_info_class,
            } => s.drive_query_volume_information(device_id, file_id, fs_info_class),
            other => {
                return Err(ironrdp_pdu::pdu_other_err!(
                    "DriveChannel",
                    "request not used by deskport"
                ))
                .inspect_err(|_| tracing::debug!(?other, "Drive request not sent"))
            }
        }?;
        // The completion id is in the request's header: after the shared header, the device
        // id and the file id.
        let id = msgs
            .first()
            .and_then(|m| m.encode_unframed_pdu().ok())
            .and_then(|b| Some(u32::from_le_bytes(b.get(12..16)?.try_into().ok()?)))
            .ok_or_else(|| ironrdp_pdu::pdu_other_err!("DriveChannel", "no request encoded"))?;
        tracing::trace!(completion_id = id, "Drive request sent");
        // Requests whose operation gave up (timed out) wait for nothing any more.
        let abandoned = &mut self.abandoned;
        self.pending.retain(|id, reply| {
            if reply.is_closed() && abandoned.len() < 10_000 {
                abandoned.insert(*id);
            }
            !reply.is_closed()
        });
        self.pending.insert(id, irp.reply);
        Ok(msgs)
    }

    /// Gives up every request awaiting its completion (their operations fail with `EIO`).
    pub fn abandon(&mut self) {
        self.pending.clear();
    }

    /// Requests awaiting their completion.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

impl SvcProcessor for DriveChannel {
    fn channel_name(&self) -> ChannelName {
        RdpdrServer::NAME
    }

    fn compression_condition(&self) -> CompressionCondition {
        CompressionCondition::WhenRdpDataIsCompressed
    }

    fn start(&mut self) -> PduResult<Vec<SvcMessage>> {
        self.inner.start()
    }

    fn process(&mut self, payload: &[u8]) -> PduResult<Vec<SvcMessage>> {
        let header = payload.get(0..4).map(|h| {
            (
                u16::from_le_bytes([h[0], h[1]]),
                u16::from_le_bytes([h[2], h[3]]),
            )
        });
        tracing::trace!(?header, len = payload.len(), "Drive channel PDU");
        let completion = match header {
            Some((CORE, DEVICELIST_ANNOUNCE)) => {
                let types = announced_types(&payload[4..]).ok_or_else(|| {
                    ironrdp_pdu::pdu_other_err!("DriveChannel", "Device List Announce cut short")
                })?;
                self.shared.lock().unwrap_or_else(|e| e.into_inner()).types =
                    types.into_iter().collect();
                None
            }
            Some((CORE, IO_COMPLETION)) => {
                let field = |at: usize| {
                    payload
                        .get(at..at + 4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                };
                field(8).zip(field(12))
            }
            _ => None,
        };
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).body = None;
        // A failure's body says nothing and clients fill it as they like (rdesktop answers
        // "no more files" with a length of 1 and a byte): the inner server gets it as zeros,
        // which every completion type reads as empty.
        let canonical;
        let payload = match completion {
            Some((_, status)) if status != 0 && payload.len() >= 16 => {
                canonical = [&payload[..16], &[0u8; 8][..]].concat();
                &canonical[..]
            }
            _ => payload,
        };
        let mut msgs = self.inner.process(payload)?;
        if let Some((id, status)) = completion {
            let body = self
                .shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .body
                .take();
            // No body: the server's own tracker did not know the id (it warned).
            if let Some(body) = body {
                let completion = Completion { status, body };
                let unanswered = match self.pending.remove(&id) {
                    Some(reply) => reply.send(completion).err(),
                    None if self.abandoned.remove(&id) => Some(completion),
                    None => None,
                };
                if let Some(Completion {
                    status: 0,
                    body: Body::Created { file_id },
                }) = unanswered
                {
                    // Opened after its operation gave up: close it on the client.
                    let device =
                        u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    msgs.extend(self.inner.drive_close(device, file_id)?);
                }
            }
        }
        if header == Some((CORE, CLIENT_CAPABILITY)) {
            msgs.push(SvcMessage::from(RdpdrPdu::UserLoggedon));
        }
        Ok(msgs)
    }
}

impl SvcServerProcessor for DriveChannel {}

/// A request of each kind deskport sends, by `n` (modulo their number), on device 1: for the
/// fuzzing oracle, so that completions of every kind get decoded.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_request(n: u8) -> RdpdrServerMessage {
    let (device_id, file_id) = (1, 1);
    match n % 8 {
        0 => RdpdrServerMessage::Create {
            device_id,
            path: "\\a".to_owned(),
            desired_access: DesiredAccess::GENERIC_READ,
            create_disposition: CreateDisposition::FILE_OPEN,
            create_options: CreateOptions::empty(),
        },
        1 => RdpdrServerMessage::Read {
            device_id,
            file_id,
            length: 4096,
            offset: 0,
        },
        2 => RdpdrServerMessage::Write {
            device_id,
            file_id,
            data: vec![1, 2, 3],
            offset: 0,
        },
        3 => RdpdrServerMessage::Close { device_id, file_id },
        4 => RdpdrServerMessage::QueryInformation {
            device_id,
            file_id,
            info_class: FileInformationClassLevel::FILE_BASIC_INFORMATION,
        },
        5 => RdpdrServerMessage::QueryInformation {
            device_id,
            file_id,
            info_class: FileInformationClassLevel::FILE_STANDARD_INFORMATION,
        },
        6 => RdpdrServerMessage::QueryDirectory {
            device_id,
            file_id,
            info_class: FileInformationClassLevel::FILE_DIRECTORY_INFORMATION,
            path: "\\*".to_owned(),
            initial_query: true,
        },
        _ => RdpdrServerMessage::QueryVolumeInformation {
            device_id,
            file_id,
            fs_info_class: FileSystemInformationClassLevel::FILE_FS_FULL_SIZE_INFORMATION,
        },
    }
}

/// A session's drives: the mounts, and the operations' requests on their way to the channel.
#[derive(Debug)]
pub struct Drives {
    events: Option<mpsc::UnboundedReceiver<DriveEvent>>,
    irps: mpsc::UnboundedReceiver<Irp>,
    irp_sender: mpsc::UnboundedSender<Irp>,
    home: Option<DrivesHome>,
    timeout: Duration,
    mounts: HashMap<u32, (Mount, tokio::task::JoinHandle<()>)>,
}

/// What [`Drives::next`] gives the session loop.
#[derive(Debug)]
pub enum DriveNext {
    Event(DriveEvent),
    Irp(Irp),
}

/// Events compare; requests never equal anything (they carry where their answer goes).
impl PartialEq for DriveNext {
    fn eq(&self, other: &Self) -> bool {
        matches!((self, other), (Self::Event(a), Self::Event(b)) if a == b)
    }
}

impl Drives {
    /// The drives of a session whose home is `home` (`None`: drives are refused), with the
    /// channel's events; each request must be answered within `timeout`.
    pub fn new(
        events: Option<mpsc::UnboundedReceiver<DriveEvent>>,
        home: Option<DrivesHome>,
        timeout: Duration,
    ) -> Self {
        let (irp_sender, irps) = mpsc::unbounded_channel();
        Self {
            events,
            irps,
            irp_sender,
            home,
            timeout,
            mounts: HashMap::new(),
        }
    }

    /// The next event or request (never resolves while there is none).
    pub async fn next(&mut self) -> DriveNext {
        loop {
            tokio::select! {
                event = deskport_proto::next(&mut self.events) => match event {
                    Some(event) => return DriveNext::Event(event),
                    None => self.events = None,
                },
                Some(irp) = self.irps.recv() => return DriveNext::Irp(irp),
            }
        }
    }

    /// A drive came or went: mounts it or unmounts it.
    pub fn event(&mut self, event: DriveEvent) {
        match event {
            DriveEvent::Announced { id, name } => {
                // The same device announced again: the new announce counts.
                self.unmount(id);
                let Some(home) = &self.home else {
                    tracing::info!(
                        drive = name,
                        "Client drive not shown: the session has no home of its own"
                    );
                    return;
                };
                if self.mounts.len() >= MAX_DRIVES {
                    tracing::warn!(
                        drive = name,
                        "Client drive not mounted: the session has {MAX_DRIVES} already"
                    );
                    return;
                }
                // Two drives of one name: the second gets a suffix (never mounted over the
                // first, whose file system answers through this very loop).
                let taken: Vec<String> = self
                    .mounts
                    .values()
                    .filter_map(|(m, _)| m.path().file_name()?.to_str().map(str::to_owned))
                    .collect();
                let base = deskport_desktop::drives::folder_name(&name);
                let name = (1..)
                    .map(|n| {
                        if n == 1 {
                            base.clone()
                        } else {
                            format!("{base}_{n}")
                        }
                    })
                    .find(|n| !taken.contains(n))
                    .unwrap_or(base);
                let (ops, requests) = mpsc::unbounded_channel();
                match Mount::new(home, &name, ops, self.timeout) {
                    Ok(mount) => {
                        tracing::info!(drive = name, path = %mount.path().display(), "Client drive mounted");
                        let task = tokio::spawn(serve(
                            requests,
                            Client {
                                device: id,
                                irps: self.irp_sender.clone(),
                                timeout: self.timeout,
                            },
                        ));
                        self.mounts.insert(id, (mount, task));
                    }
                    Err(e) => tracing::warn!(
                        drive = name,
                        error = format!("{e:#}"),
                        "Client drive not mounted"
                    ),
                }
            }
            DriveEvent::Removed(ids) => {
                for id in ids {
                    self.unmount(id);
                }
            }
        }
    }

    fn unmount(&mut self, id: u32) {
        if let Some((mount, task)) = self.mounts.remove(&id) {
            tracing::info!(path = %mount.path().display(), "Client drive unmounted");
            drop(mount);
            task.abort();
        }
    }

    /// Unmounts every drive (the channel ended).
    pub fn unmount_all(&mut self) {
        let ids: Vec<u32> = self.mounts.keys().copied().collect();
        for id in ids {
            self.unmount(id);
        }
        self.events = None;
    }
}

impl Drop for Drives {
    fn drop(&mut self) {
        self.unmount_all();
    }
}

/// Serves a mount's operations, each in a task of its own (they wait on the client); the
/// tasks end with this one (unmounting aborts it).
async fn serve(mut requests: mpsc::UnboundedReceiver<Request>, client: Client) {
    let mut ops = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(Request { op, reply }) = request else { break };
                let client = client.clone();
                ops.spawn(async move {
                    let done = drive_op(&client, op).await;
                    if let Err(std::sync::mpsc::TrySendError::Disconnected(Ok(Done::Opened { file, .. }))) = reply.try_send(done) {
                        // Nobody waits for the file any more: close it on the client.
                        let _ = client.close(file).await;
                    }
                });
            }
            Some(_) = ops.join_next(), if !ops.is_empty() => {}
        }
    }
}

/// One drive of the client, as the operations see it.
#[derive(Debug, Clone)]
pub struct Client {
    device: u32,
    irps: mpsc::UnboundedSender<Irp>,
    timeout: Duration,
}

/// An NTSTATUS as an errno.
pub fn errno(status: u32) -> i32 {
    let s = NtStatus::from(status);
    if s == NtStatus::NO_SUCH_FILE
        || s == NtStatus::OBJECT_PATH_NOT_FOUND
        || status == 0xC000_0034 // STATUS_OBJECT_NAME_NOT_FOUND
        || s == NtStatus::DELETE_PENDING
    {
        libc::ENOENT
    } else if s == NtStatus::ACCESS_DENIED
        || s == NtStatus::PRIVILEGE_NOT_HELD
        || status == 0xC000_0121
    // STATUS_CANNOT_DELETE
    {
        libc::EACCES
    } else if s == NtStatus::MEDIA_WRITE_PROTECTED {
        libc::EROFS
    } else if s == NtStatus::OBJECT_NAME_COLLISION {
        libc::EEXIST
    } else if s == NtStatus::DIRECTORY_NOT_EMPTY {
        libc::ENOTEMPTY
    } else if s == NtStatus::NOT_A_DIRECTORY {
        libc::ENOTDIR
    } else if s == NtStatus::FILE_IS_A_DIRECTORY {
        libc::EISDIR
    } else if s == NtStatus::DISK_FULL {
        libc::ENOSPC
    } else if s == NtStatus::SHARING_VIOLATION || s == NtStatus::LOCK_NOT_GRANTED {
        libc::EBUSY
    } else if s == NtStatus::OBJECT_NAME_INVALID || s == NtStatus::INVALID_PARAMETER {
        libc::EINVAL
    } else if s == NtStatus::NOT_SUPPORTED || s == NtStatus::NOT_IMPLEMENTED {
        libc::EOPNOTSUPP
    } else if s == NtStatus::INVALID_HANDLE {
        libc::EBADF
    } else if s == NtStatus::INSUFFICIENT_RESOURCES {
        libc::ENOMEM
    } else if status == 0xC000_0106 {
        // STATUS_NAME_TOO_LONG
        libc::ENAMETOOLONG
    } else if status == 0xC000_00D4 {
        // STATUS_NOT_SAME_DEVICE
        libc::EXDEV
    } else {
        libc::EIO
    }
}

/// `dir/file` as the drive's path, `\dir\file` (the root is `\`).
fn windows_path(path: &str) -> String {
    format!("\\{}", path.replace('/', "\\"))
}

/// A FILETIME (100 ns since 1601) as a time (1970 for anything before it).
fn filetime(t: i64) -> SystemTime {
    const EPOCH_DIFF: i64 = 116_444_736_000_000_000;
    let since = t.saturating_sub(EPOCH_DIFF).max(0);
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(since).unwrap_or(0).saturating_mul(100))
}

impl Client {
    /// Sends a request and waits for its completion (`EIO` after the timeout, or if the
    /// channel ends first).
    async fn irp(&self, message: RdpdrServerMessage) -> Result<Completion, i32> {
        let (reply, completion) = oneshot::channel();
        self.irps
            .send(Irp { message, reply })
            .map_err(|_| libc::EIO)?;
        match tokio::time::timeout(self.timeout, completion).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(_)) => Err(libc::EIO),
            Err(_) => {
                tracing::warn!(device = self.device, timeout = ?self.timeout, "The client did not answer a drive request in time: EIO");
                Err(libc::EIO)
            }
        }
    }

    /// Like [`Client::irp`], a status other than success an errno.
    async fn ok(&self, message: RdpdrServerMessage) -> Result<Body, i32> {
        let c = self.irp(message).await?;
        if c.status == 0 {
            Ok(c.body)
        } else {
            Err(errno(c.status))
        }
    }

    async fn create(
        &self,
        path: &str,
        access: DesiredAccess,
        disposition: CreateDisposition,
        options: CreateOptions,
    ) -> Result<u32, i32> {
        match self
            .ok(RdpdrServerMessage::Create {
                device_id: self.device,
                path: windows_path(path),
                desired_access: access,
                create_disposition: disposition,
                create_options: options,
            })
            .await?
        {
            Body::Created { file_id } => Ok(file_id),
            _ => Err(libc::EIO),
        }
    }

    async fn close(&self, file_id: u32) -> Result<(), i32> {
        self.ok(RdpdrServerMessage::Close {
            device_id: self.device,
            file_id,
        })
        .await
        .map(drop)
    }

    async fn query(
        &self,
        file_id: u32,
        class: FileInformationClassLevel,
    ) -> Result<FileInformationClass, i32> {
        match self
            .ok(RdpdrServerMessage::QueryInformation {
                device_id: self.device,
                file_id,
                info_class: class,
            })
            .await?
        {
            Body::Info(Some(info)) => Ok(info),
            _ => Err(libc::EIO),
        }
    }

    /// The attributes of the open file `file_id`.
    async fn attr(&self, file_id: u32) -> Result<Attr, i32> {
        let FileInformationClass::Basic(basic) = self
            .query(file_id, FileInformationClassLevel::FILE_BASIC_INFORMATION)
            .await?
        else {
            return Err(libc::EIO);
        };
        let FileInformationClass::Standard(standard) = self
            .query(
                file_id,
                FileInformationClassLevel::FILE_STANDARD_INFORMATION,
            )
            .await?
        else {
            return Err(libc::EIO);
        };
        Ok(Attr {
            dir: matches!(standard.directory, Boolean::True)
                || basic
                    .file_attributes
                    .contains(FileAttributes::FILE_ATTRIBUTE_DIRECTORY),
            size: u64::try_from(standard.end_of_file).unwrap_or(0),
            readonly: basic
                .file_attributes
                .contains(FileAttributes::FILE_ATTRIBUTE_READONLY),
            modified: filetime(basic.last_write_time),
            accessed: filetime(basic.last_access_time),
            changed: filetime(basic.change_time),
            created: filetime(basic.creation_time),
        })
    }

    /// Opens `path`, runs `then` on it and closes it whatever `then` gave.
    async fn with_open<T>(
        &self,
        path: &str,
        access: DesiredAccess,
        options: CreateOptions,
        then: impl AsyncFnOnce(u32) -> Result<T, i32>,
    ) -> Result<T, i32> {
        let file = self
            .create(path, access, CreateDisposition::FILE_OPEN, options)
            .await?;
        let result = then(file).await;
        let closed = self.close(file).await;
        let value = result?;
        closed?;
        Ok(value)
    }

    async fn set(&self, file_id: u32, info: FileInformationClass) -> Result<(), i32> {
        self.ok(RdpdrServerMessage::SetInformation {
            device_id: self.device,
            file_id,
            set_buffer: info,
        })
        .await
        .map(drop)
    }

    async fn list(&self, path: &str) -> Result<Vec<(String, Attr)>, i32> {
        let pattern = if path.is_empty() {
            "\\*".to_owned()
        } else {
            format!("{}\\*", windows_path(path))
        };
        self.with_open(
            path,
            DesiredAccess::FILE_READ_DATA_OR_FILE_LIST_DIRECTORY
                | DesiredAccess::FILE_READ_ATTRIBUTES,
            CreateOptions::FILE_DIRECTORY_FILE,
            async |dir| {
                let mut entries = Vec::new();
                let mut first = true;
                let mut complete = false;
                // Bounded in requests, not entries kept: a client may answer "." forever.
                for _ in 0..MAX_ENTRIES + 2 {
                    let c = self
                        .irp(RdpdrServerMessage::QueryDirectory {
                            device_id: self.device,
                            file_id: dir,
                            info_class: FileInformationClassLevel::FILE_DIRECTORY_INFORMATION,
                            path: if first {
                                pattern.clone()
                            } else {
                                String::new()
                            },
                            initial_query: first,
                        })
                        .await?;
                    first = false;
                    if c.status == u32::from(NtStatus::NO_MORE_FILES) {
                        complete = true;
                        break;
                    }
                    if c.status != 0 {
                        return Err(errno(c.status));
                    }
                    let Body::Info(Some(FileInformationClass::Directory(e))) = c.body else {
                        return Err(libc::EIO);
                    };
                    if e.file_name == "."
                        || e.file_name == ".."
                        || e.file_name.is_empty()
                        || e.file_name.contains('/')
                    {
                        continue;
                    }
                    entries.push((
                        e.file_name,
                        Attr {
                            dir: e
                                .file_attributes
                                .contains(FileAttributes::FILE_ATTRIBUTE_DIRECTORY),
                            size: u64::try_from(e.end_of_file).unwrap_or(0),
                            readonly: e
                                .file_attributes
                                .contains(FileAttributes::FILE_ATTRIBUTE_READONLY),
                            modified: filetime(e.last_write_time),
                            accessed: filetime(e.last_access_time),
                            changed: filetime(e.change_time),
                            created: filetime(e.creation_time),
                        },
                    ));
                }
                if !complete {
                    tracing::warn!(
                        device = self.device,
                        "A client's directory listing never ended: EIO"
                    );
                    return Err(libc::EIO);
                }
                Ok(entries)
            },
        )
        .await
    }
}

/// Carries out `op` on the client's drive.
pub async fn drive_op(client: &Client, op: Op) -> Result<Done, i32> {
    let rw = DesiredAccess::GENERIC_READ | DesiredAccess::GENERIC_WRITE;
    match op {
        Op::Stat(path) => client
            .with_open(
                &path,
                DesiredAccess::FILE_READ_ATTRIBUTES,
                CreateOptions::empty(),
                async |f| client.attr(f).await,
            )
            .await
            .map(Done::Attr),
        Op::List(path) => client.list(&path).await.map(Done::Entries),
        Op::Open { path, how } => {
            let (access, disposition) = match how {
                Open::Existing { write: false, .. } => {
                    (DesiredAccess::GENERIC_READ, CreateDisposition::FILE_OPEN)
                }
                Open::Existing {
                    write: true,
                    truncate: false,
                } => (rw.clone(), CreateDisposition::FILE_OPEN),
                Open::Existing {
                    write: true,
                    truncate: true,
                } => (rw.clone(), CreateDisposition::FILE_OVERWRITE),
                Open::Create {
                    exclusive: true, ..
                } => (rw.clone(), CreateDisposition::FILE_CREATE),
                Open::Create { truncate: true, .. } => {
                    (rw.clone(), CreateDisposition::FILE_OVERWRITE_IF)
                }
                Open::Create { .. } => (rw.clone(), CreateDisposition::FILE_OPEN_IF),
            };
            let file = client
                .create(
                    &path,
                    access,
                    disposition,
                    CreateOptions::FILE_NON_DIRECTORY_FILE,
                )
                .await?;
            match client.attr(file).await {
                Ok(attr) => Ok(Done::Opened { file, attr }),
                Err(e) => {
                    let _ = client.close(file).await;
                    Err(e)
                }
            }
        }
        Op::Read { file, offset, len } => match client
            .irp(RdpdrServerMessage::Read {
                device_id: client.device,
                file_id: file,
                length: len.min(MAX_READ),
                offset,
            })
            .await?
        {
            c if c.status == u32::from(NtStatus::END_OF_FILE) => Ok(Done::Data(Vec::new())),
            Completion {
                status: 0,
                body: Body::Data(mut data),
            } => {
                data.truncate(len as usize);
                Ok(Done::Data(data))
            }
            Completion { status: 0, .. } => Err(libc::EIO),
            c => Err(errno(c.status)),
        },
        Op::Write { file, offset, data } => {
            let len = u32::try_from(data.len()).map_err(|_| libc::EFBIG)?;
            match client
                .ok(RdpdrServerMessage::Write {
                    device_id: client.device,
                    file_id: file,
                    data,
                    offset,
                })
                .await?
            {
                Body::Written(n) => Ok(Done::Written(n.min(len))),
                _ => Err(libc::EIO),
            }
        }
        Op::Close(file) => client.close(file).await.map(|()| Done::Ok),
        Op::SetSize { path, file, size } => {
            let info = FileInformationClass::EndOfFile(FileEndOfFileInformation {
                end_of_file: i64::try_from(size).map_err(|_| libc::EFBIG)?,
            });
            match file {
                Some(file) => client.set(file, info).await,
                None => {
                    client
                        .with_open(
                            &path,
                            rw.clone(),
                            CreateOptions::FILE_NON_DIRECTORY_FILE,
                            async |f| client.set(f, info).await,
                        )
                        .await
                }
            }
            .map(|()| Done::Ok)
        }
        Op::Mkdir(path) => {
            let dir = client
                .create(
                    &path,
                    DesiredAccess::FILE_READ_DATA_OR_FILE_LIST_DIRECTORY
                        | DesiredAccess::FILE_READ_ATTRIBUTES,
                    CreateDisposition::FILE_CREATE,
                    CreateOptions::FILE_DIRECTORY_FILE,
                )
                .await?;
            let attr = client.attr(dir).await;
            client.close(dir).await?;
            attr.map(Done::Attr)
        }
        Op::Delete { path, dir } => {
            // A client may say yes to deleting a directory that is not empty and then keep it
            // (FreeRDP does): look first.
            if dir && !client.list(&path).await?.is_empty() {
                return Err(libc::ENOTEMPTY);
            }
            let options = if dir {
                CreateOptions::FILE_DIRECTORY_FILE
            } else {
                CreateOptions::FILE_NON_DIRECTORY_FILE
            };
            client
                .with_open(
                    &path,
                    DesiredAccess::DELETE | DesiredAccess::FILE_READ_ATTRIBUTES,
                    options,
                    async |f| {
                        client
                            .set(
                                f,
                                FileInformationClass::Disposition(FileDispositionInformation {
                                    delete_pending: 1,
                                }),
                            )
                            .await
                    },
                )
                .await
                .map(|()| Done::Ok)
        }
        Op::Space => {
            client
                .with_open(
                    "",
                    DesiredAccess::FILE_READ_ATTRIBUTES,
                    CreateOptions::FILE_DIRECTORY_FILE,
                    async |root| match client
                        .ok(RdpdrServerMessage::QueryVolumeInformation {
                            device_id: client.device,
                            file_id: root,
                            fs_info_class:
                                FileSystemInformationClassLevel::FILE_FS_FULL_SIZE_INFORMATION,
                        })
                        .await?
                    {
                        Body::Volume(Some(
                            FileSystemInformationClass::FileFsFullSizeInformation(v),
                        )) => {
                            let unit = u64::from(v.sectors_per_alloc_unit)
                                .saturating_mul(u64::from(v.bytes_per_sector));
                            let bytes =
                                |units: i64| u64::try_from(units).unwrap_or(0).saturating_mul(unit);
                            Ok(Done::Space {
                                total: bytes(v.total_alloc_units),
                                free: bytes(v.caller_available_alloc_units),
                                unit: u32::try_from(unit).unwrap_or(4096),
                            })
                        }
                        _ => Err(libc::EIO),
                    },
                )
                .await
        }
        Op::Rename { from, to, replace } => client
            .with_open(
                &from,
                DesiredAccess::DELETE | DesiredAccess::FILE_READ_ATTRIBUTES,
                CreateOptions::empty(),
                async |f| {
                    client
                        .set(
                            f,
                            FileInformationClass::Rename(FileRenameInformation {
                                replace_if_exists: if replace {
                                    Boolean::True
                                } else {
                                    Boolean::False
                                },
                                file_name: windows_path(&to),
                            }),
                        )
                        .await
                },
            )
            .await
            .map(|()| Done::Ok),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_errnos() {
        assert_eq!(errno(0xC000_000F), libc::ENOENT);
        assert_eq!(errno(0xC000_0034), libc::ENOENT);
        assert_eq!(errno(0xC000_0022), libc::EACCES);
        assert_eq!(errno(0xC000_0035), libc::EEXIST);
        assert_eq!(errno(0xC000_0101), libc::ENOTEMPTY);
        assert_eq!(errno(0xC000_007F), libc::ENOSPC);
        assert_eq!(errno(0xC000_00A2), libc::EROFS);
        assert_eq!(errno(0xC000_0106), libc::ENAMETOOLONG);
        assert_eq!(errno(0xC000_00D4), libc::EXDEV);
        assert_eq!(errno(0xDEAD_BEEF), libc::EIO);
    }

    #[test]
    fn paths_and_times() {
        assert_eq!(windows_path(""), "\\");
        assert_eq!(windows_path("a/b c"), "\\a\\b c");
        assert_eq!(filetime(116_444_736_000_000_000), UNIX_EPOCH);
        assert_eq!(filetime(0), UNIX_EPOCH);
        assert_eq!(
            filetime(116_444_736_010_000_000),
            UNIX_EPOCH + Duration::from_secs(1)
        );
    }

    #[test]
    fn announces_are_read_or_refused() {
        // Two devices: a drive with 4 bytes of data, a printer with none.
        let mut body = 2u32.to_le_bytes().to_vec();
        for (kind, id, data) in [(8u32, 1u32, &b"ab\0\0"[..]), (4, 2, &[][..])] {
            body.extend_from_slice(&kind.to_le_bytes());
            body.extend_from_slice(&id.to_le_bytes());
            body.extend_from_slice(b"NAME\0\0\0\0");
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(data);
        }
        assert_eq!(announced_types(&body), Some(vec![(1, 8), (2, 4)]));
        assert_eq!(announced_types(&body[..body.len() - 1]), None);
        let mut huge = body.clone();
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(announced_types(&huge), None);
    }
}

#[cfg(test)]
pub(crate) mod channel_tests {
    use ironrdp_core::encode_vec;
    use ironrdp_rdpdr::pdu::efs::{
        CapabilityMessage, ClientNameRequest, ClientNameRequestUnicodeFlag, CoreCapability,
        VersionAndIdPdu, VersionAndIdPduKind,
    };

    use super::*;

    /// What xfreerdp sends on `rdpdr` before it announces devices: the Announce Reply, its
    /// name, its capabilities (each a whole PDU).
    pub(crate) fn client_handshake() -> Vec<Vec<u8>> {
        let reply = RdpdrPdu::VersionAndIdPdu(VersionAndIdPdu {
            version_major: 1,
            version_minor: 0x0c,
            client_id: 7,
            kind: VersionAndIdPduKind::ClientAnnounceReply,
        });
        let name = RdpdrPdu::ClientNameRequest(ClientNameRequest::new(
            "client".to_owned(),
            ClientNameRequestUnicodeFlag::Ascii,
        ));
        let caps = RdpdrPdu::CoreCapability(CoreCapability::new_response(vec![
            CapabilityMessage::new_general(0),
            CapabilityMessage::new_drive(),
        ]));
        [reply, name, caps]
            .iter()
            .map(|pdu| encode_vec(pdu).unwrap())
            .collect()
    }

    /// A Device List Announce of a drive `share` (device 1, its name in UTF-8 as FreeRDP
    /// sends it) and a printer (device 2).
    pub(crate) fn announce() -> Vec<u8> {
        let mut pdu = vec![0x72, 0x44, 0x41, 0x44];
        pdu.extend_from_slice(&2u32.to_le_bytes());
        for (kind, id, dos, data) in [
            (8u32, 1u32, b"SHARE\0\0\0", &b"share\0"[..]),
            (4, 2, b"PRN1\0\0\0\0", &[][..]),
        ] {
            pdu.extend_from_slice(&kind.to_le_bytes());
            pdu.extend_from_slice(&id.to_le_bytes());
            pdu.extend_from_slice(dos);
            pdu.extend_from_slice(&(data.len() as u32).to_le_bytes());
            pdu.extend_from_slice(data);
        }
        pdu
    }

    fn packet_id(msg: &SvcMessage) -> [u8; 4] {
        msg.encode_unframed_pdu().unwrap()[..4].try_into().unwrap()
    }

    /// The channel says "user logged on" after the capabilities (FreeRDP announces drives only
    /// then), takes the drive and refuses the printer, and hands a completion to the request
    /// it answers.
    #[tokio::test]
    async fn drives_are_taken_and_completions_find_their_request() {
        let (mut channel, mut events) = processor();
        let start = channel.start().unwrap();
        assert_eq!(packet_id(&start[0]), [0x72, 0x44, 0x6e, 0x49]); // Server Announce
        let mut answers = Vec::new();
        for pdu in client_handshake() {
            answers = channel.process(&pdu).unwrap();
        }
        assert_eq!(
            answers.last().map(packet_id),
            Some([0x72, 0x44, 0x4c, 0x55]), // User Logged On
        );
        let answers = channel.process(&announce()).unwrap();
        let results: Vec<[u8; 4]> = answers
            .iter()
            .map(|m| m.encode_unframed_pdu().unwrap()[8..12].try_into().unwrap())
            .collect();
        assert_eq!(results, [0u32.to_le_bytes(), 0xC000_0022u32.to_le_bytes()]);
        assert_eq!(
            events.try_recv().unwrap(),
            DriveEvent::Announced {
                id: 1,
                name: "share".to_owned()
            }
        );
        assert!(events.try_recv().is_err(), "the printer was reported");

        let (reply, completion) = oneshot::channel();
        let msgs = channel
            .request(Irp {
                message: RdpdrServerMessage::Create {
                    device_id: 1,
                    path: "\\a.txt".to_owned(),
                    desired_access: DesiredAccess::GENERIC_READ,
                    create_disposition: CreateDisposition::FILE_OPEN,
                    create_options: CreateOptions::FILE_NON_DIRECTORY_FILE,
                },
                reply,
            })
            .unwrap();
        let request = msgs[0].encode_unframed_pdu().unwrap();
        let id = u32::from_le_bytes(request[12..16].try_into().unwrap());
        assert_eq!(channel.pending(), 1);
        // An answer to nothing is ignored; the real one completes the request.
        let answer = |id: u32| {
            let mut pdu = vec![0x72, 0x44, 0x43, 0x49];
            pdu.extend_from_slice(&1u32.to_le_bytes());
            pdu.extend_from_slice(&id.to_le_bytes());
            pdu.extend_from_slice(&0u32.to_le_bytes());
            pdu.extend_from_slice(&9u32.to_le_bytes()); // file id
            pdu.push(1); // FILE_OPENED
            pdu
        };
        channel.process(&answer(id + 1000)).unwrap();
        assert_eq!(channel.pending(), 1);
        channel.process(&answer(id)).unwrap();
        assert_eq!(channel.pending(), 0);
        assert_eq!(
            completion.await.unwrap(),
            Completion {
                status: 0,
                body: Body::Created { file_id: 9 }
            }
        );
    }

    /// A failure's body may be anything (rdesktop answers "no more files" with a length of 1
    /// and one byte, which ironrdp-rdpdr cannot read as a directory entry): the request gets
    /// the status, the channel goes on.
    #[tokio::test]
    async fn a_failure_with_an_odd_body_is_still_a_failure() {
        let (mut channel, _events) = processor();
        channel.start().unwrap();
        for pdu in client_handshake() {
            channel.process(&pdu).unwrap();
        }
        channel.process(&announce()).unwrap();
        let (reply, completion) = oneshot::channel();
        let msgs = channel
            .request(Irp {
                message: RdpdrServerMessage::QueryDirectory {
                    device_id: 1,
                    file_id: 3,
                    info_class: FileInformationClassLevel::FILE_DIRECTORY_INFORMATION,
                    path: String::new(),
                    initial_query: false,
                },
                reply,
            })
            .unwrap();
        let request = msgs[0].encode_unframed_pdu().unwrap();
        let mut pdu = vec![0x72, 0x44, 0x43, 0x49];
        pdu.extend_from_slice(&1u32.to_le_bytes());
        pdu.extend_from_slice(&request[12..16]);
        pdu.extend_from_slice(&0x8000_0006u32.to_le_bytes()); // STATUS_NO_MORE_FILES
        pdu.extend_from_slice(&[1, 0, 0, 0, 0]);
        channel.process(&pdu).unwrap();
        assert_eq!(completion.await.unwrap().status, 0x8000_0006);
    }

    /// A request that is never answered fails with EIO after the timeout.
    #[tokio::test]
    async fn an_unanswered_request_is_eio() {
        let (irps, mut requests) = mpsc::unbounded_channel();
        let client = Client {
            device: 1,
            irps,
            timeout: Duration::from_millis(200),
        };
        let op = tokio::spawn(async move { drive_op(&client, Op::Stat("a".to_owned())).await });
        let _held = requests.recv().await.unwrap();
        assert_eq!(op.await.unwrap(), Err(libc::EIO));
    }
}
