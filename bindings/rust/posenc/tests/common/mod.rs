// Helpers shared by the integration tests (each test file is its own crate and includes this module).
use posenc::Status;

/// The call failed with `status` and a message holding every fragment.
pub fn assert_error<T>(result: posenc::Result<T>, status: Status, fragments: &[&str]) {
    let error = match result {
        Ok(_) => panic!("the call must fail with {:?}", status),
        Err(error) => error,
    };
    assert_eq!(error.status(), status, "{}", error);
    for f in fragments {
        assert!(error.message().contains(f), "message lacks {:?}: {}", f, error.message());
    }
}
