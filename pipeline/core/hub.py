"""Is the Hugging Face Hub reachable?  Decided once, quickly, before any download starts.

transformers and datasets retry for about 50 s before failing when the Hub cannot be reached; we
probe once (DNS, TCP connect and, for https, a TLS handshake, with a short timeout) and fail with
one line instead.
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
import threading
from urllib.parse import urlparse

from pipeline.core.errors import PipelineError

_TRUE = {"1", "true", "yes", "on"}


def offline_requested() -> bool:
    return any(os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.cache
def _probe(host: str, port: int, timeout: float, tls: bool = False) -> bool:
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                if tls:  # an endpoint that accepts TCP but fails TLS is not reachable
                    with ssl.create_default_context().wrap_socket(sock, server_hostname=host):
                        pass
                result.append(True)
        except OSError:  # ssl.SSLError and socket timeouts included
            result.append(False)

    # getaddrinfo ignores socket timeouts, so the whole probe runs in a thread we can abandon.
    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return bool(result and result[0])


def url_reachable(url: str, timeout: float = 3.0) -> bool:
    """DNS, TCP connect and (for https) a TLS handshake with ``url``'s host, within ``timeout``."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return _probe(parsed.hostname or "", port, timeout, parsed.scheme == "https")


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is requested or the Hub endpoint does not answer within ``timeout``."""
    if offline_requested():
        return False
    return url_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout)


def require_hub(what: str) -> None:
    """Raise a one-line PipelineError when ``what`` (e.g. "model 'llama2_7b' (meta-llama/...)") needs the Hub."""
    if hub_reachable():
        return
    why = "offline mode is on (HF_HUB_OFFLINE)" if offline_requested() else "is unreachable from here"
    raise PipelineError(
        f"{what} is not in the local Hugging Face cache and the Hub {why}; "
        "download it on a connected machine, or use the offline configs (model=smollm2_135m, data=wiki_summaries)"
    )
