//! Files the jail opens while it still may (taps, the guest memory file) and hands to the VM
//! that runs after privileges are gone. Device setup takes them by name instead of opening.
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

static TAPS: Mutex<Option<HashMap<String, File>>> = Mutex::new(None);
static FILES: Mutex<Option<HashMap<PathBuf, File>>> = Mutex::new(None);

fn put<K: std::hash::Hash + Eq>(map: &Mutex<Option<HashMap<K, File>>>, key: K, file: File) {
    let mut guard = map.lock().unwrap_or_else(|e| e.into_inner());
    guard.get_or_insert_with(HashMap::new).insert(key, file);
}

fn take<K: std::hash::Hash + Eq + ?Sized, Q>(
    map: &Mutex<Option<HashMap<Q, File>>>,
    key: &K,
) -> Option<File>
where
    Q: std::hash::Hash + Eq + std::borrow::Borrow<K>,
{
    let mut guard = map.lock().unwrap_or_else(|e| e.into_inner());
    guard.as_mut()?.remove(key)
}

/// Hands over the open tap `name`.
pub fn put_tap(name: &str, file: File) {
    put(&TAPS, name.to_owned(), file);
}

/// The tap `name` opened before the jail closed, if any.
pub fn take_tap(name: &str) -> Option<File> {
    take(&TAPS, name)
}

/// Hands over the file at `path` (as given on the command line).
pub fn put_file(path: &Path, file: File) {
    put(&FILES, path.to_owned(), file);
}

/// The file at `path` opened before the jail closed, if any.
pub fn take_file(path: &Path) -> Option<File> {
    take(&FILES, path)
}
