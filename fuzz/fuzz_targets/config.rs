//! The config loader: any text either parses and validates or is refused with a
//! `ConfigError`; it never panics. A config that validates must also build a
//! runtime or fail with a `BuildError`.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn tokio() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = weir::config::parse(text, Path::new("fuzz.toml")) {
        let _guard = tokio().enter();
        if let Ok(metrics) = weir::metrics::Metrics::new() {
            let _ = weir::runtime::Runtime::build(&config, None, &metrics);
        }
    }
});
