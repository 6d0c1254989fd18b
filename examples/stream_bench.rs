//! Benchmark driver for the streaming pipeline (used by `scripts/bench-stream.sh`).
//!
//! `stream_bench SOURCE OFFSET COMPRESSED_SIZE SHA384 UNCOMPRESSED_SIZE TARGET [--skip-zeros]`
//!
//! SOURCE is anything `open_source` accepts (path, file://, http(s)://, oci://).
//! Prints one line: `bytes=N seconds=S mb_per_s=R` (decompressed bytes, MB = 10^6).

use std::sync::atomic::AtomicBool;
use trident::cosi::open::open_source;
use trident::cosi::source::SourceOptions;
use trident::cosi::stream::{stream_image, StreamJob};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 6 {
        anyhow::bail!(
            "usage: stream_bench SOURCE OFFSET COMPRESSED_SIZE SHA384 UNCOMPRESSED_SIZE TARGET [--skip-zeros]"
        );
    }
    let source = open_source(&args[0], &SourceOptions::default())?;
    let job = StreamJob {
        name: "bench".into(),
        source: source.as_ref(),
        offset: args[1].parse()?,
        compressed_size: args[2].parse()?,
        sha384: args[3].clone(),
        uncompressed_size: args[4].parse()?,
        target: args[5].clone().into(),
        skip_zero_blocks: args.iter().any(|a| a == "--skip-zeros"),
        max_window_log: None,
    };
    let stats = stream_image(&job, &|_| {}, &AtomicBool::new(false))?;
    let secs = stats.elapsed.as_secs_f64();
    println!(
        "bytes={} seconds={secs:.3} mb_per_s={:.1} written={} skipped={}",
        stats.uncompressed_bytes,
        stats.uncompressed_bytes as f64 / secs / 1e6,
        stats.written_bytes,
        stats.skipped_zero_bytes
    );
    Ok(())
}
