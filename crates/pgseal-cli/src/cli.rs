//! The command line: every command, option and help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::exit;

const ABOUT: &str = "Move a live PostgreSQL database onto encrypted-at-rest storage with seconds of write downtime.";

const LONG_ABOUT: &str = "\
Move a live PostgreSQL database onto encrypted-at-rest storage (or onto a new key) with
seconds of write downtime, no lost or duplicated transaction, and proof of both.

How it works: pgseal creates a publication and a logical replication slot on the source,
takes a snapshot, seals it under a KMS key, restores it onto an encrypted instance,
subscribes that instance to the slot from the exact LSN where the snapshot ends, lets it
catch up, then fences writes, syncs sequences and switches applications over.

Start with `pgseal doctor`: it checks this machine and prints the command that fixes each
missing piece.";

/// The parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "pgseal",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = exit::HELP_TEXT,
    propagate_version = true
)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Where pgseal keeps instances, snapshots, keys and journals
    /// [default: /var/lib/pgseal as root; else $XDG_DATA_HOME/pgseal or ~/.local/share/pgseal]
    #[arg(long, global = true, env = "PGSEAL_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Print machine-readable JSON on stdout instead of text
    #[arg(long, global = true)]
    pub json: bool,

    /// Log more to stderr (-v: info, -vv: debug, -vvv: trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Log only errors to stderr
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Read the key store's passphrase from FILE (first line) instead of PGSEAL_PASSPHRASE
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,

    /// Keep the journal in a PostgreSQL database a team shares (postgres://USER@HOST/DB,
    /// best given as PGSEAL_JOURNAL, the password from PGPASSWORD when the URL has none) or
    /// in an SQLite FILE [default: $PGSEAL_HOME/journal.sqlite]. Runners on several hosts
    /// naming one database see and drive the same migrations, one runner at a time
    #[arg(
        long,
        global = true,
        env = "PGSEAL_JOURNAL",
        hide_env_values = true,
        value_name = "URL|FILE"
    )]
    pub journal: Option<String>,

    /// How long a lease on a migration in a shared journal lasts without renewal: a runner
    /// that dies is taken over after this
    #[arg(
        long,
        global = true,
        env = "PGSEAL_LEASE_SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(3..=3600),
        value_name = "SECONDS"
    )]
    pub lease_seconds: u64,

    /// The name this process records as its runner in the journal (its leases and step
    /// runs) [default: HOST:PID]; `fleet run` names its children after itself
    #[arg(long, global = true, env = "PGSEAL_RUNNER", value_name = "NAME")]
    pub runner: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check this machine for what pgseal needs, and print the fix for each missing piece
    #[command(long_about = "\
Check this machine for everything the local platform needs: PostgreSQL server binaries
(from PGSEAL_PG_BINDIR, else `pg_config --bindir` on PATH), the OS user servers run as,
pgseal's home directory, what encrypted volumes need (root or CAP_SYS_ADMIN, kernel
fscrypt support for ext4, loop devices, mkfs.ext4, losetup, mount) and PgBouncer.

For each missing piece it prints the exact command that fixes it. Nothing is changed.
Exits 3 when something required is missing, 0 otherwise (missing recommended pieces are
listed as warnings).")]
    Doctor,

    /// Manage KMS keys in the local key store (create, rotate, disable, schedule deletion)
    #[command(long_about = KEY_ABOUT)]
    Key {
        /// What to do.
        #[command(subcommand)]
        action: KeyCommand,
    },

    /// Manage local PostgreSQL instances (plain or on encrypted storage), like RDS instances
    #[command(long_about = INSTANCE_ABOUT)]
    Instance {
        /// What to do.
        #[command(subcommand)]
        action: InstanceCommand,
    },

    /// Run PgBouncer endpoints in front of instances: the address applications keep at cutover
    #[command(long_about = ENDPOINT_ABOUT)]
    Endpoint {
        /// What to do.
        #[command(subcommand)]
        action: EndpointCommand,
    },

    /// Take, copy, restore and manage snapshots (physical base backups, plain or sealed)
    #[command(long_about = SNAPSHOT_ABOUT)]
    Snapshot {
        /// What to do.
        #[command(subcommand)]
        action: SnapshotCommand,
    },

    /// Migrate onto encrypted storage: plan, start, status, validate, cutover, rollback, cleanup
    #[command(long_about = MIGRATE_ABOUT)]
    Migrate {
        /// What to do.
        #[command(subcommand)]
        action: MigrateCommand,
    },

    /// The journal of migrations: copy one into a shared PostgreSQL journal, see its leases
    #[command(long_about = JOURNAL_ABOUT)]
    Journal {
        /// What to do.
        #[command(subcommand)]
        action: JournalCommand,
    },

    /// Many migrations from one inventory file: plan, start, status, validate, cutover by wave
    #[command(long_about = FLEET_ABOUT)]
    Fleet {
        /// What to do.
        #[command(subcommand)]
        action: FleetCommand,
    },

    /// The whole story on local instances under live writes: migrate, validate, cut over, verify
    #[command(long_about = DEMO_ABOUT)]
    Demo {
        /// pgbench scale of the source (10 is about 160 MB)
        #[arg(long, default_value_t = 10)]
        scale: u32,
        /// Seconds to keep writing on the encrypted target after cutover
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Ledger transactions per second through the endpoint
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Keep the instances, endpoint and key (needs PGSEAL_PASSPHRASE or --passphrase-file)
        #[arg(long)]
        keep: bool,
    },

    /// Write a ledger workload that proves no transaction is lost or applied twice
    #[command(long_about = WORKLOAD_ABOUT)]
    Workload {
        /// What to do.
        #[command(subcommand)]
        action: WorkloadCommand,
    },

    /// Encrypt a file or stream into the sealed-stream format under a KMS key
    #[command(long_about = "\
Encrypt IN into OUT in pgseal's sealed-stream format (docs/sealed-stream.md): AES-256-GCM in
chunks under a fresh data key from the KMS, bound to the encryption context. Memory use is
bounded whatever the input's size. Use - for stdin or stdout.

OUT is written to a temp file beside it and renamed into place only when complete, so a
failure or interruption never leaves a partial OUT. An existing OUT is refused unless
--force is given.

Example:
  pgseal seal --key alias/backups --context purpose=backup base.tar base.tar.sealed")]
    Seal(SealArgs),

    /// Decrypt a sealed stream, checking every chunk; refuses damaged or tampered input
    #[command(long_about = "\
Decrypt IN (a pgseal sealed stream) into OUT. The key and encryption context come from the
stream's header; the KMS key must exist and be enabled in this key store.

Every chunk is authenticated before its plaintext is written, and the stream must end with
its final chunk: altered, truncated, reordered or duplicated data fails with exit code 9
and OUT is not created. With OUT = - (stdout), a failure after some output means what was
written must be discarded; the exit code says so.")]
    Unseal(UnsealArgs),
}

