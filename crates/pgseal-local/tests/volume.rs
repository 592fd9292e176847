//! A real encrypted volume: ext4 image, loop mount, fscrypt key in and out of the kernel.

use pgseal_crypto::DataKey;
use pgseal_local::volume::{Volume, is_mount_point};

/// Unmounts on drop so a failing test leaves no mount or loop device behind.
struct Mounted(Volume);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.0.unmount();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

fn repeated(marker: &[u8]) -> Vec<u8> {
    marker
        .iter()
        .copied()
        .cycle()
        .take(marker.len() * 4096)
        .collect()
}

#[test]
fn encrypted_files_are_ciphertext_in_the_image_and_unreadable_once_locked() {
    let dir = tempfile::tempdir().unwrap();
    let vol = Volume::new(dir.path().join("volume.img"), dir.path().join("mnt"));
    vol.create(64 << 20).unwrap();
    vol.mount().unwrap();
    let guard = Mounted(vol.clone());
    assert!(is_mount_point(&vol.mount_point));

    let key = DataKey::random(64);
    let id = vol.unlock(&key).unwrap();
    let secret_dir = vol.mount_point.join("data");
    vol.make_encrypted_dir(&secret_dir, id).unwrap();
    assert_eq!(
        pgseal_local::fscrypt::policy_key_id(&secret_dir).unwrap(),
        id
    );
    // One marker only inside the encrypted directory, one only in a control file outside it.
    let secret_marker = b"PGSEAL-SECRET-MARKER-7f3a9c";
    let control_marker = b"PGSEAL-CONTROL-MARKER-2b8e1d";
    std::fs::write(secret_dir.join("table-file"), repeated(secret_marker)).unwrap();
    std::fs::write(
        vol.mount_point.join("control-file"),
        repeated(control_marker),
    )
    .unwrap();
    nix::unistd::sync();
    assert_eq!(
        std::fs::read(secret_dir.join("table-file")).unwrap(),
        repeated(secret_marker)
    );

    // Locked: the plaintext is gone from the kernel; names and contents are ciphertext.
    let removal = vol.lock(id).unwrap();
    assert!(!removal.files_busy);
    let names: Vec<String> = std::fs::read_dir(&secret_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1);
    assert_ne!(
        names[0], "table-file",
        "file names are encrypted while locked"
    );
    assert!(
        std::fs::read(secret_dir.join(&names[0])).is_err(),
        "contents unreadable while locked"
    );

    drop(guard);
    assert!(!is_mount_point(&vol.mount_point), "unmounted");
    let image = std::fs::read(&vol.image).unwrap();
    assert!(
        contains(&image, control_marker),
        "the search must find plaintext that is there"
    );
    assert!(
        !contains(&image, secret_marker),
        "encrypted contents must not reach the image in the clear"
    );
    assert!(
        !contains(&image, b"table-file"),
        "encrypted names must not reach the image in the clear"
    );

    // Unlocking again with the same key gives the same file back.
    vol.mount().unwrap();
    let _guard = Mounted(vol.clone());
    let id_again = vol.unlock(&key).unwrap();
    assert_eq!(id_again, id, "the identifier derives from the key");
    assert_eq!(
        std::fs::read(secret_dir.join("table-file")).unwrap(),
        repeated(secret_marker)
    );
    vol.lock(id).unwrap();
}

#[test]
fn a_wrong_key_length_is_refused_before_the_kernel_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = pgseal_local::fscrypt::add_key(dir.path(), &DataKey::random(32)).unwrap_err();
    assert!(err.to_string().contains("64 bytes"), "{err}");
}
