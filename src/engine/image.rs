//! The OS image: open the COSI, check it fits the layout, stream volumes.

use super::EngineContext;
use crate::config::{FileSystem, FileSystemSource, HostConfiguration};
use crate::cosi::metadata::{Bootloader, OsArch};
use crate::cosi::reader::{Cosi, CosiImage};
use crate::cosi::stream::{stream_image, StreamJob};
use crate::error::TridentError;
use crate::status::ImageRef;
use anyhow::{Context, Result};
use std::path::Path;

/// The architecture this agent installs.
pub const HOST_ARCH: OsArch = OsArch::X86_64;

/// Open the Host Configuration's image and check its architecture.
pub fn open(hc: &HostConfiguration, ctx: &EngineContext) -> Result<(Cosi, ImageRef)> {
    let img = hc.image.as_ref().ok_or_else(|| {
        anyhow::Error::new(
            TridentError::invalid_input("no-image", "the Host Configuration has no `image`")
                .at("image"),
        )
    })?;
    let expected = img.sha384.expected();
    let source = crate::cosi::open::open_source(&img.url, &ctx.source)
        .map_err(|e| {
            // An unreachable image is the environment's problem unless already typed.
            if crate::error::find_trident_error(&e).is_some() {
                e
            } else {
                anyhow::Error::new(TridentError::environment(
                    "image-unreachable",
                    format!("cannot open the OS image {}: {e:#}", img.url),
                ))
            }
        })
        .with_context(|| format!("opening the OS image {}", img.url))?;
    let cosi = Cosi::open(source, expected.as_deref())?;
    let arch = cosi.metadata().os_arch;
    if arch != HOST_ARCH {
        return Err(TridentError::unsupported(
            "image-wrong-architecture",
            format!(
                "the image {} is built for {} but this host is x86_64",
                img.url,
                serde_json::to_value(arch)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{arch:?}"))
            ),
        )
        .at("image.url")
        .into());
    }
    let r = ImageRef {
        url: img.url.clone(),
        sha384: cosi.metadata_sha384().to_string(),
    };
    Ok((cosi, r))
}

/// The bootloader backend name for the image (`systemd-boot` or `grub`; `systemd-boot`
/// when the metadata does not say).
pub fn bootloader_name(cosi: &Cosi) -> &'static str {
    match &cosi.metadata().bootloader {
        Some(Bootloader::Grub) => "grub",
        _ => "systemd-boot",
    }
}

/// The COSI image for a filesystem of the Host Configuration (matched by mount point).
pub fn image_for<'a>(cosi: &'a Cosi, fs: &FileSystem) -> Result<&'a CosiImage> {
    let mp = fs
        .mount_path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    cosi.images()
        .iter()
        .find(|i| i.mount_point == mp)
        .ok_or_else(|| {
            let have: Vec<&str> = cosi
                .images()
                .iter()
                .map(|i| i.mount_point.as_str())
                .collect();
            TridentError::invalid_input(
                "image-mount-point-missing",
                format!(
                    "the Host Configuration wants the image's filesystem for {mp} ({}), \
                     but the image has none for that mount point (it has: {})",
                    fs.describe(),
                    have.join(", ")
                ),
            )
            .at("storage.filesystems")
            .into()
        })
}

/// Image-sourced filesystems (the ESP included).
pub fn image_filesystems(hc: &HostConfiguration) -> impl Iterator<Item = &FileSystem> {
    hc.storage
        .filesystems
        .iter()
        .filter(|f| f.source == FileSystemSource::Image && f.device_id.is_some())
}

/// Refuse an image larger than the partition it goes to.
pub fn check_fits(img: &CosiImage, fs: &FileSystem, partition_id: &str, size: u64) -> Result<()> {
    if img.image.uncompressed_size > size {
        return Err(TridentError::environment(
            "image-too-large",
            format!(
                "the image's filesystem for {} is {} bytes but partition '{partition_id}' \
                 ({}) has only {size} bytes",
                img.mount_point,
                img.image.uncompressed_size,
                fs.describe()
            ),
        )
        .into());
    }
    Ok(())
}

/// Stream one image onto `target` (a partition or a file), verifying its SHA-384.
pub fn stream_to(
    cosi: &Cosi,
    img: &CosiImage,
    target: &Path,
    fresh_file: bool,
    ctx: &EngineContext,
) -> Result<()> {
    ctx.cancelled()?;
    let sha = img.image.sha384.clone().ok_or_else(|| {
        anyhow::Error::new(TridentError::invalid_input(
            "image-hash-missing",
            format!("image {} has no sha384 in metadata.json", img.image.path),
        ))
    })?;
    let job = StreamJob {
        name: img.image.path.clone(),
        source: cosi.source(),
        offset: img.image.data_offset,
        compressed_size: img.image.compressed_size,
        sha384: sha,
        uncompressed_size: img.image.uncompressed_size,
        target: target.to_path_buf(),
        skip_zero_blocks: fresh_file,
        max_window_log: Some(cosi.max_window_log()),
    };
    let progress = ctx.progress.clone();
    let label = format!("writing {} onto {}", img.mount_point, target.display());
    stream_image(
        &job,
        &move |p| progress(&label, p.done, p.total),
        &ctx.cancel,
    )
    .with_context(|| {
        format!(
            "writing the {} filesystem to {}",
            img.mount_point,
            target.display()
        )
    })?;
    Ok(())
}

/// Make a half-written volume unmountable (and so unbootable): zero its first MiB,
/// where every filesystem we write keeps its superblock. Best effort, logged.
pub fn mark_unusable(device: &Path) {
    use std::io::Write;
    let res = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .and_then(|mut f| {
            f.write_all(&vec![0u8; 1 << 20])?;
            f.sync_all()
        });
    match res {
        Ok(()) => {
            tracing::warn!(device = %device.display(), "half-written volume wiped (not bootable)")
        }
        Err(e) => {
            tracing::error!(device = %device.display(), "could not wipe the half-written volume: {e}")
        }
    }
}