const KEY_ABOUT: &str = "\
Manage KMS keys in the local key store (PGSEAL_HOME/kms). A KMS key never leaves the store:
it generates and unwraps data keys, and data is encrypted with those data keys (envelope
encryption, as in a cloud KMS).

The store is encrypted under a key derived from a passphrase (Argon2id), read from
PGSEAL_PASSPHRASE or --passphrase-file; it is created on first use with that passphrase.
The managed key `pgseal/default` is created when first used, like `aws/rds`.

Keys are named by id or alias (`orders`, or `alias/orders`). Every operation is recorded in
PGSEAL_HOME/kms/audit.log, never with key material.";

const INSTANCE_ABOUT: &str = "\
Manage PostgreSQL servers pgseal runs on this machine, as RDS runs DB instances. Each has
a name, a loopback port, allocated storage, parameters, and a log, under
PGSEAL_HOME/instances/NAME. Servers run as the OS user `postgres` when pgseal runs as root.

An encrypted instance (--encrypted) keeps its whole data directory (tables, WAL, logs) on a
volume encrypted by the kernel: an ext4 image of the allocated size, loop-mounted, under an
fscrypt v2 policy (AES-256-XTS contents, AES-256-CTS names). Its 64-byte volume key is a data
key from the KMS bound to the instance's name; only the wrapped form is stored. The key is
given to the kernel when the instance starts and taken back, and the volume unmounted, when
it stops. As with RDS, an instance's key never changes: a new key means a migration.

Connect over the unix socket (trust, for root and `postgres` only), or over TCP as user
postgres with the master password (--master-password-file or PGSEAL_MASTER_PASSWORD).

An instance keeps its port. Without --port it gets the first free one from 5433, or from
PGSEAL_FIRST_PORT: give each pgseal home on one machine a range of its own, so a port one
home's instance frees while it is down is not taken by another's.

Examples:
  pgseal instance create orders --param wal_level=logical
  pgseal instance create orders-enc --encrypted --key alias/orders --storage 20GiB
  pgseal instance set-param orders max_wal_senders=20 --apply
  psql \"$(pgseal instance url orders --socket)\"";

const SNAPSHOT_ABOUT: &str = "\
Snapshots are online physical base backups (pg_basebackup, no downtime) of a local
instance or of any PostgreSQL reachable by URL, stored under PGSEAL_HOME/snapshots/NAME.
With --key, a snapshot is sealed while it streams (docs/sealed-stream.md), so no plaintext
copy of the database ever lands on disk.

The rules RDS enforces hold here too:
  - a snapshot of an encrypted instance is encrypted under that instance's key;
  - a plain snapshot restores to a plain instance, an encrypted one to an instance
    encrypted under the snapshot's key: to reach encrypted storage from a plain snapshot,
    make an encrypted copy first (`snapshot copy --key`);
  - an instance's key never changes; copying a snapshot under another key is the way to
    move data to a new key.

A restore records the copy's handoff LSN (where its WAL ends), shown by `instance describe`.

Examples:
  pgseal snapshot create orders --name orders-0101 --key alias/orders
  pgseal snapshot create --source-url postgres://app@db.internal/app --name ext-0101
  pgseal snapshot copy ext-0101 --name ext-0101-enc --key alias/orders
  pgseal snapshot restore ext-0101-enc --instance orders-enc --storage 50GiB";

const DEMO_ABOUT: &str = "\
Runs the whole story on local instances, in a few minutes at the default size:

  a plain source instance with pgbench data and a plaintext marker row; a customer key;
  an endpoint (PgBouncer) in front of the source; the ledger workload writing through the
  endpoint the whole time; `migrate start` onto an encrypted instance under the new key;
  the pgbench tables compared on both sides; `migrate cutover` through the endpoint;
  writes continuing on the target; the ledger verified there; the target's volume image
  searched for the marker; `migrate cleanup`; instances, endpoint and key removed unless
  --keep.

Prints a summary (with --json one object: source.encrypted, target.encrypted,
target.key_id, handoff_lsn, workload.{acknowledged,missing,duplicated,client_errors},
cutover.write_pause_ms, validation.mismatched_rows,
plaintext_marker_found_on_target_storage, ...) and exits 1 when any invariant fails.

Without PGSEAL_PASSPHRASE or --passphrase-file it runs in a throwaway home under /var/tmp
with a random passphrase only this process knows.";

const ENDPOINT_ABOUT: &str = "\
An endpoint is the address applications use: a PgBouncer (Debian's package, transaction
pooling) in front of an instance. At cutover pgseal pauses it, fences and drains the
source, points it at the encrypted instance and resumes it: clients keep their connections
and see a pause, not an error.

Every endpoint listens on its unix socket (PGSEAL_HOME/endpoints/NAME/run, reachable by
root and the server's OS user, trust authentication, like the instances' sockets). With
--listen HOST:PORT it also listens on TCP, where applications log in as the instance's own
roles with SCRAM-SHA-256 (PgBouncer's auth_query through the role pgseal_endpoint, which
can only read a login role's SCRAM verifier; no password is written anywhere). Superusers
are refused over TCP. With --tls, TCP clients must use TLS: pgseal generates a certificate
under a CA of the endpoint's own (clients verify with sslmode=verify-full and the ca.crt
`describe` names) or uses --tls-cert/--tls-key; the private key is kept in memory
(/dev/shm), never on disk.

Prepared statements: PgBouncer before 1.21 (Debian 12 has 1.18) cannot keep server-side
prepared statements across transaction pooling, and most drivers prepare by default.
`create` prints what each driver needs (see docs/endpoints.md); `check` finds the failures
(`prepared statement \"...\" already exists`) in the servers' logs. Run it while your
application runs through the endpoint, before migrating.

Examples:
  pgseal endpoint create orders-ep --instance orders
  pgseal endpoint create orders-tcp --instance orders --listen 0.0.0.0:6433 --tls
  pgseal workload run --endpoint orders-ep --ledger run.ledger
  pgseal endpoint describe orders-tcp
  pgseal endpoint check orders-tcp
  pgseal endpoint delete orders-ep";

