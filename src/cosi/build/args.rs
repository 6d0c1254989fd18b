//! Command-line arguments of `trident cosi build` (a clap `Args` the CLI flattens in)
//! and the human rendering of its result.

use super::{parse_mount_arg, BuildOptions, BuildSummary, PartSelector, DEFAULT_LEVEL};
use std::path::PathBuf;

fn mount_value(s: &str) -> Result<(PartSelector, String), String> {
    parse_mount_arg(s).map_err(|e| format!("{e:#}"))
}

/// Build a COSI file from a raw GPT disk image.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// The raw GPT disk image (what image builders emit).
    pub disk_image: PathBuf,
    /// The COSI file to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Mount point of a partition, `PARTNUM_OR_LABEL=/path` (repeatable); without any,
    /// the image's own /etc/fstab is used.
    #[arg(long = "mount", value_name = "PART=/PATH", value_parser = mount_value)]
    pub mounts: Vec<(PartSelector, String)>,
    /// zstd compression level (1..=22, or -7..=-1 for the fast levels).
    #[arg(long, default_value_t = DEFAULT_LEVEL, allow_negative_numbers = true)]
    pub level: i32,
    /// zstd worker threads (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: u32,
    /// OS architecture (x86_64 or aarch64); default: from the ESP's loader, else x86_64.
    #[arg(long)]
    pub os_arch: Option<String>,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

impl BuildArgs {
    pub fn to_options(&self) -> BuildOptions {
        BuildOptions {
            disk_image: self.disk_image.clone(),
            output: self.output.clone(),
            mounts: self.mounts.clone(),
            compression_level: self.level,
            threads: self.threads,
            os_arch: self.os_arch.clone(),
            force: self.force,
        }
    }
}

impl BuildSummary {
    /// A few lines for a terminal.
    pub fn render_human(&self) -> String {
        let mut s = format!(
            "wrote {} ({} bytes)\n  id:              {}\n  metadata sha384: {}\n",
            self.output.display(),
            self.size,
            self.id,
            self.metadata_sha384
        );
        for r in &self.regions {
            let what = match (&r.mount_point, &r.fs_type) {
                (Some(m), Some(t)) => format!("{t} at {m}"),
                (None, Some(t)) => format!("{t}, not mounted"),
                _ if r.number.is_none() => "primary GPT".to_string(),
                _ => "no filesystem".to_string(),
            };
            let ratio = if r.compressed_size > 0 {
                r.uncompressed_size as f64 / r.compressed_size as f64
            } else {
                0.0
            };
            s.push_str(&format!(
                "  {:<32} {:>14} -> {:>12} ({ratio:.1}x)  {what}\n",
                r.path, r.uncompressed_size, r.compressed_size
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Top {
        #[command(flatten)]
        build: BuildArgs,
    }

    #[test]
    fn parses_flags() {
        let t = Top::try_parse_from([
            "x",
            "disk.img",
            "-o",
            "os.cosi",
            "--mount",
            "2=/",
            "--mount",
            "esp=/boot/efi",
            "--level",
            "-3",
            "--os-arch",
            "arm64",
            "--force",
        ])
        .unwrap();
        let o = t.build.to_options();
        assert_eq!(o.disk_image, PathBuf::from("disk.img"));
        assert_eq!(o.output, PathBuf::from("os.cosi"));
        assert_eq!(
            o.mounts,
            vec![
                (PartSelector::Number(2), "/".to_string()),
                (PartSelector::Label("esp".into()), "/boot/efi".to_string())
            ]
        );
        assert_eq!(o.compression_level, -3);
        assert_eq!(o.threads, 0);
        assert_eq!(o.os_arch.as_deref(), Some("arm64"));
        assert!(o.force);
        let d = Top::try_parse_from(["x", "d", "-o", "o"]).unwrap().build;
        assert_eq!(d.level, DEFAULT_LEVEL);
        let e = Top::try_parse_from(["x", "d", "-o", "o", "--mount", "2:/"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("PARTNUM_OR_LABEL=/path"), "{e}");
    }
}
