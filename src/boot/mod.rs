//! Boot control: EFI variables, systemd-boot, UEFI entries, ESP (being written).