/// `pgseal endpoint ...`
#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Start a PgBouncer in front of an instance
    Create {
        /// The endpoint's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// The instance it sends connections to
        #[arg(long)]
        instance: String,
        /// The port its socket is named after (.s.PGSQL.PORT); default 6432, or the port
        /// of --listen
        #[arg(long)]
        port: Option<u16>,
        /// Also listen on TCP at HOST:PORT (127.0.0.1:6433, 0.0.0.0:6433, [::1]:6433);
        /// clients log in with the instance's roles and their passwords (SCRAM-SHA-256)
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        /// Require TLS on the TCP listener, with a certificate pgseal generates
        #[arg(long, requires = "listen", conflicts_with_all = ["tls_cert", "tls_key"])]
        tls: bool,
        /// Require TLS with this certificate (PEM) instead of a generated one
        #[arg(long, requires_all = ["listen", "tls_key"], value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert; copied into memory (/dev/shm)
        #[arg(long, requires = "tls_cert", value_name = "FILE")]
        tls_key: Option<PathBuf>,
    },
    /// Look for prepared-statement failures through an endpoint (exit 11 when found)
    Check(Named),
    /// List endpoints
    List,
    /// Show one endpoint: the instance behind it, its URL, whether it runs
    Describe(Named),
    /// Stop an endpoint's PgBouncer and remove it
    Delete(Named),
}

const MIGRATE_ABOUT: &str = "\
Move a PostgreSQL instance onto an encrypted instance with logical replication from the
exact end of an encrypted snapshot, under live writes. A switch moves every database, so
a migration carries every database that accepts connections (one publication, slot and
subscription each); --database narrows it, and what stays outside is kept on the source by
an endpoint or named at cutover.

  plan     read-only preflight: the scope (databases, tables, sizes, what is not carried)
           and every problem at once, each with its fix (exit 3 while a blocker remains).
           Checks wal_level, free slots, WAL senders and apply workers for every database,
           privileges, tables without a primary key or replica identity, unlogged tables
           and large objects (not migrated), long and prepared transactions (they block
           slot creation), name clashes, free disk, the target key.
  start    runs the ten steps and returns once the target replicates:
             1 preflight  2 prepare_source (wal_level, replica identity, a publication
               and a slot per database, every slot before the snapshot)
             3 snapshot (encrypted, taken after the slot)  4 restore (encrypted target)
             5 target_housekeeping  6 subscription (disabled, copy_data=false)
             7 guards (handoff LSN vs redo and the slot)  8 origin_advance  9 enable
             10 replicating
           Every step is journaled (PGSEAL_HOME/journal.sqlite) and idempotent.
  resume   continues after a failure, a crash or a kill, from the step that did not finish;
           an interrupted cutover or rollback is undone before its switch, finished after it.
  abort    removes what the migration created: target, snapshot, and on the source the
           slot, publication and replica identity changes.
  status   phase, step history with timings, lag, WAL the slot holds on the source, apply
           errors, schema drift with the DDL to run on the target.
  list     every migration in the journal.
  validate every table compared row by row while replication runs, and verify with it.
  verify   both sides' catalogs and what no row comparison sees, object by object.

Examples:
  pgseal migrate plan --source orders --key alias/orders
  pgseal migrate start --source orders --key alias/orders --name orders-enc
  PGPASSWORD=... pgseal migrate start --source postgres://admin@db.internal/app --target app-enc
  pgseal migrate status orders-enc --watch --max-slot-retention 20GiB
  pgseal migrate abort orders-enc";

/// `--strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyArg {
    /// A physical snapshot, restored and replicated from its handoff LSN.
    Snapshot,
    /// An empty target, loaded and kept current by native logical replication.
    FullLoad,
    /// AWS only: the platform's own Blue/Green deployment, green encrypted under --key;
    /// pgseal validates green against blue and switches over with AWS's switchover
    BlueGreen,
}

impl From<StrategyArg> for pgseal_core::steps::StrategyKind {
    fn from(arg: StrategyArg) -> Self {
        match arg {
            StrategyArg::Snapshot => pgseal_core::steps::StrategyKind::Snapshot,
            StrategyArg::FullLoad => pgseal_core::steps::StrategyKind::FullLoad,
            StrategyArg::BlueGreen => pgseal_core::steps::StrategyKind::BlueGreen,
        }
    }
}

/// What a migration moves and how, as `plan` and `start` take it.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrationArgs {
    /// The source: a local instance name, postgres://USER@HOST:PORT/DB (password in
    /// PGPASSWORD), or rds:INSTANCE_ID / aurora:CLUSTER_ID (AWS; built with --features aws)
    #[arg(long)]
    pub source: String,
    /// The encrypted instance to create [default: SOURCE-enc; on AWS: ID-enc]
    #[arg(long, value_parser = parse_name)]
    pub target: Option<String>,
    /// KMS key for the target: id, alias or ARN [default: pgseal/default locally,
    /// alias/aws/rds for rds:/aurora: sources]
    #[arg(long, default_value = "pgseal/default")]
    pub key: String,
    /// The migration's name (its slot, publication and subscription are pgseal_NAME)
    #[arg(value_parser = parse_name, long, default_value = "m1")]
    pub name: String,
    /// Narrow the migration to this database; repeatable [default: the whole instance,
    /// every database that accepts connections and is not a template]. What stays
    /// outside is kept on the source by an endpoint, or refused at cutover unless
    /// accepted with --leave-stale
    #[arg(long = "database", value_name = "NAME")]
    pub databases: Vec<String>,
    /// Seconds creating a slot may wait for running (or prepared) transactions before
    /// `start` gives up and removes what it made (exit 3)
    #[arg(long, default_value_t = pgseal_core::journal::DEFAULT_SLOT_WAIT_SECONDS)]
    pub slot_wait: u64,
    /// Allow pgseal to restart a managed source to set wal_level=logical
    #[arg(long)]
    pub allow_restart: bool,
    /// Set REPLICA IDENTITY FULL on tables without a primary key
    #[arg(long)]
    pub replica_identity_full: bool,
    /// Report transactions open longer than this many seconds
    #[arg(long, default_value_t = 60)]
    pub long_transaction_seconds: i64,
    /// How the target gets its data: `snapshot` (a physical copy restored, then
    /// replication from the exact LSN where it ends; same major version) or `full-load`
    /// (an empty target of any newer major version; roles and schema copied, every table
    /// copied by parallel COPY under the slot's snapshot, then native logical replication
    /// streams on from that slot), or on AWS
    /// `blue-green` (RDS/Aurora's own Blue/Green deployment, green encrypted under --key;
    /// AWS replicates, there is no rollback after its switchover). `plan` recommends one;
    /// blue-green only when asked for
    #[arg(long, value_enum, default_value_t = StrategyArg::Snapshot)]
    pub strategy: StrategyArg,
    /// The target's PostgreSQL major version, e.g. 17 (full-load only; not older than the
    /// source's) [default: the source's]
    #[arg(long, value_name = "MAJOR")]
    pub engine_version: Option<u32>,
    /// Full load: tables copied at once, each by a pair of sessions (one on each side), and
    /// indexes, constraints and the rest of the post-data built at once (`pg_restore
    /// --jobs N`) [default: one per core of this machine]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: Option<u32>,
    /// Full load: a table larger than this (its size by the source's statistics, e.g.
    /// 256MiB) is copied in ranges of pages of about this size by several workers at once.
    /// Worth it when one table dominates and cores are to spare; a table copied whole is
    /// written without WAL on the loading target, ranges are not [default: 0, never]
    #[arg(long, value_name = "SIZE", value_parser = parse_storage)]
    pub split_tables_larger_than: Option<u64>,
    /// Accepted for scripts written for earlier versions: roles' passwords (their SCRAM
    /// verifiers, never plaintext) are copied whenever pgseal may read them
    #[arg(long, hide = true)]
    pub copy_role_passwords: bool,
    /// AWS region for rds:/aurora: sources [default: the standard chain, e.g. AWS_REGION]
    #[arg(long, help_heading = "AWS")]
    pub region: Option<String>,
    /// An AWS-compatible API endpoint [default: AWS_ENDPOINT_URL, or AWS itself]
    #[arg(long, help_heading = "AWS")]
    pub endpoint_url: Option<String>,
    /// Reach instance ID's SQL endpoint at HOST:PORT (a tunnel or bastion), e.g.
    /// prod=127.0.0.1:15432; repeatable; ID is the name given to this migration (pgseal
    /// follows the renames of cutover itself)
    #[arg(long, value_name = "ID=HOST:PORT", help_heading = "AWS")]
    pub connect_via: Vec<String>,
    /// The address the other instance uses to reach ID for replication, when not ID's
    /// endpoint address; repeatable
    #[arg(long, value_name = "ID=HOST:PORT", help_heading = "AWS")]
    pub peer_via: Vec<String>,
}

