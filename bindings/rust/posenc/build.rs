// Lets this crate's tests and examples find libposenc.so where posenc-sys was told it lives ($POSENC_LIB_DIR).
use std::env;

fn main() {
    println!("cargo:rerun-if-env-changed=POSENC_LIB_DIR");
    let explicit = env::var("POSENC_LIB_DIR").ok().filter(|dir| !dir.is_empty());
    if let (Some(_), Ok(dir)) = (explicit, env::var("DEP_POSENC_LIB_DIR")) {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir);
    }
}
