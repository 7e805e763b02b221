"""Opening a disk image for `--disk`: checked, and mapped into memory lazily instead of read whole.

The image is mapped copy-on-write (`mmap.ACCESS_COPY`): the host reads only the sectors the guest asks for,
so a 3 GB image costs nothing until it is read, and the guest's writes land in private pages, never in the
file. Anything that is not a regular file (a device such as /dev/zero, a pipe, a directory) is refused, since
it has no size to map and could be read for ever.
"""

from __future__ import annotations

import mmap
import os
import stat
from pathlib import Path

from .errors import HarnessError

SECTOR = 512
MAX_DISK_BYTES = (1 << 28) * SECTOR  # LBA28, the addressing the ATA model speaks: 128 GiB


def open_image(path: Path) -> mmap.mmap:
    """A private, copy-on-write mapping of the image at `path`, or one clear HarnessError."""
    where = f"disk image {path}"
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer before any check could run.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise HarnessError(f"{where}: not a regular file (a device, pipe or directory cannot be booted)")
            if info.st_size < SECTOR:
                raise HarnessError(f"{where}: {info.st_size} bytes, smaller than one 512-byte boot sector")
            if info.st_size > MAX_DISK_BYTES:
                raise HarnessError(f"{where}: {info.st_size} bytes, larger than the {MAX_DISK_BYTES >> 30} GiB "
                                   "an LBA28 disk can address")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except FileNotFoundError:
        raise HarnessError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise HarnessError(f"{where}: not a regular file (a device, pipe or directory cannot be booted)") from None
    except (OSError, ValueError) as e:
        raise HarnessError(f"{where}: cannot read ({getattr(e, 'strerror', None) or e})") from None