/// `pgseal migrate ...`
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Check everything a migration needs, change nothing (exit 3 while a blocker remains)
    Plan(MigrationArgs),
    /// Run a migration until the encrypted target replicates (journaled, resumable)
    Start {
        /// What to migrate.
        #[command(flatten)]
        args: MigrationArgs,
        /// Publish only these tables (schema.table, comma-separated) of the one
        /// --database given [default: all]; cutover refuses to leave the others stale
        /// unless accepted with --leave-stale DATABASE/SCHEMA.TABLE
        #[arg(long, value_delimiter = ',')]
        tables: Option<Vec<String>>,
        /// TCP port for the target instance [default: a free one]
        #[arg(long)]
        target_port: Option<u16>,
        /// WAL the slot may hold on the source before `status` aborts the migration (e.g. 20GiB)
        #[arg(long, value_parser = parse_storage)]
        max_slot_retention: Option<u64>,
        /// Leave no follower running once the target replicates (run `pgseal migrate
        /// follow NAME` yourself, e.g. under systemd)
        #[arg(long)]
        no_follow: bool,
    },
    /// Continue a migration after a failure, crash or kill
    Resume {
        /// The migration's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Leave no follower running once the target replicates
        #[arg(long)]
        no_follow: bool,
    },
    /// Keep a replicating migration moving: refresh the subscriptions for tables made on
    /// the source, carry large objects, roles and database settings, record samples
    #[command(long_about = FOLLOW_ABOUT)]
    Follow {
        /// The migration's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Seconds between passes
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// One pass, then exit
        #[arg(long)]
        once: bool,
        /// Also serve the migration's metrics in Prometheus' text format at
        /// http://HOST:PORT/metrics while it follows (port 0: a free one, printed on stderr)
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "once")]
        serve: Option<String>,
        /// Run in the background, detached from this terminal (its output in
        /// PGSEAL_HOME/migrations/NAME.follow.log), and write its process id to
        /// PGSEAL_HOME/migrations/NAME.follow.pid; without it the follower runs in the
        /// foreground, as a systemd service wants it
        #[arg(long, conflicts_with = "once")]
        detach: bool,
    },
    /// Remove everything a migration created (target, snapshot, slot, publication)
    Abort(Named),
    /// Phase, steps, lag, slot retention, apply errors and schema drift
    Status {
        /// The migration's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Redraw every INTERVAL seconds until interrupted
        #[arg(long)]
        watch: bool,
        /// Seconds between redraws with --watch
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Abort the migration when the slot holds more WAL than this on the source
        /// (warning at 80%) [default: the limit given at start]
        #[arg(long, value_parser = parse_storage)]
        max_slot_retention: Option<u64>,
        /// Serve the migration's metrics in Prometheus' text format at
        /// http://HOST:PORT/metrics until interrupted, read from the journal at each scrape
        /// (port 0: a free one, printed on stderr)
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "watch")]
        serve: Option<String>,
    },
    /// List migrations
    List,
    /// Write the migration's report: one HTML page of its steps, plots, validation, cutover and encryption
    #[command(long_about = REPORT_ABOUT)]
    Report {
        /// The migration's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Where to write the page [default: PGSEAL_HOME/migrations/NAME/report.html]
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Compare source and target table by table, while replication runs
    #[command(long_about = VALIDATE_ABOUT)]
    Validate {
        /// The migration's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Only these tables (schema.table, comma-separated) [default: every published table]
        #[arg(long, value_delimiter = ',')]
        tables: Option<Vec<String>>,
        /// How long to wait for a table the subscription is still copying before reporting
        /// it as `copying`
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        wait_for_copies: u64,
    },
    /// Compare both sides' catalogs and what no row comparison sees, object by object
    #[command(long_about = VERIFY_ABOUT)]
    Verify(Named),
    /// DDL captured on the source during the migration, and what became of it on the target
    #[command(long_about = DDL_ABOUT)]
    Ddl {
        /// The migration's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Leave captured statement ID out: the target never runs it
        #[arg(long, value_name = "ID", conflicts_with = "apply")]
        skip: Option<i64>,
        /// Statement ID was applied on the target by hand: the apply goes on past it
        #[arg(long, value_name = "ID")]
        apply: Option<i64>,
        /// The database the statement ran in [default: the migration's only database]
        #[arg(long)]
        database: Option<String>,
    },
    /// After cutover: switch back to the source by reverse replication, losing nothing
    #[command(long_about = ROLLBACK_ABOUT)]
    Rollback {
        /// The migration's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// The endpoint to switch back [default: the one endpoint in front of the target]
        #[arg(value_parser = parse_name, long, conflicts_with = "on_switch")]
        endpoint: Option<String>,
        /// Without an endpoint: run this shell command at the switch (PGSEAL_NEW_URL is the source's)
        #[arg(long)]
        on_switch: Option<String>,
        /// Seconds fence, drain and sequences may take before pgseal gives up
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// After cutover: drop subscription, slot, publication and snapshot; retire the source
    Cleanup {
        /// The migration's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Also stop the old source instance
        #[arg(long, conflicts_with = "delete_source")]
        retire_source: bool,
        /// Also delete the old source instance and its storage
        #[arg(long)]
        delete_source: bool,
    },
    /// Move applications to the target: fence, drain, sequences, switch (back on failure)
    #[command(long_about = CUTOVER_ABOUT)]
    Cutover {
        /// The migration's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// The endpoint to switch [default: the one endpoint in front of the source, if any]
        #[arg(value_parser = parse_name, long, conflicts_with = "on_switch")]
        endpoint: Option<String>,
        /// Without an endpoint: run this shell command at the switch, with PGSEAL_NEW_URL,
        /// PGSEAL_MIGRATION and PGSEAL_TARGET in its environment
        #[arg(long)]
        on_switch: Option<String>,
        /// The largest replication lag at which cutover may start (e.g. 16MiB)
        #[arg(long, default_value = "16MiB", value_parser = parse_storage)]
        max_lag: u64,
        /// Seconds the write pause may last: the work inside it gives up in time for the
        /// fence to be lifted and the endpoint resumed by then
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// Only check the preconditions
        #[arg(long)]
        dry_run: bool,
        /// Accept that this database (NAME) or table (DATABASE/SCHEMA.TABLE), which the
        /// migration does not replicate, is stale on the target after the switch;
        /// repeatable; journaled with the cutover
        #[arg(long, value_name = "NAME")]
        leave_stale: Vec<String>,
        /// Cut over although login role ROLE has no password on the target and pgseal
        /// cannot carry the source's (it cannot read pg_authid there): you set it on the
        /// target yourself, or the role logs in otherwise; repeatable. Also: do not carry
        /// ROLE's password where pgseal could
        #[arg(long, value_name = "ROLE")]
        without_password: Vec<String>,
    },
}

const REPORT_ABOUT: &str = "\
Write one self-contained HTML page about a migration, from its journal alone (no server is
contacted): the step timeline (every run of every step, so failures and resumes show), plots
of replication lag, of the WAL each slot held against --max-slot-retention, of the catch-up
once replication began and of the cutover's write pause part by part beside the longest
wait a client saw; the last validation table by table (keys only, never row values); the
target's key and how its encryption was verified; and what cleanup removed.

