//! Shared by the local platform's integration tests: a home with a KMS, free ports, SQL
//! over an instance's socket, and a search for plaintext in files.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use pgseal_crypto::{LocalKms, Passphrase};
use pgseal_local::instance::{InstanceInfo, InstanceSpec, LocalInstances};

pub const TEST_STORAGE: u64 = 256 << 20;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub instances: LocalInstances,
    pub kms: LocalKms,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let instances = LocalInstances::open(&home).unwrap();
        let kms = LocalKms::open(
            &home.join("kms"),
            &Passphrase::new("instance test passphrase"),
        )
        .unwrap();
        Fixture {
            dir,
            instances,
            kms,
        }
    }

    pub fn home(&self) -> std::path::PathBuf {
        self.dir.path().join("home")
    }

    pub fn spec(&self, name: &str, key: Option<&str>) -> InstanceSpec {
        InstanceSpec {
            engine_version: None,
            name: name.to_string(),
            port: Some(free_port()),
            storage_bytes: TEST_STORAGE,
            encryption_key: key.map(str::to_string),
            params: BTreeMap::new(),
            master_password: None,
        }
    }
}

impl Drop for Fixture {
    /// Never leave a server, mount or loop device behind, whatever the test did.
    fn drop(&mut self) {
        if let Ok(list) = self.instances.list() {
            for i in list {
                let _ = self.instances.delete(&i.name);
            }
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn sql(info: &InstanceInfo, statements: &str) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&info.socket_dir)
            .port(info.port)
            .user("postgres")
            .dbname("postgres");
        let client = pgseal_pg::connect(&config).await.unwrap();
        let mut out = Vec::new();
        for message in client.simple_query(statements).await.unwrap() {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                out.push(row.get(0).unwrap_or("").to_string());
            }
        }
        out
    })
}

/// Every file below `dir` that contains `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && let Ok(bytes) = std::fs::read(&path)
                && memchr::memmem::find(&bytes, needle).is_some()
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}
