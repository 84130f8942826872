//! The audit trail: one JSON line per decision, for security teams, as the agent's own record
//! or as an OCSF API Activity event ([`ocsf`]).
//!
//! Records are handed to a writer thread through a bounded queue, so the request path never
//! waits for the disk; when the queue is full the record is dropped and counted (a slow disk
//! must not stall enforcement). The writer works in batches: after writing out what is queued
//! it sleeps [`BATCH_WAIT`], so under load one wake-up and one `write` carry many records
//! instead of one each. The file rotates by size: `audit.jsonl` becomes `audit.jsonl.1`, and
//! so on up to `keep` files.
//!
//! Records never hold credentials: no header values, no query string, no bodies.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{
    identity::Identity,
    metrics::{AuthFailure, UpstreamError},
    policy::{AuditFormat, AuditSink},
};

pub mod ocsf;

/// Records that may wait for the writer. At ~300 bytes each, about 2.5 MiB at most.
const QUEUE: usize = 8192;

/// How long the writer lets records accumulate after a batch. Records reach the file at most
/// this much later; at 100 000 requests/s a batch is ~200 records and one `write`.
const BATCH_WAIT: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("audit file {}: cannot open", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the audit writer thread")]
    Thread(#[source] io::Error),
}

/// The decision a record reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    /// Forwarded because of audit mode; enforcement would have denied it.
    WouldDeny,
    /// Refused without a decision taking effect: the request was malformed, not HTTP, or
    /// over a limit (connections, rate, body size).
    Reject,
}

/// One decision. Borrowed fields keep building it cheap on the request path.
#[derive(Debug, Serialize)]
pub struct Record {
    pub time: f64,
    pub request_id: String,
    pub decision: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    pub mode: &'static str,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub caller: Arc<Caller>,
    /// Policy identities the caller matched.
    pub identities: Arc<[Arc<str>]>,
    pub service: Arc<str>,
    /// The caller's socket address, as the agent's listener saw it.
    pub client: Arc<str>,
    pub destination: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Normalised path, without the query (which may carry secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Status sent to the client (the upstream's, or the agent's own 4xx).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Time the agent added before the request left for the upstream (or was answered), µs.
    pub added_latency_us: u64,
    /// The credential that satisfied the allowing rule, if it required one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialUse>,
    /// The header the agent injected a credential into (never its value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injected: Option<Arc<str>>,
    /// The request was sent again on a new upstream connection: the reused one failed before
    /// any byte of the response (see `proxy::http`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retried: bool,
    /// Why the caller's credential was refused, as a metrics label (`detail` has the facts).
    #[serde(skip)]
    pub auth_failure: Option<AuthFailure>,
    /// How the upstream failed this request, as a metrics label (`detail` has the facts).
    #[serde(skip)]
    pub upstream_error: Option<UpstreamError>,
}

/// A credential as a record may name it: never the token or key, only its keyed fingerprint.
#[derive(Debug, Serialize)]
pub struct CredentialUse {
    pub name: Arc<str>,
    /// The JWT's `sub`, or the API key's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Arc<str>>,
    pub fingerprint: String,
}

/// The attested caller, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Arc<str>>,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// The executable's path as the process's mount namespace shows it, when it does not name
    /// the same file in the agent's: not believed, so `exe` is absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_untrusted: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Arc<str>>,
    /// Whether the process was traced (ptrace) when the agent looked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traced: Option<bool>,
    /// Why the executable's attributes are missing: `process_exited`, `pid_reused`,
    /// `unreadable`, `exec_after_connect`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<&'static str>,
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

impl From<&Identity> for Caller {
    fn from(id: &Identity) -> Self {
        let process = id.process.as_deref();
        let cgroup = id.cgroup.as_deref();
        Self {
            tgid: id.tgid,
            pid: id.pid,
            uid: id.uid,
            gid: id.gid,
            user: id.user.clone(),
            group: id.group.clone(),
            comm: id.comm.clone(),
            exe: process
                .and_then(|p| p.trusted_exe())
                .map(|p| p.display().to_string()),
            exe_untrusted: process
                .filter(|p| !p.exe_trusted)
                .map(|p| p.exe.display().to_string()),
            sha256: process.map(|p| p.sha256.clone()).filter(|d| !d.is_empty()),
            traced: id.traced,
            unresolved: id.unresolved.map(crate::identity::Unresolved::as_str),
            cgroup_id: id.cgroup_id,
            cgroup: cgroup.map(|c| c.path.clone()),
            unit: cgroup.and_then(|c| c.unit.clone()),
            container: cgroup.and_then(|c| c.container.clone()),
        }
    }
}

/// Seconds since the Unix epoch, for `Record::time`.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One anomaly episode (`crate::anomaly`): what was seen, against what, and why it matters.
/// Told from decision records by `"record": "anomaly"`. Like them, it never holds a
/// credential: a token or key appears only as its keyed fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyRecord {
    pub time: f64,
    pub record: &'static str,
    pub kind: &'static str,
    /// The first policy identity the caller matched, or `unidentified`.
    pub identity: Arc<str>,
    pub observed: Measure,
    /// The smallest anomalous count (rate detectors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Measure>,
    /// What is usual: the identity's moving average per window (rate detectors), the first
    /// identity that presented the token, the digest last seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Measure>,
    /// The counting window (rate detectors) or learning window (`new_endpoint`), seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_s: Option<f64>,
    pub explanation: String,
    /// The request that revealed it (not for the rate detectors, which count many).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Arc<str>>,
    /// Rule id, or `unmatched` (`new_endpoint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Arc<str>>,
    /// The token's or key's keyed fingerprint (`token_reuse`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<Arc<str>>,
}