The page has inline CSS and SVG and fetches nothing, so it opens offline and prints on A4.
The path written is printed; --json prints the same facts as one JSON document instead.

The plots come from samples the journal keeps while start, status (and status --watch),
validate and cutover run: one a second in a migration's first minute, then at most one per
sixtieth of its age, at most 30 s apart (about 3,000 per database for a day).

Examples:
  pgseal migrate report orders
  pgseal migrate report orders --output /tmp/orders-report.html
  pgseal migrate report orders --json | jq .cutover
";

const FOLLOW_ABOUT: &str = "\
Keep a replicating migration moving between commands. Logical replication leaves work
no single command does: a table made on the source gets its rows only once the target's
subscription is refreshed; large objects (lo_create, JDBC Blobs) and roles, memberships
and database settings are not replicated at all. A follower does all of it every few
seconds (--interval), records replication samples for the report, and writes what each
pass did to PGSEAL_HOME/migrations/NAME.follow.json, which `pgseal migrate status` shows.

`pgseal migrate start` and `resume` leave one running in the background (its log:
PGSEAL_HOME/migrations/NAME.follow.log) unless given --no-follow; run it yourself, in the
foreground, under a service manager instead if you prefer. One follower runs per
migration; a second one exits at once. It stands aside while another command works on the
migration, and ends by itself once the migration is cut over, rolled back, cleaned up or
aborted.

Examples:
  pgseal migrate follow orders-enc              # in the foreground, until cut over
  pgseal migrate follow orders-enc --once --json";

const DDL_ABOUT: &str = "\
DDL captured on the source during the migration, and what became of it on the target.

