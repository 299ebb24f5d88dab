// Finds libposenc.so: $POSENC_LIB_DIR, else `pkg-config --variable=libdir posenc`, else the linker's own search path.
use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=POSENC_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");

    let explicit = env::var("POSENC_LIB_DIR").ok().filter(|dir| !dir.is_empty());
    let dir = explicit.clone().or_else(pkg_config_libdir);
    if let Some(dir) = &dir {
        println!("cargo:rustc-link-search=native={}", dir);
        // Dependent crates read it as DEP_POSENC_LIB_DIR (the `posenc` crate's build script).
        println!("cargo:lib_dir={}", dir);
    }
    // A directory named explicitly is usually a build tree, not a system path: let this crate's
    // own tests find the library there at run time.
    if let Some(dir) = &explicit {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir);
    }
    println!("cargo:rustc-link-lib=dylib=posenc");
}

/// The libdir of the `posenc` pkg-config package, asked of the pkg-config program directly (no
/// build-time crate needed).
fn pkg_config_libdir() -> Option<String> {
    let program = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let output = Command::new(program).args(["--variable=libdir", "posenc"]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = String::from_utf8(output.stdout).ok()?.trim().to_string();
    if dir.is_empty() {
        None
    } else {
        Some(dir)
    }
}
