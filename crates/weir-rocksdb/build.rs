//! A static RocksDB (what scripts/rocksdb.sh builds; `ROCKSDB_STATIC`, set in .cargo/config.toml)
//! leaves the compression libraries it was compiled with to the final link.
fn main() {
    println!("cargo:rerun-if-env-changed=ROCKSDB_STATIC");
    if std::env::var_os("ROCKSDB_STATIC").is_some() {
        for lib in ["snappy", "z", "bz2", "lz4", "zstd"] {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }
}