/// A value an anomaly record compares: a count, an average, or a name or digest.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Measure {
    Count(u64),
    Level(f64),
    Text(Arc<str>),
}

impl std::fmt::Display for Measure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Measure::Count(n) => write!(f, "{n}"),
            Measure::Level(x) => write!(f, "{x:.1}"),
            Measure::Text(s) => f.write_str(s),
        }
    }
}

/// The sending side of the audit trail. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: SyncSender<Message>,
    stats: Arc<Stats>,
}

/// Records travel unboxed: boxing them would allocate once more per request.
enum Message {
    Record(Record),
    Anomaly(AnomalyRecord),
    /// Write out everything queued before this, then answer.
    Flush(mpsc::Sender<()>),
}

/// Counters of the audit trail itself.
#[derive(Debug, Default)]
pub struct Stats {
    pub written: AtomicU64,
    /// Records lost: queue full, or the write failed.
    pub dropped: AtomicU64,
    /// Records lost because the write failed (a subset of `dropped`).
    pub write_failures: AtomicU64,
}

impl Audit {
    /// Open `output` and start its writer thread, which writes records as `format`.
    pub fn start(output: &AuditSink, format: AuditFormat) -> Result<Self, Error> {
        let sink: Box<dyn Sink> = match output {
            AuditSink::Stdout => Box::new(BufWriter::with_capacity(64 * 1024, io::stdout())),
            AuditSink::File {
                path,
                max_bytes,
                keep,
            } => Box::new(RotatingFile::open(path.clone(), *max_bytes, *keep)?),
        };
        Self::start_sink(sink, format)
    }

    fn start_sink(sink: Box<dyn Sink>, format: AuditFormat) -> Result<Self, Error> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let stats = Arc::new(Stats::default());
        let writer_stats = stats.clone();
        thread::Builder::new()
            .name("audit".into())
            .spawn(move || write_loop(rx, sink, format, &writer_stats))
            .map_err(Error::Thread)?;
        Ok(Self { tx, stats })
    }

    /// Queue a record; never blocks.
    pub fn record(&self, record: Record) {
        match self.tx.try_send(Message::Record(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Queue an anomaly record; never blocks.
    pub fn anomaly(&self, record: AnomalyRecord) {
        if self.tx.try_send(Message::Anomaly(record)).is_err() {
            self.stats.dropped.fetch_add(1, Relaxed);
        }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Wait until every record queued so far is written and flushed, for at most `timeout`.
    /// Blocking: for shutdown, when the process is about to exit and the writer thread with it.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut message = Message::Flush(done);
        // The queue may be full: retry until there is room or time is up.
        loop {
            match self.tx.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    message = m;
                    thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        wait.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// Where lines go. Both sinks buffer: a batch leaves in one `write` at `flush`.
trait Sink: Send {
    /// Write one complete line.
    fn write_line(&mut self, line: &[u8]) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

impl Sink for BufWriter<io::Stdout> {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.write_all(line)
    }

    fn flush(&mut self) -> io::Result<()> {
        Write::flush(self)
    }
}

fn write_loop(rx: Receiver<Message>, mut sink: Box<dyn Sink>, format: AuditFormat, stats: &Stats) {
    let mut line = Vec::with_capacity(1024);
    let mut waiting = Vec::new();
    // Block for the first message, drain what queued up, flush once, then let the next batch
    // gather. A flush request is answered after the batch it ends is written.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Record(record) => match format {
                    AuditFormat::Json => write_record(&mut *sink, &mut line, &record, stats),
                    AuditFormat::Ocsf => {
                        let event = ocsf::ApiActivity::from(&record);
                        write_record(&mut *sink, &mut line, &event, stats)
                    }
                },
                Message::Anomaly(record) => match format {
                    AuditFormat::Json => write_record(&mut *sink, &mut line, &record, stats),
                    AuditFormat::Ocsf => {
                        let finding = ocsf::DetectionFinding::from(&record);
                        write_record(&mut *sink, &mut line, &finding, stats)
                    }
                },
                Message::Flush(done) => waiting.push(done),
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = sink.flush() {
            tracing::warn!(error = %e, "audit flush failed");
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        thread::sleep(BATCH_WAIT);
    }
}

/// Write one record, in whichever form it was given, as one line.
fn write_record(sink: &mut dyn Sink, line: &mut Vec<u8>, record: &impl Serialize, stats: &Stats) {
    line.clear();
    let serialized = serde_json::to_writer(&mut *line, record);
    let written = serialized.map_err(io::Error::from).and_then(|()| {
        line.push(b'\n');
        sink.write_line(line)
    });
    match written {
        Ok(()) => stats.written.fetch_add(1, Relaxed),
        Err(e) => {
            tracing::warn!(error = %e, "audit record lost");
            stats.write_failures.fetch_add(1, Relaxed);
            stats.dropped.fetch_add(1, Relaxed)
        }
    };
}

/// A file that rotates by size.
struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: BufWriter<File>,
    size: u64,
}

impl RotatingFile {
    fn open(path: PathBuf, max_bytes: u64, keep: u32) -> Result<Self, Error> {
        let file = open_append(&path).map_err(|source| Error::Open {
            path: path.clone(),
            source,
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            path,
            max_bytes,
            keep,
            file: BufWriter::with_capacity(64 * 1024, file),
            size,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                let from = numbered(&self.path, n);
                if from.exists() {
                    fs::rename(&from, numbered(&self.path, n + 1))?;
                }
            }
            fs::rename(&self.path, numbered(&self.path, 1))?;
        }
        self.file = BufWriter::with_capacity(64 * 1024, open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

impl Sink for RotatingFile {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

#[cfg(test)]
mod tests;