While a migration replicates, an event trigger in every migrated database of the source
writes each DDL statement into pgseal_ddl.statements, a table that replicates with the
data; on the target, a trigger replays each statement as it arrives, inside the apply
worker's transaction: in order with the rows around it, exactly once, as the role that ran
it on the source, with its search_path. Any role may run DDL on the source (the
application's own migrations included); the capture needs no privilege of it. A table made
on the source is then subscribed by the follower (`pgseal migrate follow`), which copies
its rows. Replayed too: GRANT and REVOKE (a role made on the source since is made on the
target first), REFRESH MATERIALIZED VIEW [CONCURRENTLY], CREATE INDEX CONCURRENTLY and
partition maintenance (CONCURRENTLY dropped where the apply's transaction refuses it),
ALTER ... TYPE ... USING, CREATE TABLE AS (as an empty table; its rows are copied). Not
carried: temporary objects, REINDEX, CLUSTER, VACUUM (each side's storage is its own).

Under the full-load strategy DDL is refused on the source until every table is copied
and its indexes built (it would race PostgreSQL's table copy); carried from then on.
Blue-green carries none: its cutover refuses while blue's schema differs from green's.

What cannot be replayed as it ran stops the target's apply with an error naming it: a
query string mixing DDL with other statements, DDL run inside a function or a DO block, a
statement naming a tablespace, a column added to a table with rows with a default that is
not immutable (now(), random()), an identity or a serial, a DROP of temporary objects with
others, a query string setting a password (never kept in clear). Then either apply the
statement on the target yourself, so that the target's rows match the source's, and say
so with --apply ID; or leave it out with --skip ID. The apply goes on within seconds; the
decision is journaled.

States: applied, applied_by_hand, skipped, stopped, waiting (not arrived yet).

Examples:
  pgseal migrate ddl m1
  pgseal migrate ddl m1 --database shop --apply 4
  pgseal migrate ddl m1 --skip 7 --json";

const VERIFY_ABOUT: &str = "\
Compare the source and the target as a DBA would after a switch, object by object, for every
database of the migration:

  columns (type, default, nullability, identity, generation, collation), constraints,
  indexes, triggers, rules, row-level security policies and flags, functions, procedures
  and aggregates, types, enums, domains, views and materialized views (their definitions
  and their rows), comments, privileges and default privileges, extensions, sequences
  (their definitions; where they stand: the target's may be ahead, never behind once cut
  over), large objects, and for the instance roles, memberships and database settings.

Definitions are PostgreSQL's own (pg_get_indexdef, pg_get_functiondef, ...), read with
search_path pinned to pg_catalog, so a name reads the same on both sides whatever a
database's own search_path is. Each difference is named with both sides' definitions.
Where the sides run different major versions and print the same thing differently, both
are normalised and the output says how.

While the target replicates, the source is read first and the target once it has applied
everything the source had committed by then; a difference is read again before it counts.
Sequences trail on the target until the cutover sets them: listed, not counted. Large
objects and roles the follower has not carried yet are carried first and listed as such.
`migrate validate` runs this too; `migrate cutover` runs it before the pause and, where DDL
ran since, inside it with the source fenced, and refuses on any difference.

Exit code 11 when something differs.

Example:
  pgseal migrate verify shop --json | jq '.databases[].differences'
";

const VALIDATE_ABOUT: &str = "\
Compare every published table of the source with the target while the target replicates.
Tables are cut into primary-key chunks of about half a second of work; both servers compute
count(*) and the XOR of a 64-bit hash of every row (numeric, float, json and other types
hashed as text, under identical session settings) in parallel. A chunk that differs is
compared again once the target has applied past the source's position; one that still
differs is listed row by row: keys missing on the target, extra on the target, different.
A chunk whose source keeps changing is reported as unstable (table state suspended).
Tables without a primary key are compared as multisets of row hashes.

A table the subscription is still copying (made on the source during the migration) is
waited for up to 60 s, then reported as `copying`: not comparable yet, never mismatched. An
apply stopped on a captured statement ends validation at once, naming the statement and the
choices (`pgseal migrate ddl`).

A whole pass also runs `pgseal migrate verify` (the catalog, materialized views, sequences,
large objects, roles and settings) and is clean only when that is.

The result is journaled; cutover refuses to start while the last validation found
mismatches. Exit code 11 when the result is not clean.

Example:
  pgseal migrate validate orders-enc
  pgseal migrate validate orders-enc --tables public.orders,public.items --json";

const ROLLBACK_ABOUT: &str = "\
Switch applications back from the encrypted target to the source after a cutover. At
cutover pgseal set up replication from the target back to the source, starting exactly at
the switch; rollback pauses the endpoint, fences the target, lets the source apply
everything written on the target since cutover, sets every sequence on the source from the
target, points the endpoint back and resumes. Nothing written on the target is lost.
Available until `migrate cleanup`.

Example:
  pgseal migrate rollback orders-enc";

const CUTOVER_ABOUT: &str = "\
Move applications from the source to the encrypted target with a pause, not an outage:

  0 after a validation, the tables DDL changed on the source since are compared again
    (DDL rewrites rows the final check would not see); a dry run lists them
  1 checks, per database: replicating, lag under --max-lag, no apply errors, worker
    running, no schema drift; nothing the switch moves left stale (databases outside the
    migration when the switch moves the whole instance, tables outside the publication,
    unlogged tables) unless accepted with --leave-stale
  2 pause the endpoint (new transactions wait; running ones finish)
  3 fence every write path to every migrated database: no new session of any role
    (ALLOW_CONNECTIONS false), every other session and background worker ended;
    proven for a window
  4 drain: a barrier committed with synchronous_commit=local, then wait until every slot
    confirms applied+flushed the position after it
  5 set every sequence of every database on the target from the source's
    last_value/is_called
  6 disable the subscriptions, point the endpoint at the target (databases outside the
    migration stay on the source), resume, first write

If anything fails or --timeout passes before the switch, the fence is lifted, the endpoint
resumed on the source and the migration replicates again; the error says why (a timeout
names the step it waited for). The endpoint is resumed by the timeout even when the source
does not answer; its fence then comes down as soon as it does. The write
pause (pause to first write accepted on the target) is journaled.

Examples:
  pgseal migrate cutover orders-enc --dry-run
  pgseal migrate cutover orders-enc --endpoint orders-ep
  pgseal migrate cutover orders-enc --on-switch './repoint-app.sh'
  pgseal migrate cutover orders-enc --on-switch './repoint-app.sh' --leave-stale scratch";

const WORKLOAD_ABOUT: &str = "\
The ledger workload writes transactions (inserts, updates of earlier rows, deletes from a
table without a primary key) and appends each transaction's id to a ledger file only
after its COMMIT is acknowledged; a COMMIT that got no answer is recorded as uncertain.
Lost connections are counted as client errors and retried, so a run can go on through a
cutover. `verify` then checks a database against the ledger: acknowledged, missing,
duplicated, unexpected.

Give the database as --url (put its password in PGPASSWORD, not in the URL) or as
--instance NAME for a local instance.

Example:
  pgseal workload run --instance orders --rate 200 --duration 60 --ledger run.ledger
  pgseal workload verify --instance orders-enc --ledger run.ledger";

/// Where the workload's database is.
#[derive(Debug, Args)]
pub struct WorkloadTarget {
    /// A PostgreSQL URL (postgres://user@host:port/db); the password comes from PGPASSWORD
    #[arg(
        long,
        conflicts_with_all = ["instance", "endpoint"],
        required_unless_present_any = ["instance", "endpoint"]
    )]
    pub url: Option<String>,
    /// A local instance, reached through its unix socket
    #[arg(long, conflicts_with = "endpoint")]
    pub instance: Option<String>,
    /// An endpoint (PgBouncer), reached through its unix socket
    #[arg(long, value_parser = parse_name)]
    pub endpoint: Option<String>,
    /// The ledger file
    #[arg(long)]
    pub ledger: PathBuf,
}

/// `pgseal workload ...`
#[derive(Debug, Subcommand)]
pub enum WorkloadCommand {
    /// Write transactions and record the acknowledged ones in the ledger
    Run {
        /// Where to write.
        #[command(flatten)]
        target: WorkloadTarget,
        /// Transactions per second over all clients
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds to run (SIGINT or SIGTERM ends the run earlier: each client finishes
        /// its transaction, the ledger is synced and the summary printed)
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Concurrent connections
        #[arg(long, default_value_t = 4)]
        clients: usize,
    },
    /// Check a database against a ledger (exit 11 when anything is missing, duplicated or
    /// unexpected)
    Verify {
        /// What to check.
        #[command(flatten)]
        target: WorkloadTarget,
    },
}

/// `pgseal snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot of an instance (or of --source-url), sealed with --key
    Create {
        /// The instance to snapshot (or give --source-url)
        #[arg(required_unless_present = "source_url", conflicts_with = "source_url")]
        instance: Option<String>,
        /// Snapshot any PostgreSQL by URL; the password is passed to pg_basebackup through
        /// its environment, never its command line
        #[arg(long, value_name = "URL")]
        source_url: Option<String>,
        /// The snapshot's name
        #[arg(long, value_parser = parse_name)]
        name: String,
        /// Seal the snapshot while it streams under this KMS key (id or alias)
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// Seal under the managed default key (same as --key pgseal/default)
        #[arg(long, conflicts_with = "key")]
        encrypt: bool,
    },
    /// Copy a snapshot, encrypting it (--key) or moving it to another key
    Copy {
        /// The snapshot to copy
        source: String,
        /// The copy's name
        #[arg(long, value_parser = parse_name)]
        name: String,
        /// Seal the copy under this KMS key [default for an encrypted source: its key]
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// Seal under the managed default key (same as --key pgseal/default)
        #[arg(long, conflicts_with = "key")]
        encrypt: bool,
    },
    /// Restore a snapshot into a new instance (encrypted exactly when the snapshot is)
    Restore {
        /// The snapshot
        snapshot: String,
        /// The new instance's name
        #[arg(long)]
        instance: String,
        /// TCP port on 127.0.0.1 [default: the first free from 5433, or from PGSEAL_FIRST_PORT]
        #[arg(long)]
        port: Option<u16>,
        /// Allocated storage [default: 10GiB, or more if the snapshot needs it]
        #[arg(long, value_parser = parse_storage)]
        storage: Option<u64>,
    },
    /// List snapshots
    List,
    /// Show one snapshot
    Describe(Named),
    /// Delete a snapshot
    Delete(Named),
}

const FLEET_ABOUT: &str = "\
Migrate many sources from one inventory file (TOML; see docs/fleet.md): one normal
migration per [[source]], named in the file, run a few at a time and cut over in waves.

  plan      preflight of every source: version, size, databases, the recommended strategy,
            blockers, warnings and the estimated start (exit 3 while a blocker remains)
  start     start every source's migration, at most --parallel at once; run it again after
            a failure or a kill and it resumes what stopped and skips what replicates
  status    one row per migration from the journal: phase, lag, slot retention, last
            validation, pauses (--watch redraws)
  validate  validate every migration that replicates
  cutover   cut over one wave's migrations whose last validation is clean; the others are
            refused by name; stops at the first failure unless --keep-going
  rollback  roll back one wave's cut-over migrations
  cleanup   clean up one wave's cut-over migrations
  report    one HTML page: every migration's summary, linked to its own report, and the
            fleet's plots

Each migration stays a normal one: `pgseal migrate ... NAME` works on it alone. At most
--parallel commands run at once across every `pgseal fleet` process of this home, and a
source already held by a migration outside the file is refused before anything starts.
A URL source's password comes from the environment variable its `password_env` names.";

/// The inventory file and how many migrations run at once.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The inventory (TOML)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Migration commands at most at once, across every fleet process of this home
    /// [default: the cores of this machine]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: Option<u32>,
}

