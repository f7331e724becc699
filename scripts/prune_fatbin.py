#!/usr/bin/env python3
"""Drop the GPU code a shared library carries for architectures other than one.

Usage: prune_fatbin.py LIB OUT --keep 90

onnxruntime-gpu's CUDA provider (284 MB) carries compiled kernels (cubins) for sm_75,
sm_80, sm_86, sm_89, sm_90a and sm_120a in its `.nv_fatbin` section. A GPU uses the
entry of its own architecture only (an H200 is sm_90). Each fat-binary container is
rewritten in place with its kept entries only, and its size field shortened: every
container still starts where the library's registration code points, the entries it
keeps are byte for byte the originals (and stay readable by `cuobjdump`), and the freed
tail of each container is zeros, which compress to almost nothing when the library
travels. A container without a kept entry is left as it was.

The fat binary layout (reverse-engineered, see e.g. the `fatbinary` crate): a section
holds containers, each a 16-byte header (magic 0xBA55ED50, u16 version, u16 header
size, u64 size of what follows) then entries; an entry's header has its kind at byte 0
(u16: 1 PTX, 2 or 0x10 ELF), its header size at byte 4 (u32), its padded payload size at
byte 8 (u64) and its SM architecture at byte 28 (u32); the payload follows the header.

Prints what it kept and zeroed; fails without writing when the layout is not understood.
"""
import argparse
import struct
import sys

MAGIC = 0xBA55ED50
ELF_KINDS = (0x02, 0x10)


def fatbin_section(data):
    """(offset, size) of the .nv_fatbin section of an ELF64 little-endian file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        sys.exit("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def section(i):
        base = shoff + i * shentsize
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, base)
        return name, offset, size
    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        end = data.index(b"\0", str_off + name)
        if data[str_off + name:end] == b".nv_fatbin":
            return offset, size
    sys.exit("no .nv_fatbin section")


def entries(data, first, end):
    """(offset, kind, header size, padded payload size, arch) of each entry in [first, end)."""
    out = []
    entry = first
    while entry + 64 <= end:
        kind, = struct.unpack_from("<H", data, entry)
        hsize, = struct.unpack_from("<I", data, entry + 4)
        payload, = struct.unpack_from("<Q", data, entry + 8)
        arch, = struct.unpack_from("<I", data, entry + 28)
        if hsize < 64 or entry + hsize + payload > end:
            sys.exit(f"entry at {entry:#x} is not understood (header {hsize}, payload {payload})")
        out.append((entry, kind, hsize, payload, arch))
        entry += hsize + payload
    return out


def prune(data, keep):
    start, size = fatbin_section(data)
    end = start + size
    kept = dropped = freed = 0
    pos = start
    while pos + 16 <= end:
        magic, _version, header, rest = struct.unpack_from("<IHHQ", data, pos)
        if magic != MAGIC:
            pos += 8  # containers are 8-byte aligned; skip padding between them
            continue
        container_end = pos + header + rest
        if container_end > end:
            sys.exit(f"container at {pos:#x} runs past the section")
        found = entries(data, pos + header, container_end)
        keep_these = [e for e in found if e[1] not in ELF_KINDS or e[4] == keep]
        if any(e[1] in ELF_KINDS for e in keep_these):
            packed = b"".join(bytes(data[e[0]:e[0] + e[2] + e[3]]) for e in keep_these)
            body = pos + header
            data[body:body + len(packed)] = packed
            data[body + len(packed):container_end] = bytes(container_end - body - len(packed))
            struct.pack_into("<Q", data, pos + 8, len(packed))
            kept += sum(1 for e in keep_these if e[1] in ELF_KINDS)
            dropped += len(found) - len(keep_these)
            freed += container_end - body - len(packed)
        pos = container_end
    return kept, dropped, freed


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("lib")
    p.add_argument("out")
    p.add_argument("--keep", type=int, required=True, help="SM architecture to keep, e.g. 90")
    a = p.parse_args()
    data = bytearray(open(a.lib, "rb").read())
    kept, dropped, freed = prune(data, a.keep)
    if kept == 0:
        sys.exit(f"no sm_{a.keep} kernels in {a.lib}: nothing would be left to run")
    open(a.out, "wb").write(data)
    print(f"{a.lib}: kept {kept} sm_{a.keep} kernel images, dropped {dropped} others, "
          f"freed {freed / 2**20:.0f} MiB of {len(data) / 2**20:.0f} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
