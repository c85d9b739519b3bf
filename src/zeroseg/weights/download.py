"""Download a released file: resumable (HTTP ``Range``), verified (size, sha256), atomic.

The partial file is ``<dest>.part``; a re-run continues it where a server honours ``Range`` (``206``) and starts
over where it does not (``200``). The file gets its final name only after the size and sha256 checks pass.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from zeroseg.errors import ZeroSegError

_CHUNK = 1 << 16


def download(
    url: str,
    dest: str | Path,
    *,
    size: int | None = None,
    sha256: str | None = None,
    timeout: float = 30.0,
) -> tuple[Path, str]:
    """Fetch ``url`` into ``dest``, resuming ``dest.part``.

    Args:
        url: http(s) URL.
        dest: final file path.
        size: expected bytes, checked when known.
        sha256: expected hex digest, checked when known.
        timeout: socket timeout in seconds.

    Returns:
        ``(path, sha256)`` of the complete file (an existing complete ``dest`` is verified and returned).

    Raises:
        ZeroSegError: offline / unreachable host, an HTTP error, or a size or sha256 mismatch (the ``.part`` of
            a mismatching file is removed so that the next try starts clean).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        digest = _sha256(dest)
        _verify(dest, dest.stat().st_size, digest, size, sha256, remove=False)
        return dest, digest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = have > 0 and response.status == 206
            with open(part, "ab" if resumed else "wb") as f:
                while block := response.read(_CHUNK):
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the range starts at the end: the part is already complete
            pass
        else:
            raise ZeroSegError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ZeroSegError(
            f"{url}: cannot download ({reason}); offline? copy the file here by hand, then run `zeroseg weights "
            f"import`; partial data kept in {part}"
            if part.is_file()
            else f"{url}: cannot download ({reason})"
        ) from None
    digest = _sha256(part)
    _verify(part, part.stat().st_size, digest, size, sha256, remove=True)
    os.replace(part, dest)
    return dest, digest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, got_size: int, digest: str, size: int | None, sha256: str | None, *, remove: bool) -> None:
    problem = None
    if size is not None and got_size != size:
        problem = f"{got_size} bytes, expected {size}"
    elif sha256 is not None and digest != sha256.lower():
        problem = f"sha256 {digest}, expected {sha256}"
    if problem:
        if remove:
            path.unlink(missing_ok=True)
        raise ZeroSegError(f"{path}: download does not verify ({problem})")
