//! The message for a file the process cannot read (a TLS key, a
//! certificate, an htpasswd file, a secret): the one case an operator
//! cannot work out from `Permission denied (os error 13)` alone is *which
//! user* needs access, so the message says it.

use std::io;
use std::path::Path;

/// `cannot read <what> <path>: <error>`, or, when the error is a refused
/// permission, `permission denied reading <what> <path>, running as uid N`
/// and how to grant access.
pub fn unreadable(what: &str, path: &Path, error: &io::Error) -> String {
    let path = path.display();
    if error.kind() == io::ErrorKind::PermissionDenied {
        let user = running_as();
        return format!(
            "permission denied reading {what} {path}, running as {user}: make the file \
             readable by that user (chown/chmod it or its group, or under systemd pass it \
             with LoadCredential=), or run oci-cache as a user that can read it"
        );
    }
    format!("cannot read {what} {path}: {error}")
}

/// `uid N` of this process.
#[cfg(target_os = "linux")]
fn running_as() -> String {
    format!("uid {}", rustix::process::getuid().as_raw())
}

#[cfg(not(target_os = "linux"))]
fn running_as() -> String {
    "this process's user".to_owned()
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::Path;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_refused_permission_names_the_file_and_the_user() {
        let e = io::Error::from(io::ErrorKind::PermissionDenied);
        let message = super::unreadable("TLS key", Path::new("/etc/oci-cache/tls.key"), &e);
        let uid = rustix::process::getuid().as_raw();
        assert!(
            message.starts_with(&format!(
                "permission denied reading TLS key /etc/oci-cache/tls.key, running as uid {uid}: "
            )),
            "{message}"
        );
        assert!(message.contains("chown"), "{message}");
    }

    #[test]
    fn other_errors_say_what_could_not_be_read() {
        let e = io::Error::from(io::ErrorKind::NotFound);
        let message = super::unreadable("htpasswd file", Path::new("/x"), &e);
        assert!(
            message.starts_with("cannot read htpasswd file /x: "),
            "{message}"
        );
    }
}