const FLEET_RUN_ABOUT: &str = "\
Drive every migration of the inventory as far as the file allows, and stop when each is
there: start (or resume) it, validate it once it replicates, and cut it over only when its
wave says `cutover = \"auto\"` (inside its `window`, when it has one). Waves go in order.

Run it on any number of hosts with one shared journal (--journal postgres://..., or
PGSEAL_JOURNAL): each runner takes up to --parallel migrations at a time, each under a lease
(see `pgseal journal --help`); a runner that dies is taken over by another once its lease
expires, through `migrate resume`. The journal records which runner ran each step.
Which runners can take over which migrations: AWS sources and targets from any host; local
instances and URL sources only from hosts that share this PGSEAL_HOME (the instances live
where the home is).

Exit 0 when every migration is where the file lets it go, 1 when one failed --attempts
times on this runner.

Example:
  PGSEAL_JOURNAL=postgres://pgseal@db.internal/pgseal pgseal fleet run fleet.toml --parallel 2";

/// `fleet run`: the inventory, this runner's share of the work, and how it waits.
#[derive(Debug, Args)]
pub struct FleetRunArgs {
    /// The inventory; --parallel is this runner's own
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Seconds between looks at the journal while other runners hold the rest, or a wave
    /// waits for its window
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub poll: f64,
    /// Run what can run now, then stop, without waiting for other runners or windows
    #[arg(long)]
    pub once: bool,
    /// Times one migration's command may fail on this runner before it leaves it to a person
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub attempts: u32,
}

/// The inventory file, the wave and how many at once.
#[derive(Debug, Args)]
pub struct FleetWaveArgs {
    /// The inventory and how many at once.
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// The wave (the sources whose `wave` is W)
    #[arg(long, value_name = "W")]
    pub wave: u32,
    /// Carry on with the wave's other migrations after one fails [default: stop at the
    /// first failure; those already running finish]
    #[arg(long)]
    pub keep_going: bool,
}

const JOURNAL_ABOUT: &str = "\
The journal records every migration: its spec, phase, each step run (with its outputs, its
error and the runner that ran it), the resources it made, samples and facts for the report.

By default it is an SQLite file in PGSEAL_HOME, for one machine. With --journal URL (or
PGSEAL_JOURNAL) it is a PostgreSQL database: DBAs on several hosts see and drive the same
migrations, and a migration is driven by one runner at a time, which holds a lease on it
(renewed every --lease-seconds/6; a runner that dies is taken over after --lease-seconds).
The database needs no superuser: its owner is enough; pgseal makes schema pgseal_journal.

Examples:
  PGSEAL_JOURNAL=postgres://pgseal@db.internal/pgseal pgseal journal copy
  pgseal journal leases --journal postgres://pgseal@db.internal/pgseal";

/// `pgseal journal ...`
#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Copy every migration of an SQLite journal into a PostgreSQL one (nothing written when
    /// the receiver holds a migration of the same name, or one is in use)
    Copy {
        /// The journal to copy [default: $PGSEAL_HOME/journal.sqlite]
        #[arg(long, value_name = "FILE")]
        from: Option<std::path::PathBuf>,
        /// The journal to copy into (a postgres:// URL) [default: --journal]
        #[arg(long, value_name = "URL")]
        to: Option<String>,
    },
    /// The leases held on migrations: which runner drives which migration, until when
    Leases,
}

