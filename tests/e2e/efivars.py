#!/usr/bin/env python3
"""Read and write UEFI variables in an OVMF VARS file offline (between two boots).

Runs with the python of the virt-firmware venv (tests/e2e/vm.sh installs it):

  efivars.py VARS list                      names of all variables
  efivars.py VARS get NAME                  print a value (strings, BootNext/BootOrder,
                                            else hex); exit 3 when the variable is unset
  efivars.py VARS set-string NAME VALUE     set a systemd-boot string (UTF-16LE + NUL)
  efivars.py VARS set-boot-next HEX         set BootNext (e.g. 0001)
  efivars.py VARS delete NAME               delete a variable (no error if unset)
  efivars.py VARS import DIR                set every variable of an efivarfs-format
                                            directory (files NAME-GUID: 4-byte LE
                                            attributes + value), e.g. what an installer
                                            run on the host with --efivars DIR wrote

Names are looked up by name alone; systemd-boot variables (Loader*) get the LoaderInfo
vendor GUID, the rest the global EFI GUID.
"""

import os
import struct
import sys

from virt.firmware.efi import efivar, guids, ucs16
from virt.firmware.varstore import edk2

LOADER_GUID = guids.LoaderInfo
# Non-volatile, boot-service and runtime access: what systemd-boot and bootctl use.
ATTR_NV_BS_RT = 0x7
EXIT_UNSET = 3


def find(varlist, name):
    for key, var in varlist.items():
        if str(var.name) == name:
            return key, var
    return None, None


def render(name, data):
    if name == "BootNext" and len(data) == 2:
        return "%04X" % struct.unpack("<H", data)[0]
    if name == "BootOrder" and len(data) % 2 == 0:
        return ",".join("%04X" % v for (v,) in struct.iter_unpack("<H", data))
    if name.startswith("Loader") and len(data) % 2 == 0:
        try:
            return data.decode("utf-16-le").rstrip("\0")
        except UnicodeDecodeError:
            pass
    return data.hex()


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    path, verb, args = argv[1], argv[2], argv[3:]
    store = edk2.Edk2VarStore(path)
    varlist = store.get_varlist()

    if verb == "list":
        for var in varlist.values():
            print(f"{var.name} {var.guid}")
        return 0
    if verb == "get" and len(args) == 1:
        _, var = find(varlist, args[0])
        if var is None:
            print(f"{args[0]}: not set", file=sys.stderr)
            return EXIT_UNSET
        print(render(args[0], var.data))
        return 0
    if verb == "set-string" and len(args) == 2:
        name, value = args
        key, _ = find(varlist, name)
        if key is not None:
            del varlist[key]
        guid = LOADER_GUID if name.startswith("Loader") else guids.EfiGlobalVariable
        varlist[name] = efivar.EfiVar(ucs16.from_string(name), guid=guid, attr=ATTR_NV_BS_RT,
                                      data=(value + "\0").encode("utf-16-le"))
    elif verb == "set-boot-next" and len(args) == 1:
        varlist.set_boot_next(int(args[0], 16))
    elif verb == "import" and len(args) == 1:
        for entry in sorted(os.listdir(args[0])):
            # NAME-8-4-4-4-12: the GUID is the last 36 characters.
            name, guid = entry[:-37], entry[-36:]
            if len(entry) < 38 or entry[-37] != "-":
                print(f"{entry}: not an efivarfs file name", file=sys.stderr)
                return 2
            with open(os.path.join(args[0], entry), "rb") as f:
                raw = f.read()
            attr = struct.unpack("<I", raw[:4])[0]
            key, _ = find(varlist, name)
            if key is not None:
                del varlist[key]
            varlist[name] = efivar.EfiVar(ucs16.from_string(name), guid=guid, attr=attr,
                                          data=raw[4:])
            print(f"{name} {guid} {len(raw) - 4} bytes")
    elif verb == "delete" and len(args) == 1:
        key, _ = find(varlist, args[0])
        if key is not None:
            del varlist[key]
    else:
        print(__doc__, file=sys.stderr)
        return 2
    store.write_varstore(path, varlist)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