/// `pgseal fleet ...`
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Preflight of every source, several at a time, in one table (exit 3 while a blocker remains)
    Plan(FleetArgs),
    /// Drive every migration as far as the file allows, beside other runners on other hosts
    #[command(long_about = FLEET_RUN_ABOUT)]
    Run(FleetRunArgs),
    /// Start (or resume) every source's migration until it replicates, at most --parallel at once
    Start(FleetArgs),
    /// One row per migration: phase, lag, slot retention, last validation, pause
    Status {
        /// The inventory.
        #[command(flatten)]
        fleet: FleetArgs,
        /// Redraw every INTERVAL seconds until interrupted
        #[arg(long)]
        watch: bool,
        /// Seconds between redraws with --watch
        #[arg(long, default_value_t = 5.0)]
        interval: f64,
        /// Serve every migration's metrics in Prometheus' text format at
        /// http://HOST:PORT/metrics until interrupted (port 0: a free one, printed on stderr)
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "watch")]
        serve: Option<String>,
    },
    /// Validate every migration that replicates (exit 11 when rows differ)
    Validate(FleetArgs),
    /// Cut over the wave's migrations whose last validation is clean; refuse the others by name
    Cutover(FleetWaveArgs),
    /// Roll back the wave's cut-over migrations
    Rollback(FleetWaveArgs),
    /// Clean up the wave's cut-over migrations
    Cleanup {
        /// The inventory, the wave and how many at once.
        #[command(flatten)]
        wave: FleetWaveArgs,
        /// Also stop each old source instance
        #[arg(long)]
        retire_source: bool,
    },
    /// Write one HTML page of the fleet: each migration's summary linked to its own report
    Report {
        /// The inventory.
        #[command(flatten)]
        fleet: FleetArgs,
        /// Where to write the page [default: PGSEAL_HOME/fleet/NAME-OF-FILE.html]
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// The one argument of a command that acts on a thing by its name (an instance, a
/// snapshot, an endpoint).
#[derive(Debug, Args)]
pub struct Named {
    /// Its name
    #[arg(value_parser = parse_name)]
    pub name: String,
}

/// `pgseal instance ...`
#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Create and start an instance
    Create {
        /// Instance name: lowercase letters, digits and '-', starting with a letter
        #[arg(value_parser = parse_name)]
        name: String,
        /// Keep the data on a kernel-encrypted volume
        #[arg(long)]
        encrypted: bool,
        /// KMS key for the volume (id or alias); implies --encrypted
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// TCP port on 127.0.0.1 [default: the first free from 5433, or from PGSEAL_FIRST_PORT]
        #[arg(long)]
        port: Option<u16>,
        /// Allocated storage, e.g. 10GiB or 512MiB (the encrypted volume's size)
        #[arg(long, default_value = "10GiB", value_parser = parse_storage)]
        storage: u64,
        /// Server parameter NAME=VALUE (repeatable)
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// PostgreSQL major version, e.g. 17 [default: the default installation's];
        /// `pgseal doctor` lists the installed ones
        #[arg(long, value_name = "MAJOR")]
        engine_version: Option<u32>,
        /// File whose first line is the master user's password (else PGSEAL_MASTER_PASSWORD;
        /// without either, only unix-socket logins work)
        #[arg(long, value_name = "FILE")]
        master_password_file: Option<PathBuf>,
    },
    /// List instances with their status
    List,
    /// Show one instance: status, port, encryption, key, storage, parameters, paths
    Describe(Named),
    /// Start an instance (an encrypted one is reopened through the KMS)
    Start(Named),
    /// Stop an instance (an encrypted one's key leaves the kernel; only ciphertext remains)
    Stop(Named),
    /// Restart an instance's server
    Reboot(Named),
    /// Delete an instance and all its data
    Delete {
        /// Instance name
        #[arg(value_parser = parse_name)]
        name: String,
        /// Confirm: all of the instance's data is deleted for good
        #[arg(long)]
        yes: bool,
    },
    /// Grow an instance's allocated storage (online where the kernel allows, else with a
    /// brief restart; `pgseal doctor` says which)
    Resize {
        /// Instance name
        #[arg(value_parser = parse_name)]
        name: String,
        /// The new allocated storage, e.g. 20GiB (never smaller than now)
        #[arg(long, value_parser = parse_storage)]
        storage: u64,
    },
    /// Set server parameters; says which need a restart, and restarts only with --apply
    SetParam {
        /// Instance name
        #[arg(value_parser = parse_name)]
        name: String,
        /// NAME=VALUE pairs
        #[arg(required = true, value_name = "NAME=VALUE", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Restart now if a parameter needs it (wal_level, max_replication_slots, ...)
        #[arg(long)]
        apply: bool,
    },
    /// Print a connection URL
    Url {
        /// Instance name
        #[arg(value_parser = parse_name)]
        name: String,
        /// The unix-socket URL (trust; root and postgres only) instead of TCP
        #[arg(long)]
        socket: bool,
    },
}

/// A name of a migration, instance, endpoint or snapshot, checked where it enters: it
/// becomes a path under the home, a server's and a slot's name, so it is 1-63 lowercase
/// letters, digits and '-', starting with a letter (the rule RDS has for identifiers).
fn parse_name(text: &str) -> Result<String, String> {
    pgseal_local::instance::check_name(text)
        .map(|()| text.to_string())
        .map_err(|_| {
            format!(
                "'{}' is not a valid name: use 1-63 lowercase letters, digits and '-', starting with a letter",
                text.escape_default()
            )
        })
}

fn parse_storage(text: &str) -> Result<u64, String> {
    pgseal_local::instance::parse_size(text)
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("'{text}' is not NAME=VALUE")),
    }
}

/// `pgseal key ...`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a KMS key
    Create {
        /// An alias to name it by (letters, digits, '/', '_', '-', '.')
        #[arg(long)]
        alias: Option<String>,
        /// Free text: what the key is for
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List every KMS key
    List,
    /// Show one key: id, aliases, state, versions
    Describe {
        /// Key id or alias
        key: String,
    },
    /// Add new key material: new data keys use it, everything wrapped before still opens
    Rotate {
        /// Key id or alias
        key: String,
    },
    /// Disable a key: every operation with it is refused until it is enabled
    Disable {
        /// Key id or alias
        key: String,
    },
    /// Enable a disabled key
    Enable {
        /// Key id or alias
        key: String,
    },
    /// Schedule a key's deletion; it refuses use meanwhile and is deleted for good after
    /// the waiting period (data under it can then never be decrypted)
    ScheduleDeletion {
        /// Key id or alias
        key: String,
        /// Waiting period in days (7 to 30)
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Cancel a scheduled deletion; the key is left disabled (enable it to use it)
    CancelDeletion {
        /// Key id or alias
        key: String,
    },
}

/// `pgseal seal ...`
#[derive(Debug, Args)]
pub struct SealArgs {
    /// KMS key id or alias to seal under
    #[arg(long, default_value = "pgseal/default")]
    pub key: String,
    /// Encryption context item KEY=VALUE (repeatable); bound into the stream, shown in the
    /// audit log, never secret
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
    /// Plaintext bytes per chunk (4096 to 16777216)
    #[arg(long, default_value_t = pgseal_crypto::stream::DEFAULT_CHUNK_SIZE, hide = true)]
    pub chunk_size: u32,
    /// Replace OUT if it exists
    #[arg(long)]
    pub force: bool,
    /// The data to seal (- for stdin)
    #[arg(value_name = "IN")]
    pub input: PathBuf,
    /// Where to write the sealed stream (- for stdout)
    #[arg(value_name = "OUT")]
    pub output: PathBuf,
}

/// `pgseal unseal ...`
#[derive(Debug, Args)]
pub struct UnsealArgs {
    /// Replace OUT if it exists
    #[arg(long)]
    pub force: bool,
    /// The sealed stream (- for stdin)
    #[arg(value_name = "IN")]
    pub input: PathBuf,
    /// Where to write the plaintext (- for stdout)
    #[arg(value_name = "OUT")]
    pub output: PathBuf,
}
